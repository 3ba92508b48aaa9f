"""Calibration of the model comparisons: how often each test rejects "equal AUC" (DeLong)
or "equal accuracy" (McNemar) at alpha = 0.05 when the two models are equally good, on
simulated test sets of 60 patients x 12 correlated patches (evaluate/calibration.py).
A calibrated test rejects in about 5% of them.
Usage: python bench/calibration.py [--datasets 2000] [--out bench/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medtailor.evaluate.calibration import rejection_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/calibration.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    result = {
        "alpha": 0.05,
        **rejection_rates(args.datasets, seed=2026),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["delong_patient", "delong_patch", "mcnemar_patient", "mcnemar_patch"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(range(4), [result[n] for n in names], color=["C0", "C3", "C0", "C3"])
    ax.axhline(0.05, color="black", lw=0.8, ls="--", label="nominal 0.05")
    ax.set_xticks(
        range(4), ["DeLong\npatient", "DeLong\npatch", "McNemar\npatient", "McNemar\npatch"]
    )
    ax.set(ylabel="rejection rate, equal models", title=f"{result['datasets']} simulated test sets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
