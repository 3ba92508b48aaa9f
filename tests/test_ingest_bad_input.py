"""Bad input lands in the audit report with a clear reason; the good files around it are kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from medtailor.ingest import IngestError, run_ingest

from .conftest import small
from .helpers import affine_for, ct_volume, write_radiograph, write_series

CORPUS = {
    "corpus/MR_truncated.dcm": "truncated file: pixel data declares 8192 bytes but only 8130",
    "corpus/rtplan.dcm": "no pixel data: not an image (RT Plan Storage)",
    "corpus/reportsi.dcm": "no pixel data: not an image (Basic Text SR Storage)",
    "corpus/SC_rgb_rle.dcm": "colour image",
    "corpus/CT_small.dcm": "series of 1 slice(s)",
    "corpus/DICOMDIR": "DICOMDIR media index",
}


@pytest.fixture(scope="module")
def messy(synth_dir: Path, repo_params: dict, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("messy")
    shutil.copytree(synth_dir, root, dirs_exist_ok=True)
    for rel in CORPUS:
        source = get_testdata_file(Path(rel).name)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    (root / "corpus" / "notes.txt").write_text("scanner export log, not an image\n")

    # Two series with empty UIDs in one folder, told apart by number and orientation.
    write_series(root / "mixed", ct_volume(seed=1), affine_for("axial"), series_number=3, seed=1)
    write_series(root / "mixed", ct_volume(seed=2), affine_for("coronal"), series_number=4, seed=2)
    # A series with one slice copied under a second name.
    slices = write_series(
        root / "dup", ct_volume(seed=3), affine_for("axial"), series_number=5, seed=3
    )
    shutil.copy(slices[2], root / "dup" / "copy_of_slice")
    # A series with a missing slice.
    gap = write_series(
        root / "gap", ct_volume(seed=4), affine_for("sagittal"), series_number=6, seed=4
    )
    positions = {p: float(pydicom.dcmread(p).ImagePositionPatient[0]) for p in gap}
    middle = sorted(positions, key=positions.get)[4]
    middle.unlink()
    # A radiograph whose JPEG 2000 codestream is garbage.
    _, _, ds = write_radiograph(
        root / "broken" / "j2k.dcm", monochrome1=False, slope=1, intercept=0
    )
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
    ds["PixelData"].VR = "OB"
    ds.save_as(root / "broken" / "j2k.dcm", enforce_file_format=True)
    # NIfTI files with NaN voxels and with a zero-sized axis.
    nan = np.zeros((8, 8, 8), np.float32)
    nan[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "nifti" / "nan.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((0, 8, 8), np.float32), np.eye(4)), root / "nifti" / "empty.nii"
    )
    # Bad annotation rows next to the good ones.
    boxes = root / "annotations" / "boxes.csv"
    with open(boxes, "a") as handle:
        handle.write("dicom/case000/xr_study0/image0.dcm,50,10,,20,30,,1\n")
        handle.write("dicom/case000/xr_study0/image0.dcm,abc,10,,20,30,,1\n")
        handle.write("dicom/case000/xr_study0/image0.dcm,5000,5000,,5010,5010,,1\n")
        handle.write("no/such/image.dcm,1,1,,2,2,,1\n")
    n_rows = len(boxes.read_text().splitlines())
    out = tmp_path_factory.mktemp("messy_out")
    summary = run_ingest(root, out, small(repo_params))
    audit = pd.read_csv(out / "audit.csv")
    manifest = pd.read_parquet(out / "manifest.parquet")
    return {
        "root": root,
        "summary": summary,
        "audit": audit,
        "manifest": manifest,
        "n_rows": n_rows,
    }


def reasons_for(audit: pd.DataFrame, source: str) -> list[str]:
    return audit.loc[audit["source"] == source, "reason"].tolist()


@pytest.mark.parametrize("source,reason", sorted(CORPUS.items()))
def test_pydicom_corpus_oddities_are_audited(messy, source, reason):
    reasons = reasons_for(messy["audit"], source)
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_non_dicom_file_is_audited(messy):
    assert "not a DICOM or NIfTI file" in reasons_for(messy["audit"], "corpus/notes.txt")[0]


def test_unreadable_compressed_pixels_are_audited(messy):
    reason = reasons_for(messy["audit"], "broken/j2k.dcm")[0]
    assert "cannot decode pixel data (JPEG 2000 Image Compression (Lossless Only))" in reason


def test_nifti_problems_are_audited(messy):
    assert "1 NaN" in reasons_for(messy["audit"], "nifti/nan.nii.gz")[0]
    assert "zero-sized axis" in reasons_for(messy["audit"], "nifti/empty.nii")[0]


def test_gap_rejects_the_whole_series_with_the_positions(messy):
    gap = messy["audit"][messy["audit"]["source"].str.startswith("gap/")]
    assert len(gap) == 7
    assert all(
        "gap or uneven slice spacing" in r and "2.5 mm apart but 5 mm" in r for r in gap["reason"]
    )


def test_duplicate_slice_is_dropped_and_series_kept(messy):
    dup = messy["audit"][messy["audit"]["source"].str.startswith("dup/")]
    assert len(dup) == 1 and "duplicate slice of dup/" in dup["reason"].iloc[0]
    kept = messy["manifest"][messy["manifest"]["source"] == "dup"]
    assert len(kept) == 1 and kept["shape"].iloc[0].tolist() == [40, 36, 8]


def test_mixed_series_in_one_folder_are_separated(messy):
    mixed = messy["manifest"][messy["manifest"]["source"] == "mixed"]
    assert len(mixed) == 2
    assert set(mixed["orientation"]) == {"LPS", "LIP"}
    assert (mixed["n_files"] == 8).all()


def test_bad_annotation_rows_name_file_row_and_problem(messy):
    reasons = reasons_for(messy["audit"], "annotations/boxes.csv")
    n = messy["n_rows"]
    assert any(f"row {n - 3}: x1 (20) must be greater than x0 (50)" in r for r in reasons)
    assert any(f"row {n - 2}: x0='abc' is not a number" in r for r in reasons)
    assert any(
        f"row {n - 1} (dicom/case000/xr_study0/image0.dcm): box lies outside" in r for r in reasons
    )
    assert any(
        f"row(s) {n}: source 'no/such/image.dcm' matches no ingested image" in r for r in reasons
    )


def test_all_good_images_survive(messy, ingested):
    _, clean = ingested
    summary = messy["summary"]
    # The clean synthetic images, plus two mixed series and the de-duplicated series.
    assert summary["images"] == clean["images"] + 3
    assert summary["boxes"] == clean["boxes"]
    assert summary["label_maps"] == clean["label_maps"]


def test_nothing_usable_fails_the_stage(tmp_path, params):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "readme.txt").write_text("nothing here")
    shutil.copy(get_testdata_file("rtplan.dcm"), raw / "plan.dcm")
    with pytest.raises(IngestError, match="no usable image"):
        run_ingest(raw, tmp_path / "out", params)
    audit = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert set(audit["source"]) == {"readme.txt", "plan.dcm"}
