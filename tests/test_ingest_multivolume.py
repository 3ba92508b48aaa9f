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


def write_one_series(
    raw: Path, volumes: list[np.ndarray], uid: str, seed: int, edit
) -> list[list[Path]]:
    """Volumes written as the images of one series (one SeriesInstanceUID, a folder per
    volume); ``edit(ds, v)`` sets what each image of volume v says about it."""
    import pydicom

    from .helpers import affine_for, write_series

    written = []
    for v, volume in enumerate(volumes):
        paths = write_series(
            raw / f"v{v}",
            volume,
            affine_for("axial"),
            series_uid=uid,
            study_uid=uid + ".0",
            seed=seed + v,
        )
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = f"{uid}.{v}.{ds.InstanceNumber}"
            edit(ds, v)
            ds.save_as(path)
        written.append(paths)
    return written


def write_two_volume_series(raw: Path) -> list[np.ndarray]:
    """One series (one UID), two images at every position: acquisitions 1 and 2."""
    from .helpers import ct_volume

    volumes = [ct_volume(seed=11), ct_volume(seed=12)]

    def acquisition(ds, v):
        ds.AcquisitionNumber = v + 1

    write_one_series(raw, volumes, "1.2.3.77", 1, acquisition)
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


def write_dwi_series(raw: Path, acquisition_quirk: bool) -> list[np.ndarray]:
    """A classic (one file per image) diffusion series as Philips writes it: b = 0 then
    three gradient directions at b = 1000, InstanceNumber counting volume after volume,
    TemporalPositionIdentifier 1 everywhere; with ``acquisition_quirk`` some images at a
    few adjacent positions carry AcquisitionNumber 19 instead of 22 (as in the public
    Philips DTI exports that mixed volumes)."""
    import pydicom

    from .helpers import ct_volume

    directions = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    volumes = [ct_volume(seed=30 + v) for v in range(len(directions))]
    slices = volumes[0].shape[2]

    def diffusion(ds, v):
        ds.Modality = "MR"
        ds.TemporalPositionIdentifier = 1
        ds.DiffusionBValue = 0 if v == 0 else 1000
        ds.DiffusionGradientOrientation = list(directions[v])
        ds.AcquisitionNumber = 22

    for v, paths in enumerate(write_one_series(raw, volumes, "1.2.3.88", 40, diffusion)):
        # InstanceNumber in acquisition order: volume by volume, slice by slice.
        ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        for z, path in enumerate(ordered):
            ds = pydicom.dcmread(path)
            ds.InstanceNumber = v * slices + z + 1
            if acquisition_quirk and v >= 2 and z in (3, 4, 5):
                ds.AcquisitionNumber = 19
            ds.save_as(path)
    return volumes


@pytest.mark.parametrize("quirk", [False, True])
def test_diffusion_volumes_follow_b_value_and_gradient_not_acquisition_number(
    tmp_path, params, quirk
):
    """Each volume holds the slices of one b-value and direction, in acquisition order,
    whatever AcquisitionNumber says at a few positions."""
    raw = tmp_path / "raw"
    volumes = write_dwi_series(raw, acquisition_quirk=quirk)
    manifest = ingested_volumes(raw, tmp_path / "out", params).sort_values("volume_index")
    assert manifest["volume_index"].tolist() == [0, 1, 2, 3]
    assert set(manifest["varies"]) == {"DiffusionBValue"}
    for volume, row in zip(volumes, manifest.itertuples(), strict=True):
        array, _ = load_nifti(tmp_path / "out" / row.image_path)
        np.testing.assert_array_equal(array, volume)


def test_a_diffusion_series_whose_volumes_cannot_be_assembled_is_refused(tmp_path, params):
    import pydicom

    raw = tmp_path / "raw"
    write_dwi_series(raw, acquisition_quirk=False)
    # One image of direction 3 claims direction 2: that position has two of direction 2.
    path = sorted((raw / "v3").iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.DiffusionGradientOrientation = [0.0, 1.0, 0.0]
    ds.save_as(path)
    from medtailor.ingest import IngestError

    with pytest.raises(IngestError, match="every file was rejected"):
        run_ingest(raw, tmp_path / "out", params)
    audit = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert audit["reason"].str.contains("different b-values or gradient directions").any()


def write_ge_pepolar_series(raw: Path, mode: int | None) -> list[np.ndarray]:
    """Four volumes of one GE EPI series, the pulse sequence "research/ABCD/epi_pepolar"
    in (0019,109C) and the polarity ``mode`` in (0019,10B3) (none when None)."""
    from .helpers import ct_volume

    volumes = [ct_volume(seed=60 + v) for v in range(4)]

    def ge_pepolar(ds, v):
        ds.Modality, ds.Manufacturer = "MR", "GE MEDICAL SYSTEMS"
        ds.AcquisitionNumber = v + 1
        block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        block.add_new(0x9C, "LO", "research/ABCD/epi_pepolar")
        if mode is not None:
            block.add_new(0xB3, "DS", str(mode))

    write_one_series(raw, volumes, "1.2.3.99", 70, ge_pepolar)
    return volumes


@pytest.mark.parametrize(
    ("mode", "reversed_volumes"),
    [(0, []), (1, [0, 1, 2, 3]), (2, [0, 2]), (3, [1, 3])],
)
def test_ge_reverse_polarity_volumes_are_flipped_into_a_series_of_their_own(
    tmp_path, params, mode, reversed_volumes
):
    """GE stores epi_pepolar volumes of reversed polarity with their rows back to front:
    ingest flips those volumes (anatomy back in place) and files them as series number +
    1000, as dcm2niix does, and says so in the manifest."""
    raw = tmp_path / "raw"
    volumes = write_ge_pepolar_series(raw, mode)
    manifest = ingested_volumes(raw, tmp_path / "out", params)
    assert len(manifest) == 4 and manifest["series_id"].nunique() == (
        2 if 0 < len(reversed_volumes) < 4 else 1
    )
    flipped = manifest[manifest["corrections"] != ""]
    assert len(flipped) == len(reversed_volumes)
    assert set(flipped["corrections"]) <= {
        "GE epi_pepolar: stored with rows reversed; flipped, filed as series number + 1000"
    }
    found = []
    for row in manifest.itertuples():
        array, _ = load_nifti(tmp_path / "out" / row.image_path)
        matches = [v for v, volume in enumerate(volumes) if np.array_equal(array, volume)]
        mirrored = [v for v, volume in enumerate(volumes) if np.array_equal(array, volume[:, ::-1])]
        found.append((matches, mirrored, row.corrections != ""))
    for v in range(4):
        if v in reversed_volumes:
            assert ([], [v], True) in found
        else:
            assert ([v], [], False) in found


def test_a_ge_pepolar_series_without_its_mode_is_refused(tmp_path, params):
    from medtailor.ingest import IngestError

    raw = tmp_path / "raw"
    write_ge_pepolar_series(raw, None)
    with pytest.raises(IngestError):
        run_ingest(raw, tmp_path / "out", params)
    audit = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert audit["reason"].str.contains("which volumes are mirrored front to back").any()
