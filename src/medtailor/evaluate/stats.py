"""Statistics for classifier comparison: DeLong, cluster bootstrap, McNemar, Holm.

DeLong's test for correlated ROC curves uses the fast algorithm of Sun and Xu (2014,
IEEE Signal Processing Letters 21:1389): the structural components come from midranks,
O(n log n) per model instead of the O(m n) pairwise kernel. It reproduces pROC's
``roc.test(method="delong")`` (tested on the aSAH data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _midranks(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values, method="average", axis=-1)


def delong_components(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), and the structural components V10 (k, m) and V01 (k, n).

    ``scores`` is (k, N) for k models on the same N cases; ``labels`` 1 = positive.
    Higher scores mean "more likely positive"; ties count one half.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative cases")
    combined = _midranks(np.concatenate([positives, negatives], axis=1))
    within_pos, within_neg = _midranks(positives), _midranks(negatives)
    auc = (combined[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (combined[:, :m] - within_pos) / n
    v01 = 1.0 - (combined[:, m:] - within_neg) / m
    return auc, v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix (k, k)."""
    auc, v10, v01 = delong_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:  # a covariance needs two cases of each class
        return auc, np.full((len(auc), len(auc)), np.nan)
    s10 = np.atleast_2d(np.cov(v10)) if v10.shape[0] > 1 else np.array([[np.var(v10, ddof=1)]])
    s01 = np.atleast_2d(np.cov(v01)) if v01.shape[0] > 1 else np.array([[np.var(v01, ddof=1)]])
    return auc, s10 / m + s01 / n


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float
    variance: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_test(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95
) -> DeLongResult:
    """Paired two-sided DeLong test of AUC(a) = AUC(b) on the same cases."""
    auc, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    difference = float(auc[0] - auc[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not np.isfinite(variance):  # fewer than two positives or negatives: undefined
        nan = float("nan")
        return DeLongResult(float(auc[0]), float(auc[1]), difference, nan, nan, nan, nan, nan)
    if variance <= 0:
        z, p = (0.0, 1.0) if difference == 0 else (np.sign(difference) * np.inf, 0.0)
    else:
        z = difference / np.sqrt(variance)
        p = float(2 * stats.norm.sf(abs(z)))
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(max(variance, 0.0))
    return DeLongResult(
        float(auc[0]),
        float(auc[1]),
        difference,
        variance,
        float(z),
        p,
        difference - half,
        difference + half,
    )


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney with ties = 1/2) for each row of ``weights`` (replicates x cases).

    Used by the cluster bootstrap: a patient drawn twice weighs its patches twice.
    """
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores, float)[order]
    weights = np.atleast_2d(np.asarray(weights, float))[:, order]
    positive = labels[order]
    w_pos = np.where(positive, weights, 0.0)
    w_neg = np.where(~positive, weights, 0.0)
    # Group equal scores so ties share one rank block.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos_block = np.add.reduceat(w_pos, starts, axis=1)
    neg_block = np.add.reduceat(w_neg, starts, axis=1)
    neg_below = np.cumsum(neg_block, axis=1) - neg_block
    numerator = (pos_block * (neg_below + 0.5 * neg_block)).sum(axis=1)
    denominator = pos_block.sum(axis=1) * neg_block.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def cluster_weights(clusters: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, cases) weights: each replicate draws clusters with replacement and gives
    every case its cluster's draw count."""
    ids, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    if len(ids) == 0:
        return np.zeros((replicates, 0))
    draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=replicates)
    return draws[:, inverse].astype(float)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_metric(
    metric: Callable[[np.ndarray], np.ndarray],
    clusters: np.ndarray,
    replicates: int,
    level: float,
    seed: int,
    chunk: int = 100,
) -> tuple[float, float, np.ndarray]:
    """Percentile CI of ``metric(weights)`` under the cluster (patient) bootstrap.

    ``metric`` maps a (r, cases) weight matrix to r values; drawing in chunks keeps memory
    at chunk x cases.
    """
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, replicates, chunk):
        values.append(metric(cluster_weights(clusters, min(chunk, replicates - start), rng)))
    samples = np.concatenate(values)
    low, high = percentile_interval(samples, level)
    return low, high, samples


def threshold_metrics(
    labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Weighted sensitivity, specificity, precision, F1 and accuracy for each weight row."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    weights = np.atleast_2d(weights)
    tp = (weights * (labels & predicted)).sum(axis=1)
    fn = (weights * (labels & ~predicted)).sum(axis=1)
    tn = (weights * (~labels & ~predicted)).sum(axis=1)
    fp = (weights * (~labels & predicted)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = tp / (tp + fn)
        specificity = tn / (tn + fp)
        precision = tp / (tp + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
        accuracy = (tp + tn) / (tp + tn + fp + fn)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": f1,
        "accuracy": accuracy,
    }


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (predict positive when >=)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def mcnemar_test(
    labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray
) -> dict[str, float]:
    """McNemar's test on the correctness of two thresholded classifiers (statsmodels;
    exact binomial when there are fewer than 25 discordant pairs)."""
    from statsmodels.stats.contingency_tables import mcnemar

    right_a = np.asarray(predicted_a).astype(bool) == np.asarray(labels).astype(bool)
    right_b = np.asarray(predicted_b).astype(bool) == np.asarray(labels).astype(bool)
    table = np.array(
        [
            [np.sum(right_a & right_b), np.sum(right_a & ~right_b)],
            [np.sum(~right_a & right_b), np.sum(~right_a & ~right_b)],
        ]
    )
    exact = table[0, 1] + table[1, 0] < 25
    result = mcnemar(table, exact=bool(exact), correction=True)
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "exact": bool(exact),
        "only_a_right": int(table[0, 1]),
        "only_b_right": int(table[1, 0]),
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' multipletests)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(v) for v in multipletests(p_values, method="holm")[1]]
