"""Statistics across the configurations of a study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medtailor.evaluate.stats import percentile_interval


def spearman_with_ci(
    x: np.ndarray, y: np.ndarray, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """Spearman's rho with scipy's p-value and a percentile bootstrap CI that resamples the
    (x, y) pairs (the configurations); undefined below 3 pairs or without variation."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return {
            "n": len(x),
            "undefined": f"needs 3 or more pairs with distinct values (have {len(x)})",
        }
    rho, p = stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(replicates, len(x)))
    samples = np.full(replicates, np.nan)
    for r, rows in enumerate(draws):
        if len(np.unique(x[rows])) > 1 and len(np.unique(y[rows])) > 1:
            samples[r] = stats.spearmanr(x[rows], y[rows])[0]
    low, high = percentile_interval(samples, level)
    return {
        "n": len(x),
        "rho": float(rho),
        "p_value": float(p),
        "rho_ci": [low, high],
        "rho_ci_undefined": int(np.isnan(samples).sum()),
    }


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of
    the same n examples, (n, p) and (n, q), through their n x n Gram matrices (so layers
    of any width cost the same): 1 for identical representations, invariant to orthogonal
    transforms and isotropic scaling of either."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = len(x)
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    gram_x, gram_y = centre @ (x @ x.T) @ centre, centre @ (y @ y.T) @ centre
    denominator = np.linalg.norm(gram_x) * np.linalg.norm(gram_y)
    return float(np.sum(gram_x * gram_y) / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class Scored:
    """A trained configuration as every study's analysis reads it."""

    frame: pd.DataFrame  # predictions joined with the patch index
    facts: dict[str, Any]  # parameters, MACs, configuration (evaluate.checkpoint_facts)
    test: dict[str, Any]  # mean test AUC with its patient-bootstrap CI


def score_configurations(
    folders: dict[str, Path], store_dir: Path, params: dict[str, Any]
) -> dict[str, Scored]:
    """Predictions, checkpoint facts and test AUC of every trained configuration."""
    import torch

    from medtailor.evaluate import checkpoint_facts
    from medtailor.evaluate.classification import load_predictions
    from medtailor.evaluate.whole_image import mean_auc_with_ci
    from medtailor.patches.store import PatchStore

    cfg, seed = params["evaluate"], int(params["seed"])
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    store = PatchStore(store_dir)
    scored = {}
    for name, folder in folders.items():
        frame = load_predictions(folder / "predictions.parquet", store.index)
        state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
        test = mean_auc_with_ci(frame, "test", replicates, level, seed)
        scored[name] = Scored(frame, checkpoint_facts(state), test)
    return scored


def paired_auc_covariance(
    frames: dict[str, pd.DataFrame], replicates: int, seed: int, split: str = "test"
) -> np.ndarray:
    """Covariance (configurations x configurations, in ``frames`` order) of the
    configurations' mean AUCs on ``split`` under one patient bootstrap: every replicate
    weighs all configurations' samples alike, so AUCs measured on the same patients keep
    their correlation. NaN rows and columns for a configuration without a defined AUC."""
    from medtailor.evaluate.stats import cluster_weights
    from medtailor.evaluate.whole_image import mean_auc_metric

    metrics, patients = [], None
    for name, frame in frames.items():
        metric, own, _ = mean_auc_metric(frame, split)
        if patients is not None and not np.array_equal(own, patients):
            raise ValueError(f"{name}: scored on other {split} samples than the others")
        metrics.append(metric)
        patients = own
    if patients is None:
        return np.zeros((0, 0))
    weights = cluster_weights(patients, replicates, np.random.default_rng(seed))
    values = np.column_stack([metric(weights) for metric in metrics])
    finite = np.isfinite(values).all(axis=0)
    covariance = np.full((len(metrics), len(metrics)), np.nan)
    rows = np.isfinite(values[:, finite]).all(axis=1)
    if finite.any() and rows.sum() > 1:
        covariance[np.ix_(finite, finite)] = np.atleast_2d(np.cov(values[rows][:, finite].T))
    return covariance


def auc_columns(test: dict[str, Any]) -> dict[str, Any]:
    """The table columns of a test AUC with its CI."""
    low, high = test["auc_ci"]
    return {"test_auc": test["auc"], "test_auc_ci_low": low, "test_auc_ci_high": high}


def write_study_report(
    out_dir: Path, table: pd.DataFrame, summary: dict[str, Any], lines: list[str]
) -> dict[str, Any]:
    """table.csv, summary.json and report.md of a study; returns its flat DVC metrics
    (test AUC of every trained configuration)."""
    from medtailor.evaluate import _clean

    table.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    trained = table[table["status"] == "trained"] if "status" in table else table
    return _clean({f"{r.configuration}_test_auc": r.test_auc for r in trained.itertuples()})


def auc_vs_parameters_figure(table: pd.DataFrame, out_dir: Path, annotate: bool) -> str:
    """Test AUC (with CIs) against parameters, one series per init."""
    from medtailor.figures import log_parameter_axis, pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for init, part in table.groupby("init"):
        with_interval(ax, part["parameters"] / 1e6, part, "test_auc", label=init)
        if annotate:
            for row in part.itertuples():
                ax.annotate(row.configuration, (row.parameters / 1e6, row.test_auc), fontsize=6)
    log_parameter_axis(ax, table["parameters"] / 1e6)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize="small")
    save_figure(fig, out_dir / "figures" / "auc_vs_parameters.png")
    return "figures/auc_vs_parameters.png"


def with_interval(ax: Any, x: pd.Series, part: pd.DataFrame, column: str, **style: Any) -> None:
    """Points of ``column`` with error bars from its ``_ci_low`` and ``_ci_high`` columns."""
    value = part[column]
    errors = np.vstack([value - part[f"{column}_ci_low"], part[f"{column}_ci_high"] - value])
    ax.errorbar(x, value, yerr=errors, fmt="o", capsize=3, **style)
