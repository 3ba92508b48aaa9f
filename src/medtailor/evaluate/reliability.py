"""Calibration of predicted probabilities: what transfers least across sites.

- Brier score (mean squared difference of probability and label), with its patient-bootstrap
  interval;
- calibration slope and intercept (Cox 1958; Van Calster et al. 2019, J Clin Epidemiol
  "Calibration: the Achilles heel of predictive analytics"): the slope is the coefficient
  of logit(p) in a logistic regression of the label on it (1 is ideal, below 1 the
  probabilities are too extreme); the intercept is calibration-in-the-large, the constant
  of that regression with logit(p) as an offset (0 is ideal, above 0 the model
  underestimates the risk). Fitted with statsmodels' GLM, intervals cluster-robust by
  patient (patches of one patient are correlated);
- the reliability diagram: observed frequency against mean probability in bins of equal
  counts (scikit-learn's ``calibration_curve``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.stats import bootstrap_metric

# Probabilities are clipped before the logit: a probability of exactly 0 or 1 has none.
EPSILON = 1e-6


def weighted_brier(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Brier score for each row of weights (cases drawn by the bootstrap)."""
    weights = np.atleast_2d(weights)
    squared = (probs - labels) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * squared).sum(axis=1) / weights.sum(axis=1)


def logistic_calibration(
    labels: np.ndarray, probs: np.ndarray, clusters: np.ndarray, level: float
) -> dict[str, Any]:
    """Calibration slope and intercept with cluster-robust intervals, or why undefined."""
    import statsmodels.api as sm

    if labels.all() or not labels.any():
        return {"undefined": "one class only"}
    logit = np.log(np.clip(probs, EPSILON, 1 - EPSILON) / np.clip(1 - probs, EPSILON, 1))
    groups = pd.factorize(clusters)[0]
    robust = {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
    alpha = 1 - level
    try:
        slope_fit = sm.GLM(labels, sm.add_constant(logit), family=sm.families.Binomial()).fit(
            **robust
        )
        intercept_fit = sm.GLM(
            labels, np.ones((len(labels), 1)), family=sm.families.Binomial(), offset=logit
        ).fit(**robust)
    except (np.linalg.LinAlgError, ValueError) as exc:  # separation, singular design
        return {"undefined": f"the logistic fit failed: {exc}"}
    slope_ci = slope_fit.conf_int(alpha)[1]
    intercept_ci = intercept_fit.conf_int(alpha)[0]
    return {
        "slope": float(slope_fit.params[1]),
        "slope_ci": [float(slope_ci[0]), float(slope_ci[1])],
        "intercept": float(intercept_fit.params[0]),
        "intercept_ci": [float(intercept_ci[0]), float(intercept_ci[1])],
    }


def calibration_summary(
    frame: pd.DataFrame, replicates: int, level: float, seed: int, bins: int = 10
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Brier score, slope and intercept of the labelled cases of ``frame`` (label, prob,
    patient_id), and the reliability diagram's points."""
    from sklearn.calibration import calibration_curve

    cases = frame[frame["label"] >= 0]
    labels = (cases["label"].to_numpy() == 1).astype(float)
    probs = cases["prob"].to_numpy(float)
    clusters = cases["patient_id"].to_numpy()
    if len(cases) == 0:
        return {"undefined": "no labelled case"}, pd.DataFrame(
            columns=["mean_probability", "observed"]
        )
    brier = float(weighted_brier(labels, probs, np.ones((1, len(labels))))[0])
    interval = bootstrap_metric(
        lambda w: weighted_brier(labels, probs, w), clusters, replicates, level, seed
    )
    summary: dict[str, Any] = {
        "cases": len(cases),
        "patients": int(pd.Series(clusters).nunique()),
        "brier": brier,
        **interval.as_dict("brier"),
        "mean_probability": float(probs.mean()),
        "observed_rate": float(labels.mean()),
    }
    summary.update(logistic_calibration(labels, probs, clusters, level))
    n_bins = max(1, min(bins, len(cases) // 5))
    observed, predicted = calibration_curve(labels, probs, n_bins=n_bins, strategy="quantile")
    return summary, pd.DataFrame({"mean_probability": predicted, "observed": observed})


def reliability_figure(curves: dict[str, pd.DataFrame], path: Any) -> Any:
    """Observed frequency against mean predicted probability, one line per model."""
    from medtailor.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="ideal")
    for name, curve in sorted(curves.items()):
        ax.plot(curve["mean_probability"], curve["observed"], marker="o", label=name)
    ax.set_xlabel("mean predicted probability (bins of equal counts)")
    ax.set_ylabel("observed frequency of a lesion")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Reliability on the external cohort", fontsize=9)
    return save_figure(fig, path)
