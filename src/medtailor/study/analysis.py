"""Statistics across the configurations of a study."""

from __future__ import annotations

from typing import Any

import numpy as np
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
