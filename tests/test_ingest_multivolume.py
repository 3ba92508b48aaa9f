"""Mosaics, enhanced multi-frame files and multi-volume series against dcm2niix: every
volume's voxels sit at the same world positions (within 0.01 mm) with the same values.

References: dcm2niix's own output for the real scanner exports in ../shared/realdata
(dcm_qa_nih, dcm_qa_enh; skipped when absent), and dcm2niix run here on the mosaic and
enhanced examples nibabel ships (skipped when dcm2niix is not installed)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medtailor.imageio import load_nifti
from medtailor.ingest import run_ingest

from .conftest import SHARED, small

REAL = SHARED / "realdata"
NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


@pytest.fixture()
def params(repo_params):
    return small(repo_params)


def same_voxels(
    array, affine, ref_array, ref_affine, tolerance_mm: float = 0.01, values: str = "equal"
) -> None:
    """``array`` holds ``ref_array``'s voxels, possibly with axes permuted or flipped: each
    reference voxel centre maps to one of ours within ``tolerance_mm``, with the same value
    (``values="equal"``), the same up to the reference's quantisation step (``"quantised"``:
    a reference stored as scaled integers) or the same up to one constant factor
    (``"proportional"``: Philips' precise value, see the test)."""
    assert array.size == ref_array.size
    grid = np.indices(ref_array.shape).reshape(3, -1)
    world = ref_affine[:3, :3] @ grid + ref_affine[:3, 3:4]
    ours = np.linalg.solve(affine[:3, :3], world - affine[:3, 3:4])
    rounded = np.rint(ours)
    distance = np.linalg.norm(affine[:3, :3] @ (ours - rounded), axis=0)
    assert distance.max() < tolerance_mm, f"{distance.max():.4f} mm off the reference grid"
    index = rounded.astype(int)
    assert (index >= 0).all() and all((index[k] < array.shape[k]).all() for k in range(3))
    ours, ref = array[tuple(index)].astype(float), ref_array.reshape(-1)
    if values == "proportional":
        ours = ours * (ref @ ours) / (ours @ ours)
    if values == "equal":
        np.testing.assert_array_equal(ours, ref)
    elif values == "quantised":
        step = np.diff(np.unique(ref)).min()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=step)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def ingested_volumes(raw: Path, out: Path, params) -> pd.DataFrame:
    run_ingest(raw, out, params)
    return pd.read_parquet(out / "manifest.parquet")


def check_against(
    manifest: pd.DataFrame, out: Path, reference: np.ndarray, ref_affine, values: str = "equal"
) -> None:
    ordered = manifest.sort_values("volume_index")
    assert len(ordered) == (reference.shape[3] if reference.ndim == 4 else 1)
    for k, row in enumerate(ordered.itertuples()):
        array, affine = load_nifti(out / row.image_path)
        ref = reference[..., k] if reference.ndim == 4 else reference
        same_voxels(array, affine, ref, ref_affine, values=values)


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.get_fdata()), image.affine


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realdata absent")


@needs_real
@pytest.mark.parametrize("series", [3, 4, 5, 6])
def test_siemens_mosaics_match_dcm2niix(tmp_path, params, series):
    folder = next((REAL / "dcm_qa_nih" / "In" / "20180918Si").glob(f"mr_000{series}"))
    manifest = ingested_volumes(folder, tmp_path / "out", params)
    assert set(manifest["varies"]) == {"AcquisitionNumber"}
    ref = next((REAL / "dcm_qa_nih" / "Ref").glob(f"EPI_PE=*_{series}.nii"))
    check_against(manifest, tmp_path / "out", *reference(ref))


@needs_real
@pytest.mark.parametrize("series", [4, 5, 6, 7])
def test_a_ge_multivolume_series_matches_dcm2niix(tmp_path, params, series):
    folder = REAL / "dcm_qa_nih" / "In" / "20180918GE" / f"mr_000{series}"
    manifest = ingested_volumes(folder, tmp_path / "out", params)
    assert len(manifest) == 10 and manifest["varies"].iloc[0] != ""
    ref = REAL / "dcm_qa_nih" / "Ref" / f"DCM2NIIX_regression_test_{series}.nii"
    check_against(manifest, tmp_path / "out", *reference(ref))


@needs_real
def test_siemens_enhanced_multiframe_matches_dcm2niix(tmp_path, params):
    manifest = ingested_volumes(REAL / "dcm_qa_enh" / "In" / "Siemens", tmp_path / "out", params)
    ref = REAL / "dcm_qa_enh" / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii"
    check_against(manifest, tmp_path / "out", *reference(ref))


@needs_real
def test_philips_enhanced_frame_sets_match_dcm2niix(tmp_path, params):
    """Two frame sets (magnitude and field map in Hz), each with its own RescaleSlope and
    Intercept. dcm2niix writes the field map's displayed value (as scaled integers) and the
    magnitude's private precise value (stored / (RescaleSlope x ScaleSlope)), which is the
    displayed value times a constant; ingest keeps displayed values (docs/stages.md,
    'Philips intensities')."""
    manifest = ingested_volumes(REAL / "dcm_qa_enh" / "In" / "Philips", tmp_path / "out", params)
    assert len(manifest) == 2 and set(manifest["varies"]) == {"frame set"}
    for k, (name, values) in enumerate((("e1", "proportional"), ("e2_fieldmaphz", "quantised"))):
        ref = REAL / "dcm_qa_enh" / "Ref" / f"Philips_WIP_B0_NS_801_{name}.nii"
        volume = manifest[manifest["volume_index"] == k]
        check_against(volume, tmp_path / "out", *reference(ref), values=values)


def write_two_volume_series(raw: Path) -> list[np.ndarray]:
    """One series (one UID), two images at every position: acquisitions 1 and 2."""
    import pydicom

    from .helpers import affine_for, ct_volume, write_series

    volumes = [ct_volume(seed=11), ct_volume(seed=12)]
    for acquisition, volume in enumerate(volumes, start=1):
        paths = write_series(
            raw / f"acq{acquisition}",
            volume,
            affine_for("axial"),
            series_uid="1.2.3.77",
            study_uid="1.2.3.7",
            seed=acquisition,
        )
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.AcquisitionNumber = acquisition
            ds.save_as(path)
    return volumes


def test_a_multivolume_series_splits_into_3d_volumes_or_stacks_into_4d(tmp_path, params):
    raw = tmp_path / "raw"
    volumes = write_two_volume_series(raw)
    split = ingested_volumes(raw, tmp_path / "split", params).sort_values("volume_index")
    assert split["volume_index"].tolist() == [0, 1]
    assert set(split["varies"]) == {"AcquisitionNumber"} and set(split["channels"]) == {1}
    for volume, row in zip(volumes, split.itertuples(), strict=True):
        array, _ = load_nifti(tmp_path / "split" / row.image_path)
        np.testing.assert_array_equal(array, volume)
    params["ingest"]["multivolume"] = "4d"
    (row,) = ingested_volumes(raw, tmp_path / "4d", params).itertuples()
    assert row.channels == 2 and row.volume_index == -1
    array, _ = load_nifti(tmp_path / "4d" / row.image_path)
    np.testing.assert_array_equal(array, np.stack(volumes, axis=-1))


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
@pytest.mark.parametrize("name", ["philips_mprage.dcm.gz", "siemens_dwi_1000.dcm.gz"])
def test_nibabels_examples_match_dcm2niix_run_here(tmp_path, params, name):
    raw, ref_dir = tmp_path / "raw", tmp_path / "ref"
    raw.mkdir()
    ref_dir.mkdir()
    data = (NIBABEL_DATA / name).read_bytes()
    (raw / "image.dcm").write_bytes(gzip.decompress(data) if name.endswith(".gz") else data)
    subprocess.run(
        ["dcm2niix", "-b", "n", "-z", "n", "-f", "ref", "-o", str(ref_dir), str(raw)],
        check=True,
        capture_output=True,
    )
    manifest = ingested_volumes(raw, tmp_path / "out", params)
    (ref,) = sorted(ref_dir.glob("ref*.nii"))
    check_against(manifest, tmp_path / "out", *reference(ref))
