"""Dice per case and class of integer label maps (MONAI's DiceMetric): the one definition
that segmentation training validates with and ``evaluate`` reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot


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
