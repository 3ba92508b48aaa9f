"""Volumes and label maps of the manifest as MONAI dict samples, the training crops, and
label maps written back on the ingested grid.

A sample is ``{"image": (C, X, Y, Z) float32 in [0, 1], "label": (1, X, Y, Z) class
indices}``: each channel scaled by ``train_seg.intensity`` (the detector's rule), label
values mapped to class indices in the order of ``train_seg.labels`` (0 = background;
values not listed count as background, and the log says how many voxels that was).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandCropByLabelClassesd,
    RandFlipd,
    RandRotate90d,
    SpatialPad,
    SpatialPadd,
    SpatialResample,
)

from medtailor.imageio import load_nifti
from medtailor.intensity import intensity_bounds, scale_intensity
from medtailor.split import manifest_with_split
from medtailor.tables import manifest_affine, read_manifest

log = logging.getLogger(__name__)


def segmentation_rows(resample_dir: Path, split_csv: Path) -> pd.DataFrame:
    """The volumes with a label map, each with its split (radiographs and unlabelled
    volumes are not segmentation data)."""
    manifest = manifest_with_split(resample_dir, split_csv)
    rows = manifest[(manifest["ndim"] == 3) & (manifest["label_path"].astype(str) != "")]
    if rows.empty:
        raise RuntimeError(f"{resample_dir}: no volume has a label map to segment")
    return rows.sort_values("image_id").reset_index(drop=True)


def data_fingerprint(resample_dir: Path, rows: pd.DataFrame) -> str:
    """Identity of the training data without reading it: each volume's id, split, grid and
    the byte sizes of its image and label files (a resample rerun that changes a volume
    changes its compressed size or its grid)."""
    facts = [
        [
            row["image_id"],
            row["split"],
            list(map(float, row["affine"])),
            list(map(int, row["shape"])),
            (resample_dir / row["image_path"]).stat().st_size,
            (resample_dir / row["label_path"]).stat().st_size,
        ]
        for _, row in rows.iterrows()
    ]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def class_values(labels: Mapping[str, int]) -> list[int]:
    """Label-map values of the foreground classes, in class-index order (1, 2, ...)."""
    return [int(v) for v in labels.values()]


def to_class_indices(label_map: np.ndarray, values: Sequence[int], source: str) -> np.ndarray:
    lookup = np.zeros(int(max(label_map.max(initial=0), *values)) + 1, np.int64)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    stray = ~np.isin(label_map, [0, *values])
    if stray.any():
        log.warning(
            "%s: %d voxel(s) with label values %s not in train_seg.labels count as background",
            source,
            int(stray.sum()),
            sorted(np.unique(label_map[stray]).tolist()),
        )
    return lookup[np.clip(label_map, 0, None).astype(np.int64)]


def to_label_values(classes: np.ndarray, values: Sequence[int]) -> np.ndarray:
    return np.asarray([0, *values], np.int16)[classes]


def scaled_channels(image: np.ndarray, intensity: Mapping[str, Any]) -> np.ndarray:
    """(C, X, Y, Z) of a volume (a 4D one's last axis are its channels), each channel
    scaled to [0, 1] as the network was trained."""
    channels = [image] if image.ndim == 3 else list(np.moveaxis(image, -1, 0))
    return np.stack([scale_intensity(c, intensity_bounds(c, intensity)) for c in channels])


def load_sample(
    resample_dir: Path, row: pd.Series, labels: Mapping[str, int], intensity: Mapping[str, Any]
) -> dict[str, Any]:
    image, affine = load_nifti(resample_dir / row["image_path"])
    scaled = scaled_channels(image, intensity)
    label_map, _ = load_nifti(resample_dir / row["label_path"], dtype=None)
    if label_map.shape != image.shape[:3]:
        raise ValueError(
            f"{resample_dir / row['label_path']}: label map of shape {label_map.shape} on an "
            f"image of shape {image.shape[:3]}"
        )
    classes = to_class_indices(np.asarray(label_map), class_values(labels), row["image_path"])
    return {
        "image": torch.from_numpy(scaled),
        "label": torch.from_numpy(classes[None].astype(np.int64)),
        "image_id": row["image_id"],
        "affine": affine,
    }


def training_transform(
    patch_size: Sequence[int], samples_per_volume: int, class_ratios: Sequence[float]
) -> Compose:
    """Crops centred on a voxel of a class drawn with ``class_ratios`` (background first),
    then random 90-degree rotations in the axial plane and flips along each axis.

    The crops are MONAI's per-class generalisation of positive/negative balancing
    (``RandCropByLabelClassesd``; ``RandCropByPosNegLabeld`` is the two-class case): with
    foreground classes of very different sizes (bone 5% of a volume, lesions 0.1%), a crop
    centred on "any foreground" almost never holds a lesion."""
    keys = ["image", "label"]
    return Compose(
        [
            SpatialPadd(keys, spatial_size=list(patch_size)),
            RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=list(patch_size),
                ratios=list(class_ratios),
                num_classes=len(class_ratios),
                num_samples=samples_per_volume,
                warn=False,
            ),
            RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
        ]
    )


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, list]:
    """``image`` padded (symmetrically, with zeros) to at least the patch size, and the
    slices that cut the original back out."""
    shape = image.shape[1:]
    padded = SpatialPad(list(patch_size))(image)
    cuts = [
        slice((p - s) // 2, (p - s) // 2 + s) for s, p in zip(shape, padded.shape[1:], strict=True)
    ]
    return torch.as_tensor(padded), cuts


def to_grid(
    label_map: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
) -> np.ndarray:
    """A label map moved onto another voxel grid of the same scanner space (nearest
    neighbour, world-aligned through the two affines; zero outside the source)."""
    source = MetaTensor(
        torch.as_tensor(np.asarray(label_map, np.float32))[None],
        affine=torch.as_tensor(source_affine, dtype=torch.float64),
    )
    moved = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float64)(
        source,
        dst_affine=torch.as_tensor(target_affine, dtype=torch.float64),
        spatial_size=[int(s) for s in target_shape],
    )
    return np.rint(np.asarray(moved[0])).astype(label_map.dtype)


def ingested_grids(ingest_dir: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Affine and shape of every ingested image, by image id (before resampling)."""
    manifest = read_manifest(ingest_dir / "manifest.parquet")
    return {
        row["image_id"]: (manifest_affine(row), [int(s) for s in row["shape"]][: int(row["ndim"])])
        for _, row in manifest.iterrows()
    }
