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
