"""Scaling of image intensities to [0, 1], shared by the detector and the patch store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def intensity_bounds(image: np.ndarray, spec: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) that map to 0 and 1: the image's own percentiles, or a fixed window."""
    low, high = (float(v) for v in spec["range"])
    if spec["mode"] == "percentile":
        low, high = (float(v) for v in np.percentile(image, [low, high]))
    if high <= low:
        high = low + 1.0
    return low, high


def scale_intensity(image: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    return np.clip((np.asarray(image, np.float32) - low) / (high - low), 0.0, 1.0)
