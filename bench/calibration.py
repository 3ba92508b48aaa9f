"""Calibration of the evaluation's statistics on simulated studies (evaluate/calibration.py).

On the stage's own code path (``compare_models`` and ``auc_with_ci`` as ``evaluate`` calls
them, ``factor_effects_table`` as the grid study calls it), over simulated studies of two
equally good models (a validation and a test split of N patients x 12 correlated
patches each): how often each reported comparison rejects at alpha = 0.05 (calibrated:
about 5%), how often the AUC interval covers the true AUC (calibrated: about 95%), with
the tests and interval the stage does not use for contrast; and how often the grid's
test calls a factor without effect significant, on 2x2 and 2x2x2 grids.
Usage: python bench/calibration.py [--studies 1000] [--replicates 1000]
       [--patients 60 30] [--operating-point MATCH VALUE]
       [--out bench/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medtailor.config import load_params
from medtailor.evaluate.calibration import comparison_rates, grid_rates

REPORTED = ["delong_patient", "sensitivity_matched", "specificity_matched"]
NOT_USED = ["delong_patch", "mcnemar_own_youden"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--patients", type=int, nargs="+", default=[60, 30])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--operating-point",
        nargs=2,
        metavar=("MATCH", "VALUE"),
        help="instead of params.yaml's evaluate.operating_point, e.g. sensitivity 0.9",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/calibration.json"))
    args = parser.parse_args()
    point = load_params(args.params)["evaluate"]["operating_point"]
    if args.operating_point:
        point = {"match": args.operating_point[0], "value": float(args.operating_point[1])}
    result: dict = {"alpha": 0.05, "level": 0.95, "operating_point": point}
    result.update(comparisons=[], grids=[])
    for patients in args.patients:
        started = time.perf_counter()
        rates = comparison_rates(args.studies, 2026 + patients, point, args.replicates, patients)
        rates["seconds"] = round(time.perf_counter() - started, 1)
        result["comparisons"].append(rates)
        print(json.dumps(rates), flush=True)
    for levels in (2, 3):
        started = time.perf_counter()
        rates = grid_rates(args.studies, 2030 + levels, levels, args.replicates)
        rates["seconds"] = round(time.perf_counter() - started, 1)
        result["grids"].append(rates)
        print(json.dumps(rates), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    figure(result, args.out.with_suffix(".png"))


def figure(result: dict, path: Path) -> None:
    from medtailor.figures import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), width_ratios=[3, 1])
    names = REPORTED + NOT_USED
    width = 0.8 / len(result["comparisons"])
    for k, rates in enumerate(result["comparisons"]):
        left.bar(
            [x + k * width for x in range(len(names))],
            [rates[n] for n in names],
            width,
            label=f"{rates['patients']} patients",
        )
    left.axhline(0.05, color="black", lw=0.8, ls="--")
    left.axhspan(0.03, 0.07, color="grey", alpha=0.15)
    left.set_xticks(
        [x + width / 2 for x in range(len(names))],
        [
            "DeLong\nclustered",
            "sensitivity\nmatched",
            "specificity\nmatched",
            "DeLong\npatch",
            "McNemar\nown Youden",
        ],
        fontsize=7,
    )
    where = f"{result['operating_point']['match']} {result['operating_point']['value']}"
    left.set(
        ylabel="rejection rate, equal models", title=f"comparisons (left 3: reported; {where})"
    )
    left.legend(fontsize=7)
    coverage = [
        (r["patients"], r["auc_interval_covers"], r["percentile_interval_covers"])
        for r in result["comparisons"]
    ]
    for k, (_, logit_t, percentile) in enumerate(coverage):
        right.plot([k, k], [percentile, logit_t], color="grey", lw=0.8)
        right.scatter([k], [logit_t], color="C0", label="logit-t (reported)" if k == 0 else None)
        right.scatter([k], [percentile], color="C3", label="percentile" if k == 0 else None)
    right.axhline(0.95, color="black", lw=0.8, ls="--")
    right.set_xticks(range(len(coverage)), [f"{p} pt" for p, _, _ in coverage])
    right.set(ylabel="coverage of the true AUC", title="95% AUC interval", ylim=(0.85, 1.0))
    right.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
