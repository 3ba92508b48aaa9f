"""Objects scanner exports hold besides classic image series: gzip-compressed files,
DICOM SEG, multi-frame objects under the one slice-count rule, UIH mosaics, one object
stored twice, files at the input root, and label maps in the formats images come in."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medtailor.imageio import load_nifti
from medtailor.ingest import run_ingest

from .conftest import SHARED, small
from .helpers import affine_for, ct_volume, write_series

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture()
def params(repo_params):
    return small(repo_params)


def multiframe(path: Path, frames: int, sop_uid: str, syntax=ExplicitVRLittleEndian, **extra):
    """An enhanced CT object of ``frames`` 16 x 12 frames 2 mm apart (or another SOP class
    through ``extra``), pixel value 100 * frame + column."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = extra.get("SOPClassUID", ENHANCED_CT)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.Modality, ds.PatientID = "CT", "PHIID-OBJECTS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = "1.2.5", "1.2.5.1", 7
    ds.Rows, ds.Columns, ds.NumberOfFrames = 16, 12, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.8, 0.7]
    shared.PixelMeasuresSequence[0].SliceThickness = 2.0
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        frame = Dataset()
        frame.PlanePositionSequence = [Dataset()]
        frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    pixels = np.add.outer(100 * np.arange(frames), np.arange(12))[:, None, :]
    ds.PixelData = np.broadcast_to(pixels, (frames, 16, 12)).astype(np.uint16).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def audit_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "audit.csv")


def test_a_gzip_compressed_series_ingests_as_its_uncompressed_files_do(tmp_path, params):
    volume = ct_volume(seed=5)
    plain = write_series(tmp_path / "plain", volume, affine_for("axial"), series_uid="1.2.6")
    packed = tmp_path / "packed"
    packed.mkdir()
    for path in plain:
        (packed / f"{path.name}.dcm.gz").write_bytes(gzip.compress(path.read_bytes()))
    (packed / "broken.dcm.gz").write_bytes(gzip.compress(plain[0].read_bytes())[:40])
    summary = run_ingest(packed, tmp_path / "out", params)
    assert summary["files_seen"] == len(plain) + 1 and summary["files_accepted"] == len(plain)
    (row,) = pd.read_parquet(tmp_path / "out" / "manifest.parquet").itertuples()
    array, _ = load_nifti(tmp_path / "out" / row.image_path)
    np.testing.assert_array_equal(array, volume)
    assert row.n_files == len(plain)
    reasons = audit_of(tmp_path / "out").set_index("source")["reason"]
    assert reasons["broken.dcm.gz"].startswith("gzip-compressed file that does not decompress")


def test_a_dicom_seg_object_is_not_ingested_as_an_image(tmp_path, params):
    write_series(tmp_path / "raw" / "ct", ct_volume(seed=6), affine_for("axial"))
    multiframe(
        tmp_path / "raw" / "seg.dcm",
        3,
        "1.2.5.9",
        SOPClassUID=SEGMENTATION,
        Modality="SEG",
    )
    run_ingest(tmp_path / "raw", tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert set(manifest["modality"]) == {"CT"} and len(manifest) == 1
    reasons = audit_of(tmp_path / "out").set_index("source")["reason"]
    assert reasons["seg.dcm"].startswith("DICOM SEG object")


def test_one_slice_count_rule_for_classic_and_multiframe_objects(tmp_path, params):
    """min_slices is 3: a 2-frame enhanced object is refused like a 2-slice series."""
    multiframe(tmp_path / "raw" / "two.dcm", 2, "1.2.5.2")
    multiframe(tmp_path / "raw" / "four" / "four.dcm", 4, "1.2.5.4", SeriesInstanceUID="1.2.5.40")
    run_ingest(tmp_path / "raw", tmp_path / "out", params)
    (row,) = pd.read_parquet(tmp_path / "out" / "manifest.parquet").itertuples()
    assert row.shape.tolist() == [12, 16, 4] and row.n_files == 1
    reasons = audit_of(tmp_path / "out").set_index("source")["reason"]
    assert "a volume needs at least 3" in reasons["two.dcm"]


def test_one_object_in_two_transfer_syntaxes_is_one_volume(tmp_path, params):
    multiframe(tmp_path / "raw" / "explicit.dcm", 4, "1.2.5.5")
    multiframe(tmp_path / "raw" / "implicit.dcm", 4, "1.2.5.5", syntax=ImplicitVRLittleEndian)
    summary = run_ingest(tmp_path / "raw", tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 1 and summary["files_accepted"] == 1
    reasons = audit_of(tmp_path / "out").set_index("source")["reason"]
    assert reasons["implicit.dcm"] == "duplicate of explicit.dcm (same SOPInstanceUID); dropped"
    # A single file at the input root is traced by its name, not by ".".
    assert manifest["source"].iloc[0] == "explicit.dcm"


def test_files_accepted_counts_each_file_once_for_a_series_split_into_volumes(tmp_path, params):
    from .test_ingest_multivolume import write_two_volume_series

    write_two_volume_series(tmp_path / "raw")
    summary = run_ingest(tmp_path / "raw", tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 2 and summary["files_accepted"] == summary["files_seen"] == 16
    assert manifest["n_files"].tolist() == [8, 8]


def test_a_uih_mosaic_is_refused_with_what_it_is(tmp_path, params):
    write_series(tmp_path / "raw" / "ct", ct_volume(seed=7), affine_for("axial"))
    path = write_series(tmp_path / "raw" / "uih", ct_volume(seed=8), affine_for("axial"))[0]
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
    ds.save_as(path)
    run_ingest(tmp_path / "raw", tmp_path / "out", params)
    reasons = audit_of(tmp_path / "out").set_index("source")["reason"]
    assert reasons[f"uih/{path.name}"].startswith("UIH mosaic")


LIDC = SHARED / "realdata" / "lidc_nodules" / "nodule_patches"


@pytest.mark.skipif(not LIDC.is_dir(), reason="../shared/realdata/lidc_nodules absent")
def test_the_lung_nodule_cubes_ingest_with_their_mha_masks_as_label_maps(tmp_path, params):
    """LUNA16/LIDC-style data: MetaImage cubes with MetaImage masks (labels.csv names
    them) ingest as images with label maps on the same voxels."""
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    raw.mkdir()
    cubes = sorted(LIDC.glob("*_dcm_*.mha"))[:3]
    rows = []
    for cube in cubes:
        mask = cube.with_name(cube.name.replace("_dcm_", "_seg_"))
        (raw / cube.name).symlink_to(cube)
        (raw / mask.name).symlink_to(mask)
        rows.append({"source": cube.name, "label": mask.name})
    (raw / "annotations").mkdir()
    pd.DataFrame(rows).to_csv(raw / "annotations" / "labels.csv", index=False)
    run_ingest(raw, tmp_path / "out", params)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == len(cubes) and (manifest["label_path"] != "").all()
    for row in manifest.itertuples():
        cube = raw / row.source
        mask = sitk.GetArrayFromImage(
            sitk.ReadImage(str(cube).replace("_dcm_", "_seg_"))
        ).transpose(2, 1, 0)
        label, _ = load_nifti(tmp_path / "out" / row.label_path)
        np.testing.assert_array_equal(label, mask)
        assert label.any()


def test_a_label_map_that_is_not_integer_is_refused_whatever_its_format(tmp_path, params):
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    write_series(raw / "ct", ct_volume(seed=9), affine_for("axial"), series_uid="1.2.7")
    image = sitk.GetImageFromArray(np.full((8, 36, 40), 0.5, np.float32))
    sitk.WriteImage(image, str(raw / "mask.mha"))
    (raw / "annotations").mkdir()
    pd.DataFrame([{"source": "ct", "label": "mask.mha"}]).to_csv(
        raw / "annotations" / "labels.csv", index=False
    )
    run_ingest(raw, tmp_path / "out", params)
    assert (pd.read_parquet(tmp_path / "out" / "manifest.parquet")["label_path"] == "").all()
    reasons = audit_of(tmp_path / "out")["reason"]
    assert reasons.str.contains("label map of 'ct' rejected: label map is not integer-valued").any()


@pytest.mark.parametrize(
    ("bits_stored", "signed", "native"),
    [(12, False, True), (16, True, True), (16, False, True), (12, True, False)],
)
def test_pixels_read_from_the_file_equal_pydicoms_decoding(tmp_path, bits_stored, signed, native):
    """The fast path for uncompressed images gives what pydicom's pixel_array and the
    modality LUT give, unused high bits (an old overlay) included; a signed value with a
    sign bit below the allocation is left to pydicom."""
    from medtailor.ingest.dicom import decode_pixels, read_dataset, read_dicom_header, read_native

    path = write_series(tmp_path / "s", ct_volume(seed=3), affine_for("axial"))[0]
    ds = pydicom.dcmread(path)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**16, ds.Rows * ds.Columns).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    ds.PixelData = (values.view(np.int16) if signed else values).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.save_as(path)
    record, _ = read_dicom_header(path, path.name, read_dataset(path))
    assert (record.native_pixels is not None) == native
    if native:
        np.testing.assert_array_equal(read_native(record), decode_pixels(pydicom.dcmread(path)))


def write_class_folders(raw: Path, per_class: int = 25) -> None:
    """A classification set as many ship: one folder per class, a classes table, no
    patient identities (as the public breast-ultrasound set)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    rows = []
    for name in ("benign", "malignant", "normal"):
        (raw / name).mkdir(parents=True)
        for k in range(per_class):
            source = f"{name}/{name} ({k}).png"
            Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(raw / source)
            rows.append({"source": source, "label": name})
    (raw / "annotations").mkdir()
    pd.DataFrame(rows).to_csv(raw / "annotations" / "classes.csv", index=False)


def test_class_folders_are_not_taken_for_patients(tmp_path, params):
    """Without subjects.csv each class folder would be one patient: refused with the fix;
    with ingest.patient_from: file every image is its own patient."""
    from medtailor.ingest import IngestError

    raw = tmp_path / "raw"
    write_class_folders(raw)
    params["ingest"]["assumed_radiograph_spacing_mm"] = 0.1
    with pytest.raises(IngestError, match="look like class folders") as refused:
        run_ingest(raw, tmp_path / "out", params)
    assert "annotations/subjects.csv" in str(refused.value)
    assert "ingest.patient_from: file" in str(refused.value)
    params["ingest"]["patient_from"] = "file"
    summary = run_ingest(raw, tmp_path / "out", params)
    assert summary["images"] == summary["patients"] == 75
    # Real patient folders (a few images each, classes mixed within a patient) still are.
    params["ingest"]["patient_from"] = "folder"
    mixed = tmp_path / "mixed"
    write_class_folders(mixed, per_class=4)
    table = pd.read_csv(mixed / "annotations" / "classes.csv")
    table["label"] = ["benign", "normal"] * (len(table) // 2)
    table.to_csv(mixed / "annotations" / "classes.csv", index=False)
    assert run_ingest(mixed, tmp_path / "mixed_out", params)["patients"] == 3


def test_files_in_the_annotations_folder_are_not_audited_as_images(tmp_path, params):
    raw = tmp_path / "raw"
    write_series(raw / "ct", ct_volume(seed=4), affine_for("axial"))
    (raw / "annotations").mkdir()
    (raw / "annotations" / "readme.csv").write_text("column,meaning\nsource,file\n")
    (raw / "annotations" / "boxes.csv").write_text("source,x0,y0,x1,y1\n")
    run_ingest(raw, tmp_path / "out", params)
    audit = audit_of(tmp_path / "out")
    assert not audit["source"].str.startswith("annotations/").any(), audit
