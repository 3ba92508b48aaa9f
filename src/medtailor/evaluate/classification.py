"""Per-model classification metrics with patient-clustered bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.stats import (
    bootstrap_metric,
    threshold_metrics,
    weighted_auc,
    youden_threshold,
)


class EvaluationInputError(ValueError):
    """Predictions that cannot be evaluated honestly."""


def load_predictions(path: Path, index: pd.DataFrame) -> pd.DataFrame:
    """Predictions joined with the patch index, after the checks that prevent silent errors."""
    predictions = pd.read_parquet(path)
    missing = {"patch_id", "model", "split", "prob"} - set(predictions.columns)
    if missing:
        raise EvaluationInputError(f"{path}: missing columns {sorted(missing)}")
    nan = int(predictions["prob"].isna().sum())
    if nan:
        raise EvaluationInputError(
            f"{path}: {nan} NaN probabilities (model {predictions['model'].iloc[0]})"
        )
    outside = int((~predictions["prob"].between(0, 1)).sum())
    if outside:
        raise EvaluationInputError(f"{path}: {outside} probabilities outside [0, 1]")
    unknown = sorted(set(predictions["patch_id"]) - set(index["patch_id"]))
    if unknown:
        raise EvaluationInputError(
            f"{path}: {len(unknown)} predictions for unknown patches, e.g. {unknown[:3]}"
        )
    for split in ("val", "test"):
        if not (index["split"] == split).any():
            raise EvaluationInputError(
                f"the patch store has no {split} patches (the detector kept no candidate there): "
                f"nothing to evaluate for {path.parent.name}"
            )
        if not (predictions["split"] == split).any():
            raise EvaluationInputError(f"{path}: no predictions for the {split} split")
    if "target" not in predictions:  # written before the target column existed: binary
        predictions = predictions.assign(target="positive")
    # One target: the index's label is the truth. Several (a class or finding per row):
    # the prediction rows carry theirs, 1/0 or -1 unknown.
    several = predictions["target"].nunique() > 1
    truth = [] if several else ["label"]
    merged = predictions.drop(columns=[c for c in truth if c in predictions]).merge(
        index[
            ["patch_id", "image_id", "study_id", "patient_id", "kind", *truth, "best_iou", "score"]
        ],
        on="patch_id",
    )
    wrong_split = merged["split"] != merged["patch_id"].map(index.set_index("patch_id")["split"])
    if wrong_split.any():
        raise EvaluationInputError(
            f"{path}: {int(wrong_split.sum())} predictions under the wrong split"
        )
    return merged


def evaluable(frame: pd.DataFrame) -> pd.DataFrame:
    """Labelled cases only (ignored candidates, label -1, are left out)."""
    return frame[frame["label"] >= 0]


def auc_with_ci(frame: pd.DataFrame, replicates: int, level: float, seed: int) -> dict[str, Any]:
    cases = evaluable(frame)
    labels = cases["label"].to_numpy() == 1
    if labels.all() or not labels.any():
        return {"auc": None, "auc_ci": [None, None], "undefined": "single class", "n": len(cases)}
    probs = cases["prob"].to_numpy(float)
    auc = float(weighted_auc(labels, probs, np.ones((1, len(cases))))[0])
    interval = bootstrap_metric(
        lambda w: weighted_auc(labels, probs, w),
        cases["patient_id"].to_numpy(),
        replicates,
        level,
        seed,
    )
    return {
        "auc": auc,
        **interval.as_dict("auc"),
        "n": len(cases),
        "positives": int(labels.sum()),
        "patients": int(cases["patient_id"].nunique()),
    }


def operating_point(
    val: pd.DataFrame, test: pd.DataFrame, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """Threshold chosen on validation (Youden), metrics on test with cluster-bootstrap CIs."""
    val_cases, test_cases = evaluable(val), evaluable(test)
    val_labels = val_cases["label"].to_numpy() == 1
    if val_labels.all() or not val_labels.any():
        return {"threshold": None, "undefined": "single-class validation split"}
    threshold = youden_threshold(val_labels, val_cases["prob"].to_numpy(float))
    labels = test_cases["label"].to_numpy() == 1
    predicted = test_cases["prob"].to_numpy(float) >= threshold
    point = {
        k: float(v[0])
        for k, v in threshold_metrics(labels, predicted, np.ones((1, len(labels)))).items()
    }
    result: dict[str, Any] = {"threshold": threshold}
    clusters = test_cases["patient_id"].to_numpy()
    for name in point:
        interval = bootstrap_metric(
            lambda w, name=name: threshold_metrics(labels, predicted, w)[name],
            clusters,
            replicates,
            level,
            seed,
        )
        result[name] = None if np.isnan(point[name]) else point[name]
        result.update(interval.as_dict(name))
    return result
