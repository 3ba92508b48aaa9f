"""Image files: PNG/JPEG/TIFF radiographs and MetaImage volumes, with their geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from medtailor.imageio import load_nifti
from medtailor.ingest import run_ingest
from medtailor.resample import run_resample

from .conftest import small


@pytest.fixture()
def params(repo_params):
    params = small(repo_params)
    params["ingest"]["assumed_radiograph_spacing_mm"] = 0.2
    return params


def write_images(raw):
    rng = np.random.default_rng(0)
    (raw / "patients" / "a").mkdir(parents=True)
    (raw / "patients" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(raw / "patients/a/1.png")
    sixteen = rng.integers(0, 4095, (40, 30)).astype(np.uint16)
    Image.fromarray(sixteen).save(raw / "patients/a/2.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
        raw / "patients/b/3.jpg"
    )
    Image.fromarray(sixteen).save(raw / "patients/b/4.tif")
    (raw / "annotations").mkdir()
    pd.DataFrame(
        {
            "source": [
                "patients/a/1.png",
                "patients/a/2.png",
                "patients/b/3.jpg",
                "patients/b/4.tif",
            ],
            "patient": ["anna", "anna", "ben", "ben"],
            "study": ["s1", "s1", "s2", "s3"],
        }
    ).to_csv(raw / "annotations" / "subjects.csv", index=False)
    return sixteen


def test_image_files_are_radiographs_with_one_patient_per_subject(tmp_path, params):
    raw = tmp_path / "raw"
    sixteen = write_images(raw)
    summary = run_ingest(raw, tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("source")
    assert summary["radiographs"] == 4 and summary["patients"] == 2
    assert (
        manifest.loc["patients/a/1.png", "patient_id"]
        == manifest.loc["patients/a/2.png", "patient_id"]
    )
    assert manifest["study_id"].nunique() == 3
    assert set(manifest["spacing_source"]) == {"assumed"}
    assert list(manifest.loc["patients/a/2.png", "spacing"]) == [0.2, 0.2]
    assert "converted to grayscale" in manifest.loc["patients/b/3.jpg", "photometric"]
    # 16-bit values survive exactly, indexed (column, row).
    image, _ = load_nifti(tmp_path / "out" / manifest.loc["patients/a/2.png", "image_path"])
    np.testing.assert_array_equal(image, sixteen.T)


def test_image_files_without_a_spacing_are_rejected_with_the_setting_to_use(tmp_path, params):
    raw = tmp_path / "raw"
    write_images(raw)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw / "patients/a/5.png")
    params["ingest"]["assumed_radiograph_spacing_mm"] = None
    with pytest.raises(Exception, match="no usable image"):
        run_ingest(raw, tmp_path / "out", params)
    audit = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert len(audit) == 5
    assert audit["reason"].str.contains("ingest.assumed_radiograph_spacing_mm").all()


def test_a_metaimage_volume_keeps_its_geometry_through_resample(tmp_path, params):
    raw = tmp_path / "raw"
    raw.mkdir()
    values = (
        np.random.default_rng(1).integers(-1000, 1000, (12, 20, 16)).astype(np.int16)
    )  # z, y, x
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    sitk.WriteImage(image, str(raw / "ct.mhd"))  # header + ct.raw
    sitk.WriteImage(image, str(raw / "ct2.mha"))
    sitk.WriteImage(image, str(raw / "ct3.nrrd"))
    summary = run_ingest(raw, tmp_path / "ingest", params)
    assert summary["volumes"] == 3 and summary["files_seen"] == 3  # ct.raw read via ct.mhd
    manifest = pd.read_parquet(tmp_path / "ingest" / "manifest.parquet").set_index("source")
    for source in ("ct.mhd", "ct2.mha", "ct3.nrrd"):
        array, affine = load_nifti(tmp_path / "ingest" / manifest.loc[source, "image_path"])
        np.testing.assert_array_equal(array, values.transpose(2, 1, 0))
        # Corner voxels land where SimpleITK puts them (LPS there, RAS here).
        for index in [(0, 0, 0), (15, 19, 11), (15, 0, 0), (0, 19, 11)]:
            lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
            ras = affine @ np.array([*index, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    resampled = run_resample(tmp_path / "ingest", tmp_path / "resample", params)
    assert resampled["volumes"] == 3


def test_a_4d_nifti_is_a_multichannel_volume_resampled_channel_by_channel(tmp_path, params):
    import nibabel as nib

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(2)
    channels = rng.normal(size=(2, 20, 18, 8)).astype(np.float32)  # e.g. FLAIR and T1
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.moveaxis(channels, 0, -1), affine), raw / "mr.nii.gz")
    nib.save(nib.Nifti1Image(channels[1], affine), raw / "second.nii.gz")  # channel 2 alone
    run_ingest(raw, tmp_path / "ingest", params)
    manifest = pd.read_parquet(tmp_path / "ingest" / "manifest.parquet").set_index("source")
    assert (
        manifest.loc["mr.nii.gz", "channels"] == 2
        and manifest.loc["second.nii.gz", "channels"] == 1
    )
    assert list(manifest.loc["mr.nii.gz", "shape"]) == [20, 18, 8]
    assert manifest.loc["mr.nii.gz", "kind"] == "volume"
    run_resample(tmp_path / "ingest", tmp_path / "resample", params)
    resampled = pd.read_parquet(tmp_path / "resample" / "manifest.parquet").set_index("source")
    both, _ = load_nifti(tmp_path / "resample" / resampled.loc["mr.nii.gz", "image_path"])
    alone, _ = load_nifti(tmp_path / "resample" / resampled.loc["second.nii.gz", "image_path"])
    assert both.shape == (*resampled.loc["mr.nii.gz", "shape"], 2)
    np.testing.assert_allclose(both[..., 1], alone, atol=1e-5)
