"""Calibration slope, intercept and Brier score against their definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtailor.evaluate.reliability import calibration_summary


def cohort(n: int, temper: float, shift: float, seed: int = 0) -> pd.DataFrame:
    """Labels drawn from true risks; the model reports logit(risk) * temper + shift."""
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0.05, 0.95, n)
    label = (rng.uniform(size=n) < risk).astype(int)
    logit = np.log(risk / (1 - risk)) * temper + shift
    prob = 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"label": label, "prob": prob, "patient_id": np.arange(n) // 4})


def test_a_calibrated_model_has_slope_one_and_intercept_zero():
    summary, curve = calibration_summary(cohort(20000, 1.0, 0.0), 200, 0.95, 0)
    assert summary["slope"] == pytest.approx(1.0, abs=0.08)
    assert summary["intercept"] == pytest.approx(0.0, abs=0.06)
    assert summary["slope_ci"][0] < 1 < summary["slope_ci"][1]
    # The reliability diagram follows the diagonal.
    assert np.abs(curve["observed"] - curve["mean_probability"]).max() < 0.05


def test_overconfident_and_shifted_models_are_told_apart():
    frame = cohort(20000, 2.0, 0.0)
    summary, _ = calibration_summary(frame, 200, 0.95, 0)
    assert summary["slope"] == pytest.approx(0.5, abs=0.05)  # too extreme: below 1
    # The Brier score is its definition; the slope is the coefficient of an unpenalised
    # logistic regression of the label on logit(p) (scikit-learn as the reference).
    from sklearn.linear_model import LogisticRegression

    logit = np.log(frame["prob"] / (1 - frame["prob"])).to_numpy()[:, None]
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit, frame["label"])
    assert summary["slope"] == pytest.approx(reference.coef_[0][0], abs=1e-4)
    brier = float(np.mean((frame["prob"] - frame["label"]) ** 2))
    assert summary["brier"] == pytest.approx(brier, abs=1e-12)
    assert summary["brier_ci"][0] < brier < summary["brier_ci"][1]

    under, _ = calibration_summary(cohort(20000, 1.0, -1.0), 200, 0.95, 0)
    assert under["intercept"] == pytest.approx(1.0, abs=0.08)  # risks underestimated


def test_one_class_leaves_slope_and_intercept_undefined():
    frame = cohort(200, 1.0, 0.0).assign(label=0)
    summary, _ = calibration_summary(frame, 50, 0.95, 0)
    assert "undefined" in summary and "slope" not in summary
    assert summary["brier"] == pytest.approx(float(np.mean(frame["prob"] ** 2)))
