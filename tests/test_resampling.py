"""Resampling against independent references: SimpleITK, brute force, world geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from medtailor.resample.resampling import (
    grid_map,
    lowres_axis,
    resample_image,
    resample_labels,
)
from medtailor.spatial import LPS_TO_RAS, voxel_to_world


def oblique_affine(spacing, degrees=25.0, flip=(1, -1, 1), origin=(12.0, -30.0, 7.5)):
    """A rotated, flipped (left-handed) grid: the hard case for world alignment."""
    rotation = Rotation.from_euler("zyx", [degrees, 10.0, -5.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(flip) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def to_sitk(array: np.ndarray, affine: np.ndarray):
    """numpy (x, y, z) + RAS affine -> SimpleITK image (LPS world)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return image


def sitk_resample(array, affine, gmap, interpolator, out_type=None):
    new_affine = LPS_TO_RAS @ gmap.target_affine(affine)
    spacing = np.linalg.norm(new_affine[:3, :3], axis=0)
    out = sitk.Resample(
        to_sitk(array, affine),
        [int(v) for v in gmap.out_shape],
        sitk.Transform(),
        interpolator,
        new_affine[:3, 3].tolist(),
        spacing.tolist(),
        (new_affine[:3, :3] / spacing).ravel().tolist(),
        float("nan") if out_type is None else 0,
        sitk.sitkFloat64 if out_type is None else out_type,
    )
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(0, 100, shape), 1.5).astype(np.float32) * 10


@pytest.mark.parametrize(
    "spacing,separate",
    [((0.7, 0.9, 1.3), None), ((0.7, 0.7, 2.5), 2), ((2.6, 0.8, 0.8), 0)],
)
def test_linear_resampling_matches_simpleitk_on_oblique_flipped_grids(spacing, separate):
    affine = oblique_affine(spacing)
    volume = smooth_volume((30, 26, 14))
    gmap = grid_map(volume.shape, spacing, (1.0, 1.0, 1.0))
    assert lowres_axis(spacing, 3.0) == separate
    # The separate-axis path with order 1 along that axis is trilinear interpolation too.
    # SimpleITK interpolates without a low-pass filter: compare the interpolation alone.
    ours = resample_image(
        volume, gmap, order=1, separate_axis=separate, order_separate=1, antialias=False
    )
    reference = sitk_resample(volume, affine, gmap, sitk.sitkLinear)
    inside = np.isfinite(reference)
    assert inside.mean() > 0.6
    np.testing.assert_allclose(ours[inside], reference[inside], atol=1e-3 * np.abs(volume).max())


def test_nearest_labels_match_simpleitk():
    spacing = (0.7, 0.8, 2.5)
    affine = oblique_affine(spacing, degrees=-40, flip=(-1, 1, 1))
    rng = np.random.default_rng(3)
    labels = ndimage.median_filter(rng.integers(0, 5, (28, 24, 12)), 3).astype(np.uint8)
    gmap = grid_map(labels.shape, spacing, (1.0, 1.0, 1.0))
    ours = resample_labels(labels, gmap, mode="nearest")
    reference = sitk_resample(labels, affine, gmap, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in gmap.out_shape], indexing="ij"), -1)
    old = np.asarray(gmap.offset) + np.asarray(gmap.scale) * coords
    inside = np.all((old >= 0) & (old <= np.asarray(labels.shape) - 1), axis=-1)
    # Exact half-way points are ties that each library may round either way.
    tie = np.any(np.abs(old - np.floor(old) - 0.5) < 1e-6, axis=-1)
    compared = inside & ~tie
    assert compared.sum() > 3000
    np.testing.assert_array_equal(ours[compared], reference[compared])


def test_world_position_of_a_blob_is_kept():
    spacing = (0.6, 0.75, 3.2)
    affine = oblique_affine(spacing)
    shape = (48, 40, 12)
    centre = np.array([20.3, 17.6, 5.4])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    distance_mm = np.linalg.norm((grid - centre) * np.asarray(spacing), axis=-1)
    blob = np.exp(-((distance_mm / 4.0) ** 2)).astype(np.float32)
    gmap = grid_map(shape, spacing, (1.0, 1.0, 1.0))
    out = resample_image(
        blob, gmap, order=3, separate_axis=lowres_axis(spacing, 3.0), order_separate=1
    )
    before = voxel_to_world(affine, ndimage.center_of_mass(blob))[0]
    after = voxel_to_world(
        gmap.target_affine(affine), ndimage.center_of_mass(np.clip(out, 0, None))
    )[0]
    assert np.linalg.norm(before - after) < 0.15  # mm


def test_grid_keeps_exact_spacing_and_field_of_view_centre():
    spacing = (0.977, 0.977, 2.0)
    affine = oblique_affine(spacing)
    gmap = grid_map((512, 512, 20), spacing, (1.0, 1.0, 1.0))
    assert gmap.out_shape == (500, 500, 40)
    new = gmap.target_affine(affine)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), 1.0)
    old_centre = voxel_to_world(affine, (np.array([512, 512, 20]) - 1) / 2)
    new_centre = voxel_to_world(new, (np.array(gmap.out_shape) - 1) / 2)
    np.testing.assert_allclose(old_centre, new_centre, atol=1e-9)


def test_separate_axis_uses_nearest_slices_for_order_zero():
    volume = smooth_volume((20, 20, 8))
    spacing = (0.5, 0.5, 3.0)
    gmap = grid_map(volume.shape, spacing, (1.0, 1.0, 1.0))
    out = resample_image(volume, gmap, order=3, separate_axis=2, order_separate=0)
    in_plane = grid_map(volume.shape[:2], spacing[:2], (1.0, 1.0))
    z = np.clip(np.floor(gmap.offset[2] + gmap.scale[2] * np.arange(gmap.out_shape[2]) + 0.5), 0, 7)
    for k, source in enumerate(z.astype(int)):
        expected = resample_image(volume[:, :, source], in_plane, order=3)
        np.testing.assert_allclose(out[:, :, k], expected, rtol=1e-5, atol=1e-3)


def test_boxes_keep_their_world_extent():
    spacing = (0.7, 0.8, 2.5)
    affine = oblique_affine(spacing)
    gmap = grid_map((40, 30, 12), spacing, (1.0, 1.0, 1.0))
    boxes = np.array([[3.0, 4.0, 2.0, 20.0, 25.0, 9.0], [10.5, 0.0, 0.0, 40.0, 30.0, 12.0]])
    mapped = gmap.boxes_to_target(boxes)
    new_affine = gmap.target_affine(affine)
    for old, new in zip(boxes, mapped, strict=True):
        for corner_old, corner_new in [(old[:3], new[:3]), (old[3:], new[3:])]:
            # Edge coordinates are centre coordinates + 0.5.
            world_old = voxel_to_world(affine, corner_old - 0.5)
            world_new = voxel_to_world(new_affine, corner_new - 0.5)
            inside = np.all((corner_new > 0) & (corner_new < np.array(gmap.out_shape)))
            if inside:
                np.testing.assert_allclose(world_old, world_new, atol=1e-9)
    assert np.all(mapped[:, 3:] <= np.array(gmap.out_shape))


def _onehot_brute_force(labels, gmap, separate):
    values = np.unique(labels)
    scores = np.stack(
        [
            resample_image((labels == v).astype(np.float32), gmap, 1, separate, 0, antialias=False)
            for v in values
        ]
    )
    # Ties go to the lowest label, like the implementation's strict comparison.
    return values[np.argmax(scores, axis=0)]


@pytest.mark.parametrize("spacing", [(0.7, 0.9, 1.2), (0.6, 0.6, 2.5)])
def test_linear_onehot_labels_match_brute_force_and_invent_nothing(spacing):
    rng = np.random.default_rng(7)
    labels = np.zeros((30, 28, 12), np.uint8)
    for value in (3, 7, 9):
        centre = rng.uniform([5, 5, 2], [25, 23, 10])
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1)
        labels[np.linalg.norm((grid - centre) * spacing, axis=-1) < 3.5] = value
    gmap = grid_map(labels.shape, spacing, (1.0, 1.0, 1.0))
    separate = lowres_axis(spacing, 3.0)
    out = resample_labels(labels, gmap, "linear_onehot", separate, 0)
    assert set(np.unique(out)) <= {0, 3, 7, 9}
    np.testing.assert_array_equal(out, _onehot_brute_force(labels, gmap, separate))
    # Volumes are preserved to within the interpolation of the boundary.
    for value in (3, 7, 9):
        before = (labels == value).sum() * np.prod(spacing)
        after = (out == value).sum()
        assert after == pytest.approx(before, rel=0.25)


def test_2d_radiograph_grid():
    gmap = grid_map((320, 384), (0.2, 0.2), (0.4, 0.4))
    assert gmap.out_shape == (160, 192)
    image = smooth_volume((320, 384, 1))[:, :, 0]
    out = resample_image(image, gmap, order=1, antialias=False)
    assert out.shape == (160, 192)
    # Downsampling by two with linear interpolation at the centres averages pixel pairs.
    np.testing.assert_allclose(out[10, 10], image[20:22, 20:22].mean(), rtol=1e-4)


def grating_amplitude(period_mm: float, spacing_mm: float, target_mm: float, axis: int, ndim: int):
    """Amplitude after resampling a unit sine grating along ``axis`` (edges left out)."""
    shape = [24] * ndim
    shape[axis] = 400
    position = np.arange(400) * spacing_mm
    profile = np.sin(2 * np.pi * position / period_mm).reshape(
        [-1 if a == axis else 1 for a in range(ndim)]
    )
    image = np.broadcast_to(profile, shape).astype(np.float32)
    spacing = [target_mm] * ndim
    spacing[axis] = spacing_mm
    gmap = grid_map(shape, spacing, [target_mm] * ndim)
    amplitudes = {}
    for antialias in (False, True):
        out = resample_image(image, gmap, order=3, antialias=antialias)
        core = np.moveaxis(out, axis, 0)[20:-20]
        amplitudes[antialias] = float(np.sqrt(2) * core.std())
    return amplitudes


@pytest.mark.parametrize("ndim,axis", [(2, 0), (2, 1), (3, 2)])
def test_downsampling_a_grating_finer_than_the_new_grid_does_not_alias(ndim, axis):
    # 0.55 mm lines at 0.2 mm pixels, resampled to 0.4 mm (Nyquist period 0.8 mm): without a
    # low-pass filter they come back as a false 1.46 mm pattern of 80% amplitude.
    fine = grating_amplitude(0.55, 0.2, 0.4, axis, ndim)
    assert fine[False] > 0.7  # the aliasing the filter must remove
    assert fine[True] < 0.2
    # Detail the new grid can hold (4 mm period, ten new pixels) passes nearly unchanged.
    coarse = grating_amplitude(4.0, 0.2, 0.4, axis, ndim)
    assert coarse[True] > 0.9


def test_an_image_already_on_the_target_grid_passes_through_unchanged(tmp_path, repo_params):
    """A volume at 1 mm isotropic with its label map goes through resample unchanged,
    without an interpolation pass (radiographs exported at the target spacing spent
    minutes there); another spacing is still resampled."""
    import nibabel as nib
    import pandas as pd

    from medtailor.imageio import load_nifti
    from medtailor.ingest import run_ingest
    from medtailor.resample import run_resample

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, (20, 18, 16)).astype(np.float32)
    labels = (rng.random((20, 18, 16)) > 0.8).astype(np.uint8)
    on_grid = np.diag([1.0, 1.0, 1.0, 1.0])
    on_grid[:3, 3] = [-10.0, 5.0, 2.0]
    nib.save(nib.Nifti1Image(volume, on_grid), str(raw / "on_grid.nii.gz"))
    nib.save(nib.Nifti1Image(labels, on_grid), str(raw / "on_grid_labels.nii.gz"))
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.0, 1.0, 1.0])), str(raw / "coarse.nii.gz"))
    (raw / "annotations").mkdir()
    pd.DataFrame([{"source": "on_grid.nii.gz", "label": "on_grid_labels.nii.gz"}]).to_csv(
        raw / "annotations" / "labels.csv", index=False
    )
    run_ingest(raw, tmp_path / "ingest", repo_params)
    summary = run_resample(tmp_path / "ingest", tmp_path / "resample", repo_params)
    assert summary["already_on_target_grid"] == 1 and summary["images"] == 2
    manifest = pd.read_parquet(tmp_path / "resample" / "manifest.parquet")
    row = manifest[manifest["label_path"] != ""].iloc[0]
    array, affine = load_nifti(tmp_path / "resample" / row["image_path"])
    np.testing.assert_array_equal(array, volume)
    np.testing.assert_allclose(affine, on_grid)
    label, _ = load_nifti(tmp_path / "resample" / row["label_path"], dtype=None)
    np.testing.assert_array_equal(label, labels)
    coarse = manifest[manifest["label_path"] == ""].iloc[0]
    assert list(coarse["shape"]) == [30, 18, 16]
