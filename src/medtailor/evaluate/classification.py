"""Per-model classification metrics with patient-clustered bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.stats import (
    bootstrap_metric,
    logit_t_interval,
    rarer_class_df,
    threshold_metrics,
    weighted_auc,
    youden_threshold,
)


class EvaluationInputError(ValueError):
    """Predictions that cannot be evaluated honestly."""


def load_predictions(
    path: Path, index: pd.DataFrame, splits: tuple[str, ...] = ("val", "test")
) -> pd.DataFrame:
    """Predictions joined with the patch index, after the checks that prevent silent errors
    (``splits``: those that must be there; an external cohort has its test split only)."""
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
    for split in splits:
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


# The AUC interval was calibrated (bench/calibration.py) down to splits with this many
# patients with a case of the rarer class; below it the report says the interval is
# outside the calibrated range.
CALIBRATED_MIN_PATIENTS = 10


def auc_with_ci(frame: pd.DataFrame, replicates: int, level: float, seed: int) -> dict[str, Any]:
    """AUC with its logit-t patient-bootstrap interval (``stats.logit_t_interval``)."""
    cases = evaluable(frame)
    labels = cases["label"].to_numpy() == 1
    if labels.all() or not labels.any():
        return {"auc": None, "auc_ci": [None, None], "undefined": "single class", "n": len(cases)}
    probs = cases["prob"].to_numpy(float)
    patients = cases["patient_id"].to_numpy()
    return {
        **auc_interval(
            lambda w: weighted_auc(labels, probs, w),
            patients,
            rarer_class_df(labels, patients),
            replicates,
            level,
            seed,
        ),
        "n": len(cases),
        "positives": int(labels.sum()),
        "patients": int(cases["patient_id"].nunique()),
    }


def auc_interval(
    metric: Any, patients: np.ndarray, df: int, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """An AUC-like ``metric(weights)``'s value, its logit-t patient-bootstrap interval with
    ``df`` degrees of freedom, and whether that lies within the calibrated range."""
    value = float(metric(np.ones((1, len(patients))))[0])
    interval = bootstrap_metric(metric, patients, replicates, level, seed)
    low, high = logit_t_interval(value, interval.samples, df, level)
    return {
        "auc": value,
        "auc_ci": [low, high],
        "auc_ci_undefined": interval.undefined,
        "rarer_class_patients": int(df + 1),
        "below_calibrated_range": bool(df + 1 < CALIBRATED_MIN_PATIENTS),
    }


def operating_point(
    val: pd.DataFrame, test: pd.DataFrame, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """Threshold chosen on validation (Youden), metrics on test with cluster-bootstrap CIs."""
    val_cases = evaluable(val)
    val_labels = val_cases["label"].to_numpy() == 1
    if val_labels.all() or not val_labels.any():
        return {"threshold": None, "undefined": "single-class validation split"}
    threshold = youden_threshold(val_labels, val_cases["prob"].to_numpy(float))
    return point_at_threshold(test, threshold, replicates, level, seed)


def point_at_threshold(
    test: pd.DataFrame, threshold: float, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """Sensitivity, specificity, precision, F1 and accuracy on ``test`` at ``threshold``
    (predict positive when prob >= it), with patient-bootstrap CIs."""
    test_cases = evaluable(test)
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
