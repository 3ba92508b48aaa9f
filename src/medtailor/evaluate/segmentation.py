"""Dice per class and per case (MONAI's DiceMetric), with a case-bootstrap interval.

For the 3D segmentation search: predictions come from sliding-window inference
(``monai.inferers.sliding_window_inference``) and are compared with the label maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from medtailor.evaluate.stats import percentile_interval


def dice_per_case(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], classes: Sequence[int]
) -> np.ndarray:
    """(cases, classes) Dice of integer label maps; NaN where a class is absent from both."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    labels = [0, *classes]
    values = []
    for prediction, truth in zip(predictions, truths, strict=True):
        remap = np.zeros(max(int(prediction.max()), int(truth.max()), max(labels)) + 1, np.int64)
        remap[list(labels)] = np.arange(len(labels))
        as_tensor = [
            torch.as_tensor(remap[np.asarray(a, np.int64)])[None, None] for a in (prediction, truth)
        ]
        pred, true = (one_hot(t, num_classes=len(labels)) for t in as_tensor)
        values.append(metric(pred, true)[0].numpy())
    return np.stack(values)


def dice_summary(
    per_case: np.ndarray, classes: Sequence[int], replicates: int, level: float, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    n = len(per_case)
    draws = rng.integers(0, n, size=(replicates, n))
    summary = {}
    for column, value in enumerate(classes):
        scores = per_case[:, column]
        boot = np.nanmean(scores[draws], axis=1) if n else np.array([])
        summary[f"dice_{value}"] = float(np.nanmean(scores)) if np.isfinite(scores).any() else None
        summary[f"dice_{value}_ci"] = list(percentile_interval(boot, level))
    return summary
