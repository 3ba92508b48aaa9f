"""Benchmarks of the evaluation statistics.

1. DeLong (fast, midrank-based) on 1,000,000 predictions of two models, against the naive
   O(m n) kernel on subsamples (timed, and extrapolated to the full size).
2. The patient-clustered bootstrap of the AUC: 1,000 replicates over 100,000 patches.
Usage: python bench/evaluate_bench.py [--out bench/results/evaluate.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medtailor.evaluate.stats import bootstrap_metric, delong_covariance, weighted_auc


def naive_delong(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    positives, negatives = scores[:, labels], scores[:, ~labels]
    kernel = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (
        positives[:, :, None] == negatives[:, None, :]
    )
    v10, v01 = kernel.mean(axis=2), kernel.mean(axis=1)
    return np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/evaluate.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 1_000_000
    labels = rng.random(n) < 0.1
    scores = np.vstack([labels * 0.8 + rng.normal(0, 1, n), labels * 0.6 + rng.normal(0, 1, n)])
    started = time.perf_counter()
    delong_covariance(labels, scores)
    fast = time.perf_counter() - started

    naive = []
    for size in (1_000, 2_000, 4_000):
        started = time.perf_counter()
        naive_delong(labels[:size], scores[:, :size])
        seconds = time.perf_counter() - started
        naive.append({"predictions": size, "seconds": round(seconds, 3)})
    per_pair = naive[-1]["seconds"] / (labels[:4000].sum() * (~labels[:4000]).sum())
    extrapolated = per_pair * labels.sum() * (~labels).sum()

    patches = 100_000
    patients = rng.integers(0, 10_000, patches)
    small_labels = rng.random(patches) < 0.2
    small_scores = small_labels + rng.normal(0, 1, patches)
    started = time.perf_counter()
    interval = bootstrap_metric(
        lambda w: weighted_auc(small_labels, small_scores, w), patients, 1000, 0.95, 0
    )
    bootstrap_seconds = time.perf_counter() - started
    result = {
        "delong_fast_seconds_1M": round(fast, 2),
        "naive_subsamples": naive,
        "naive_extrapolated_seconds_1M": round(float(extrapolated)),
        "speedup": round(float(extrapolated / fast)),
        "bootstrap_1000_replicates_100k_patches_seconds": round(bootstrap_seconds, 2),
        "bootstrap_ci": [round(interval.low, 4), round(interval.high, 4)],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
