"""Ingest on well-formed input: geometry, intensities, labels, boxes, pseudonyms."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from medtailor.ingest import run_ingest
from medtailor.tables import manifest_affine

from .conftest import small
from .helpers import affine_for, ct_volume, write_radiograph, write_series


def test_synthetic_dataset_ingests_completely(ingested, synth_dir):
    out, summary = ingested
    audit = pd.read_csv(out / "audit.csv")
    assert audit.empty, audit.to_string()
    manifest = pd.read_parquet(out / "manifest.parquet")
    n_radiographs = len(list(synth_dir.joinpath("dicom").rglob("image*.dcm"))) + len(
        list(synth_dir.joinpath("dicom").rglob("IMG*"))
    )
    assert summary["radiographs"] == n_radiographs == (manifest["kind"] == "radiograph").sum()
    n_patients = len({path.parts[-3] for path in synth_dir.joinpath("dicom").rglob("image*.dcm")})
    assert summary["volumes"] == n_patients and summary["label_maps"] == n_patients
    assert summary["files_rejected"] == 0
    assert summary["files_accepted"] == summary["files_seen"]
    with open(synth_dir / "annotations" / "boxes.csv") as handle:
        assert summary["boxes"] == sum(1 for _ in csv.DictReader(handle))


def test_labels_lie_on_their_anatomy_for_dicom_and_nifti_volumes(ingested):
    out, _ = ingested
    manifest = pd.read_parquet(out / "manifest.parquet")
    volumes = manifest[manifest["kind"] == "volume"]
    assert set(volumes["source_format"]) == {"dicom", "nifti"}
    for _, row in volumes.iterrows():
        image = nib.load(out / row["image_path"])
        labels = np.asarray(nib.load(out / row["label_path"]).dataobj)
        np.testing.assert_allclose(image.affine, manifest_affine(row))
        hu = image.get_fdata()
        # Synthetic lesions are 110 HU, bone 700 HU, soft tissue 40 HU, noise sd 12.
        assert abs(hu[labels == 2].mean() - 700) < 10, row["source"]
        if (labels == 1).any():
            assert abs(hu[labels == 1].mean() - 110) < 10, row["source"]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("compression", ["j2k", "rle"])
def test_dicom_series_round_trips_array_and_affine(tmp_path, params, orientation, compression):
    hu = ct_volume()
    affine = affine_for(orientation)
    write_series(tmp_path / "raw" / "series", hu, affine, compression=compression)
    run_ingest(tmp_path / "raw", tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 1
    row = manifest.iloc[0]
    image = nib.load(tmp_path / "out" / row["image_path"])
    np.testing.assert_array_equal(np.asarray(image.dataobj), hu)
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    assert row["spacing"].tolist() == pytest.approx([0.7, 0.8, 2.5])
    assert row["n_files"] == hu.shape[2]


def test_monochrome1_and_rescale_give_the_same_image(tmp_path, params):
    raw = tmp_path / "raw"
    stored, _, _ = write_radiograph(raw / "mono2.dcm", monochrome1=False, slope=1.0, intercept=0.0)
    write_radiograph(raw / "mono1", monochrome1=True, slope=1.0, intercept=0.0)
    write_radiograph(
        raw / "scaled.dcm", monochrome1=True, slope=0.5, intercept=-1024.0, sop_uid="1.2.9"
    )
    run_ingest(raw, tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("source")
    arrays = {
        s: nib.load(tmp_path / "out" / manifest.loc[s, "image_path"]).get_fdata()
        for s in manifest.index
    }
    np.testing.assert_array_equal(arrays["mono2.dcm"], stored)
    np.testing.assert_array_equal(arrays["mono1"], stored)
    np.testing.assert_allclose(arrays["scaled.dcm"], stored * 0.5 - 1024.0)
    assert manifest.loc["mono1", "spacing"].tolist() == pytest.approx([0.2, 0.2])


def test_patients_link_across_dicom_and_nifti_and_ids_follow_the_salt(
    tmp_path, synth_dir, ingested, params, monkeypatch
):
    out, _ = ingested
    manifest = pd.read_parquet(out / "manifest.parquet")
    manifest["case"] = manifest["source"].str.extract(r"(case\d{3})")[0]
    nifti = manifest[manifest["source_format"] == "nifti"]
    assert len(nifti)
    for _, row in nifti.iterrows():
        radiographs = manifest[
            (manifest["case"] == row["case"]) & (manifest["kind"] == "radiograph")
        ]
        assert set(radiographs["patient_id"]) == {row["patient_id"]}
    assert manifest.groupby("case")["patient_id"].nunique().eq(1).all()
    assert manifest["patient_id"].nunique() == manifest["case"].nunique()

    monkeypatch.setenv(params["ingest"]["pseudonym_salt_env"], "another-secret-salt")
    run_ingest(synth_dir, tmp_path / "resalted", small(params))
    other = pd.read_parquet(tmp_path / "resalted" / "manifest.parquet")
    assert set(other["patient_id"]).isdisjoint(set(manifest["patient_id"]))
    assert set(other["image_id"]).isdisjoint(set(manifest["image_id"]))


def test_boxes_keep_their_pixel_coordinates(ingested, synth_dir):
    out, _ = ingested
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("image_id")
    boxes = pd.read_parquet(out / "boxes.parquet")
    raw = pd.read_csv(synth_dir / "annotations" / "boxes.csv")
    boxes["source"] = manifest.loc[boxes["image_id"], "source"].to_numpy()
    merged = boxes.merge(raw, on=["source", "x0", "y0", "x1", "y1"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert boxes.loc[boxes["z0"].notna()].shape[0] == raw["z0"].notna().sum()


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_transfer_syntaxes_decode_to_the_same_pixels(name):
    from pydicom.data import get_testdata_file

    from medtailor.ingest.dicom import decode_pixels

    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    compressed = pydicom.dcmread(get_testdata_file(name))
    np.testing.assert_array_equal(decode_pixels(compressed), decode_pixels(reference))


def test_jpeg_decodes_and_a_corrupt_jpeg_is_rejected_with_its_syntax():
    from pydicom.data import get_testdata_file

    from medtailor.ingest.audit import Rejected
    from medtailor.ingest.dicom import decode_pixels

    extended = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    assert decode_pixels(extended).shape == (1024, 256)
    # pydicom ships this file as a known non-conformant JPEG.
    with pytest.raises(Rejected, match=r"cannot decode pixel data \(JPEG Extended"):
        decode_pixels(pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm")))
