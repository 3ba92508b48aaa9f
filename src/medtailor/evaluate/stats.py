"""Statistics for classifier comparison: DeLong, cluster bootstrap, intervals that hold their
level with few patients, decision-level tests at a matched operating point, McNemar, Holm.

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


def delong_covariance(
    labels: np.ndarray, scores: np.ndarray, clusters: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance matrix (k, k), DeLong's or, with ``clusters``, Obuchowski's.

    With ``clusters`` (one id per case, e.g. the patient), the structural components are
    summed per cluster and the covariance is the clustered estimator of Obuchowski (1997,
    Biometrics 53:567): with I clusters, I10 of them with a positive and I01 with a negative,
    M positives and N negatives, m_i and n_i per cluster,
    S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i A)(V10_i - m_i B)', likewise S01, and
    S11 = I / (I - 1) sum_i (V10_i - m_i A)(V01_i - n_i B)'; then
    cov = S10 / M + S01 / N + (S11 + S11') / (M N). When every cluster holds one case this is
    exactly DeLong's covariance (S11 vanishes; S10 and S01 become the sample covariances).
    """
    auc, v10, v01 = delong_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    if clusters is None:
        if m < 2 or n < 2:  # a covariance needs two cases of each class
            return auc, np.full((len(auc), len(auc)), np.nan)
        return auc, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    labels = np.asarray(labels).astype(bool)
    ids, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = len(ids)
    pos_cluster, neg_cluster = inverse[labels], inverse[~labels]
    per_pos = np.bincount(pos_cluster, minlength=n_clusters)
    per_neg = np.bincount(neg_cluster, minlength=n_clusters)
    i10, i01 = int((per_pos > 0).sum()), int((per_neg > 0).sum())
    if i10 < 2 or i01 < 2:  # a covariance needs two clusters with each class
        return auc, np.full((len(auc), len(auc)), np.nan)
    # (k, I) per-cluster sums of the structural components, centred on m_i * AUC.
    x = np.stack([np.bincount(pos_cluster, row, n_clusters) for row in v10])
    y = np.stack([np.bincount(neg_cluster, row, n_clusters) for row in v01])
    x -= auc[:, None] * per_pos[None, :]
    y -= auc[:, None] * per_neg[None, :]
    s10 = i10 / ((i10 - 1) * m) * (x @ x.T)
    s01 = i01 / ((i01 - 1) * n) * (y @ y.T)
    s11 = n_clusters / (n_clusters - 1) * (x @ y.T)
    return auc, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


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
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> DeLongResult:
    """Paired two-sided test of AUC(a) = AUC(b) on the same cases: DeLong's (normal
    reference, as pROC), or with ``clusters`` the clustered (Obuchowski 1997) version for
    correlated cases (Student t reference on the rarer class's patients - 1)."""
    auc, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]), clusters)
    difference = float(auc[0] - auc[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not np.isfinite(variance):  # too few positives or negatives: undefined
        nan = float("nan")
        return DeLongResult(float(auc[0]), float(auc[1]), difference, nan, nan, nan, nan, nan)
    # Clustered: the variance is estimated from the patients of the rarer class, so the
    # reference is a Student t on their number - 1 (a normal one rejected equal models
    # about 6% of the time at alpha 0.05 with 60 patients; the t, 5.4%: docs/benchmarks.md).
    reference = (
        stats.norm if clusters is None else stats.t(max(1, rarer_class_df(labels, clusters)))
    )
    if variance <= 0:
        z, p = (0.0, 1.0) if difference == 0 else (np.sign(difference) * np.inf, 0.0)
    else:
        z = difference / np.sqrt(variance)
        p = float(2 * reference.sf(abs(z)))
    half = reference.ppf(0.5 + level / 2) * np.sqrt(max(variance, 0.0))
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


def logit_t_interval(
    estimate: float, samples: np.ndarray, df: int, level: float
) -> tuple[float, float]:
    """Interval for a proportion-like statistic in (0, 1) (an AUC): on the logit scale,
    ``logit(estimate) -/+ t_{df} * SD(logit(samples))``, back-transformed.

    The percentile interval of a patient bootstrap is too narrow with few patients (it
    covered the true AUC 92.9% of the time at a nominal 95% with 60 patients and 30:
    docs/benchmarks.md; this one 94.2% and 96.1%); the logit keeps the interval inside
    (0, 1) and the Student
    t with ``df`` (patients of the rarer class - 1) pays for estimating the spread from so
    few independent units. With an estimate of 0 or 1, or no spread, the percentile
    interval is returned (the logit is unbounded there); NaNs when ``df`` < 1.
    """
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if df < 1 or len(samples) < 2 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    inside = samples[(samples > 0) & (samples < 1)]
    if not 0 < estimate < 1 or len(inside) < 0.9 * len(samples):
        return percentile_interval(samples, level)
    spread = float(np.std(np.log(inside / (1 - inside)), ddof=1))
    if spread == 0:
        return percentile_interval(samples, level)
    centre = float(np.log(estimate / (1 - estimate)))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * spread
    return float(1 / (1 + np.exp(half - centre))), float(1 / (1 + np.exp(-centre - half)))


def rarer_class_df(labels: np.ndarray, clusters: np.ndarray) -> int:
    """Degrees of freedom of an AUC's spread: the patients with a case of the rarer class
    (positives or negatives), minus one."""
    labels = np.asarray(labels).astype(bool)
    clusters = np.asarray(clusters)
    with_positive = len(np.unique(clusters[labels]))
    with_negative = len(np.unique(clusters[~labels]))
    return min(with_positive, with_negative) - 1


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile interval and the replicates behind it; ``undefined`` counts replicates
    where the metric was undefined (e.g. a draw with no positive), left out of the interval."""

    low: float
    high: float
    samples: np.ndarray

    @property
    def undefined(self) -> int:
        return int(np.sum(~np.isfinite(self.samples)))

    def as_dict(self, prefix: str) -> dict[str, object]:
        return {f"{prefix}_ci": [self.low, self.high], f"{prefix}_ci_undefined": self.undefined}


def bootstrap_metric(
    metric: Callable[[np.ndarray], np.ndarray],
    clusters: np.ndarray,
    replicates: int,
    level: float,
    seed: int,
    chunk: int = 100,
) -> BootstrapInterval:
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
    return BootstrapInterval(low, high, samples)


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
    labels: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    clusters: np.ndarray | None = None,
) -> dict[str, float]:
    """McNemar's test on the correctness of two thresholded classifiers.

    Without ``clusters``: statsmodels' McNemar (exact binomial below 25 discordant pairs).
    With ``clusters``: Durkalski et al. (2003, Stat Med 22:2417) for clustered matched pairs,
    X2 = (sum_k (b_k - c_k))^2 / sum_k (b_k - c_k)^2 on 1 degree of freedom, b_k and c_k the
    discordant pairs of cluster k; with one pair per cluster it is McNemar's uncorrected X2.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    truth = np.asarray(labels).astype(bool)
    right_a = np.asarray(predicted_a).astype(bool) == truth
    right_b = np.asarray(predicted_b).astype(bool) == truth
    only_a, only_b = right_a & ~right_b, ~right_a & right_b
    counts = {"only_a_right": int(only_a.sum()), "only_b_right": int(only_b.sum())}
    if clusters is not None:
        _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
        per_cluster = np.bincount(inverse, only_a.astype(float)) - np.bincount(
            inverse, only_b.astype(float)
        )
        denominator = float(np.sum(per_cluster**2))
        if denominator == 0:  # no discordant cluster: no evidence either way
            return {"statistic": 0.0, "p_value": 1.0, "exact": False, **counts}
        statistic = float(per_cluster.sum() ** 2 / denominator)
        return {
            "statistic": statistic,
            "p_value": float(stats.chi2.sf(statistic, 1)),
            "exact": False,
            **counts,
        }
    table = np.array(
        [
            [np.sum(right_a & right_b), counts["only_a_right"]],
            [counts["only_b_right"], np.sum(~right_a & ~right_b)],
        ]
    )
    exact = table[0, 1] + table[1, 0] < 25
    result = mcnemar(table, exact=bool(exact), correction=True)
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "exact": bool(exact),
        **counts,
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' multipletests)."""
    from statsmodels.stats.multitest import multipletests

    if len(p_values) < 2:  # nothing to adjust (and multipletests costs a gc.collect())
        return [float(v) for v in p_values]
    return [float(v) for v in multipletests(p_values, method="holm")[1]]


MATCHED_RATES = ("sensitivity", "specificity")


def matched_thresholds(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, match: str, value: float
) -> np.ndarray:
    """Per weight row, the threshold at which the (weighted) ``match`` rate first reaches
    ``value`` (predict positive when score >= threshold): for sensitivity the highest
    threshold keeping at least that share of positives, for specificity the lowest one
    keeping at least that share of negatives below it. NaN where the class is absent."""
    if match not in MATCHED_RATES:
        raise ValueError(f"operating point: cannot match {match!r}; use one of {MATCHED_RATES}")
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, float)
    weights = np.atleast_2d(np.asarray(weights, float))
    chosen = labels if match == "sensitivity" else ~labels
    own, own_weights = scores[chosen], weights[:, chosen]
    if own.size == 0:
        return np.full(len(weights), np.nan)
    # Positives from the highest score down, negatives from the lowest up.
    order = np.argsort(-own if match == "sensitivity" else own, kind="stable")
    cumulative = np.cumsum(own_weights[:, order], axis=1)
    total = cumulative[:, -1:]
    first = np.argmax(cumulative >= (value - 1e-12) * total, axis=1)
    at = own[order][first]
    thresholds = at if match == "sensitivity" else np.nextafter(at, np.inf)
    return np.where(total[:, 0] > 0, thresholds, np.nan)


def rates_at(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """Weighted sensitivity and specificity per weight row, each at its row's threshold."""
    labels = np.asarray(labels).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, float))
    predicted = np.asarray(scores, float)[None, :] >= np.asarray(thresholds, float)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (weights * (predicted & labels)).sum(axis=1) / (weights * labels).sum(axis=1)
        specificity = (weights * (~predicted & ~labels)).sum(axis=1) / (weights * ~labels).sum(
            axis=1
        )
    return {"sensitivity": sensitivity, "specificity": specificity}


@dataclass(frozen=True)
class PairedCases:
    """Two models' scores (2, cases) on the same cases of one split, with the truth and the
    patient of every case."""

    labels: np.ndarray
    scores: np.ndarray
    patients: np.ndarray


def matched_decision_tests(
    val: PairedCases,
    test: PairedCases,
    match: str,
    value: float,
    replicates: int,
    level: float,
    seed: int,
) -> dict[str, object]:
    """Two models compared as decision rules at one matched operating point.

    Each model's threshold is set on validation to the same ``match`` rate (sensitivity or
    specificity ``value``); on test, the sensitivity (on the positives) and the
    specificity (on the negatives) of a and b are compared separately, each difference
    a - b with its interval and a two-sided p-value. The patient bootstrap resamples the
    validation and the test patients together and re-chooses the thresholds in every
    replicate, so the noise of choosing them on validation is part of the test; the
    statistic is the difference over its bootstrap SD, against a normal (bench/calibration.py:
    at matched specificity both tests reject equal models 4-5% of the time at alpha 0.05
    with 30 or 60 patients; matching sensitivity 0.9 on the few positive patients makes the
    sensitivity test conservative, 2-3%).
    """
    rng = np.random.default_rng(seed)
    val_weights = cluster_weights(val.patients, replicates, rng)
    test_weights = cluster_weights(test.patients, replicates, rng)
    ones_val, ones_test = np.ones((1, len(val.labels))), np.ones((1, len(test.labels)))
    result: dict[str, object] = {"match": match, "value": value}
    point, boot = [], []
    for k, side in enumerate("ab"):
        threshold = matched_thresholds(val.labels, val.scores[k], ones_val, match, value)
        replicate_thresholds = matched_thresholds(
            val.labels, val.scores[k], val_weights, match, value
        )
        point.append(rates_at(test.labels, test.scores[k], ones_test, threshold))
        boot.append(rates_at(test.labels, test.scores[k], test_weights, replicate_thresholds))
        result[f"threshold_{side}"] = float(threshold[0])
    labels = np.asarray(test.labels).astype(bool)
    quantile = float(stats.norm.ppf(0.5 + level / 2))
    for rate in MATCHED_RATES:
        estimate = float(point[0][rate][0] - point[1][rate][0])
        samples = boot[0][rate] - boot[1][rate]
        samples = samples[np.isfinite(samples)]
        result[f"{rate}_a"] = float(point[0][rate][0])
        result[f"{rate}_b"] = float(point[1][rate][0])
        result[f"{rate}_difference"] = estimate
        cases = labels if rate == "sensitivity" else ~labels
        if len(np.unique(np.asarray(test.patients)[cases])) < 2 or len(samples) < 2:
            result[f"{rate}_p"] = float("nan")
            result[f"{rate}_difference_ci"] = [float("nan"), float("nan")]
            continue
        spread = float(np.std(samples, ddof=1))
        if spread == 0:
            p_value = 1.0 if estimate == 0 else float("nan")
        else:
            p_value = float(2 * stats.norm.sf(abs(estimate) / spread))
        result[f"{rate}_p"] = p_value
        result[f"{rate}_difference_ci"] = [
            estimate - quantile * spread,
            estimate + quantile * spread,
        ]
    return result
