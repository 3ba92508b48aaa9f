"""Images, boxes and training crops for the detector."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.imageio import first_channel, load_nifti
from medtailor.intensity import intensity_bounds, scale_intensity
from medtailor.tables import box_columns, read_boxes

KINDS = {"radiograph": 2, "volume": 3}


@dataclass
class DetectionImage:
    image_id: str
    image: np.ndarray  # scaled to [0, 1], indexed (x, y[, z])
    boxes: np.ndarray  # (N, 2 * ndim) edge corners
    affine: np.ndarray


def load_detection_images(
    resample_dir: Path, rows: pd.DataFrame, intensity: Mapping[str, Any]
) -> list[DetectionImage]:
    boxes = read_boxes(resample_dir / "boxes.parquet")
    images = []
    for _, row in rows.iterrows():
        array, affine = load_nifti(resample_dir / row["image_path"])
        ndim = int(row["ndim"])
        array = first_channel(array, ndim)
        own = boxes.loc[boxes["image_id"] == row["image_id"], box_columns(ndim)].to_numpy(float)
        scaled = scale_intensity(array, intensity_bounds(array, intensity))
        images.append(DetectionImage(row["image_id"], scaled, own.reshape(-1, 2 * ndim), affine))
    return images


def random_crop(
    item: DetectionImage,
    patch_size: tuple[int, ...],
    rng: np.random.Generator,
    lesion_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A patch of ``patch_size`` (zero-padded where the image is smaller) and its boxes.

    With probability ``lesion_fraction`` the crop is centred near a random lesion. Boxes
    are clipped to the crop and kept when at least half of their extent is inside.
    Random flips along every axis augment the crop.
    """
    ndim = item.image.ndim
    shape = np.asarray(item.image.shape)
    size = np.asarray(patch_size)
    if len(item.boxes) and rng.random() < lesion_fraction:
        box = item.boxes[rng.integers(len(item.boxes))]
        centre = (box[:ndim] + box[ndim:]) / 2 + rng.uniform(-0.25, 0.25, ndim) * size
    else:
        centre = rng.uniform(0, 1, ndim) * shape
    start = np.clip(np.round(centre - size / 2).astype(int), 0, np.maximum(shape - size, 0))
    crop = np.zeros(tuple(size), np.float32)
    stop = np.minimum(start + size, shape)
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    crop[tuple(slice(0, b - a) for a, b in zip(start, stop, strict=True))] = item.image[region]

    boxes = item.boxes - np.tile(start, 2)
    clipped = np.clip(boxes, 0, np.tile(np.minimum(size, stop - start), 2))
    extent = boxes[:, ndim:] - boxes[:, :ndim]
    kept = np.all((clipped[:, ndim:] - clipped[:, :ndim]) >= 0.5 * extent, axis=1)
    boxes = clipped[kept]
    for axis in range(ndim):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
            lo, hi = boxes[:, axis].copy(), boxes[:, axis + ndim].copy()
            boxes[:, axis], boxes[:, axis + ndim] = size[axis] - hi, size[axis] - lo
    return np.ascontiguousarray(crop), boxes
