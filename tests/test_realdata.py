"""The real TotalSegmentator CT series (JPEG 2000, empty UIDs) from ../shared."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from medtailor.ingest import run_ingest
from medtailor.resample import run_resample
from medtailor.resample.resampling import grid_map, resample_image
from medtailor.spatial import voxel_to_world, world_to_voxel

from .conftest import SHARED

TOTALSEG = SHARED / "realdata" / "totalseg"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TOTALSEG / "example_ct_dicom").is_dir(), reason="../shared/realdata absent"
    ),
]


@pytest.fixture(scope="module")
def real(tmp_path_factory, repo_params):
    raw = tmp_path_factory.mktemp("real_raw")
    (raw / "ct").symlink_to(TOTALSEG / "example_ct_dicom")
    (raw / "seg.nii.gz").symlink_to(TOTALSEG / "example_seg_dicom.nii.gz")
    (raw / "annotations").mkdir()
    (raw / "annotations" / "labels.csv").write_text("source,label\nct,seg.nii.gz\n")
    params = copy.deepcopy(repo_params)
    ingest_out = tmp_path_factory.mktemp("real_ingest")
    resample_out = tmp_path_factory.mktemp("real_resample")
    ingest_summary = run_ingest(raw, ingest_out, params)
    run_resample(ingest_out, resample_out, params)
    return {
        "ingest": pd.read_parquet(ingest_out / "manifest.parquet").iloc[0],
        "resample": pd.read_parquet(resample_out / "manifest.parquet").iloc[0],
        "ingest_dir": ingest_out,
        "resample_dir": resample_out,
        "summary": ingest_summary,
    }


def sitk_series():
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(TOTALSEG / "example_ct_dicom")))
    return reader.Execute()


def test_jpeg2000_series_with_empty_uids_ingests_like_simpleitk_reads_it(real):
    row = real["ingest"]
    assert real["summary"]["files_accepted"] == 20 and real["summary"]["images"] == 1
    assert row["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    image = nib.load(real["ingest_dir"] / row["image_path"])
    reference = sitk_series()
    np.testing.assert_array_equal(
        np.asarray(image.dataobj), sitk.GetArrayFromImage(reference).transpose(2, 1, 0)
    )
    # SimpleITK's LPS geometry, flipped to RAS, is the stored affine.
    direction = np.asarray(reference.GetDirection()).reshape(3, 3) * reference.GetSpacing()
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = direction, reference.GetOrigin()
    np.testing.assert_allclose(image.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)


def test_labels_stay_on_the_same_anatomy_after_resampling(real):
    row = real["resample"]
    assert row["spacing"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    image = nib.load(real["resample_dir"] / row["image_path"])
    labels = np.asarray(nib.load(real["resample_dir"] / row["label_path"]).dataobj)
    hu = image.get_fdata()
    inside_body = (hu[labels > 0] > -300).mean()
    mirrored = (hu[labels[:, ::-1, :] > 0] > -300).mean()
    assert inside_body > 0.95
    assert mirrored < inside_body - 0.15  # the check would catch a y-flipped label map

    # World-coordinate overlap with the original (LAS-stored) label map.
    original = nib.load(TOTALSEG / "example_seg_dicom.nii.gz")
    source = np.asarray(original.dataobj)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1).reshape(
        -1, 3
    )
    world = voxel_to_world(image.affine, grid)
    index = np.floor(world_to_voxel(original.affine, world) + 0.5).astype(int)
    valid = np.all((index >= 0) & (index < source.shape), axis=1)
    sampled = np.zeros(len(grid), source.dtype)
    sampled[valid] = source[tuple(index[valid].T)]
    sampled = sampled.reshape(labels.shape)
    values, counts = np.unique(source[source > 0], return_counts=True)
    for value in values[counts > 20000]:
        a, b = labels == value, sampled == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.9, (value, dice)


def test_trilinear_resampling_of_real_ct_matches_simpleitk(real):
    row = real["ingest"]
    image = nib.load(real["ingest_dir"] / row["image_path"])
    volume = image.get_fdata(dtype=np.float32)
    spacing = row["spacing"].tolist()
    gmap = grid_map(volume.shape, spacing, (1.0, 1.0, 1.0))
    ours = resample_image(volume, gmap, order=1, antialias=False)  # SimpleITK does not filter
    target = np.diag([-1, -1, 1, 1]) @ gmap.target_affine(image.affine)
    out_spacing = np.linalg.norm(target[:3, :3], axis=0)
    reference = sitk.Resample(
        sitk_series(),
        list(gmap.out_shape),
        sitk.Transform(),
        sitk.sitkLinear,
        target[:3, 3].tolist(),
        out_spacing.tolist(),
        (target[:3, :3] / out_spacing).ravel().tolist(),
        float("nan"),
        sitk.sitkFloat64,
    )
    reference = sitk.GetArrayFromImage(reference).transpose(2, 1, 0)
    inside = np.isfinite(reference)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(ours[inside], reference[inside], atol=0.05)
