"""Pairwise comparisons of models scored on the same cases, and how the reports show them.

Every test has the patient as its unit. The AUCs: the clustered DeLong test (Obuchowski
1997) and a patient-bootstrap interval of the difference. The decisions: both models set
on validation to one matched operating point (``evaluate.operating_point``), then test
sensitivity (positives) and specificity (negatives) compared separately
(``stats.matched_decision_tests``). Each model's own threshold (Youden) would compare two
decision rules at different operating points: with models of equal skill a McNemar test
on them rejected in 18-48% of simulated studies (docs/benchmarks.md, calibration).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.classification import evaluable
from medtailor.evaluate.stats import (
    MATCHED_RATES,
    PairedCases,
    bootstrap_metric,
    delong_test,
    holm,
    matched_decision_tests,
    weighted_auc,
)


def paired_cases(left: pd.DataFrame, right: pd.DataFrame, split: str) -> PairedCases | None:
    """The labelled cases of ``split`` scored by both models (by patch id), or None."""
    left = evaluable(left[left["split"] == split]).set_index("patch_id")
    right = evaluable(right[right["split"] == split]).set_index("patch_id")
    common = left.index.intersection(right.index)
    if len(common) == 0:
        return None
    left, right = left.loc[common], right.loc[common]
    return PairedCases(
        left["label"].to_numpy() == 1,
        np.vstack([left["prob"].to_numpy(float), right["prob"].to_numpy(float)]),
        left["patient_id"].to_numpy(),
    )


def compare_models(frames: dict[str, pd.DataFrame], cfg: dict, seed: int) -> list[dict]:
    """Pairwise tests on the test split (the same patches for every model), with the
    patient as the unit: patches of one patient are correlated, so the AUC comparison is
    the clustered DeLong test (Obuchowski 1997) and the bootstrap of the difference
    resamples patients. The decisions are compared at one matched operating point
    (``evaluate.operating_point``: both models set on validation to the same sensitivity
    or specificity), as separate tests of test sensitivity and specificity whose patient
    bootstrap re-chooses the thresholds on validation (``stats.matched_decision_tests``).
    Holm's correction runs across the model pairs of each test."""
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    point = cfg["operating_point"]
    rows = []
    for a, b in itertools.combinations(sorted(frames), 2):
        test = paired_cases(frames[a], frames[b], "test")
        if test is None or test.labels.all() or not test.labels.any():
            rows.append({"a": a, "b": b, "undefined": "single-class test split"})
            continue
        delong = delong_test(
            test.labels, test.scores[0], test.scores[1], level, clusters=test.patients
        )

        def difference(weights, cases=test):
            return weighted_auc(cases.labels, cases.scores[0], weights) - weighted_auc(
                cases.labels, cases.scores[1], weights
            )

        interval = bootstrap_metric(difference, test.patients, replicates, level, seed)
        row = {
            "a": a,
            "b": b,
            "unit": "patient",
            "patients": len(np.unique(test.patients)),
            "patches": len(test.labels),
            "auc_a": delong.auc_a,
            "auc_b": delong.auc_b,
            "difference": delong.difference,
            "delong_z": delong.z,
            "delong_p": delong.p_value,
            "delong_ci": [delong.ci_low, delong.ci_high],
            "bootstrap_difference_ci": [interval.low, interval.high],
            "bootstrap_difference_ci_undefined": interval.undefined,
        }
        val = paired_cases(frames[a], frames[b], "val")
        if val is not None and val.labels.any() and not val.labels.all():
            decisions = matched_decision_tests(
                val,
                test,
                str(point["match"]),
                float(point["value"]),
                replicates,
                level,
                seed,
            )
            row["operating_point"] = decisions
        rows.append(row)
    holm_by_family(rows, {"delong_p": lambda r: r.get("delong_p")})
    holm_by_family(
        rows,
        {
            f"{rate}_p": lambda r, rate=rate: (r.get("operating_point") or {}).get(f"{rate}_p")
            for rate in MATCHED_RATES
        },
        inside="operating_point",
    )
    return rows


def holm_by_family(rows: list[dict], families: dict[str, Any], inside: str | None = None) -> None:
    """Add ``<key>_holm`` (Holm across the rows where the p-value is defined) for each family
    of p-values, next to the p-value (in ``row[inside]`` when given)."""
    for key, value_of in families.items():
        present = [r for r in rows if value_of(r) is not None and np.isfinite(value_of(r))]
        for row, adjusted in zip(present, holm([value_of(r) for r in present]), strict=True):
            (row[inside] if inside else row)[f"{key}_holm"] = adjusted


def _p(value: Any, adjusted: Any = None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "undefined"
    text = f"{value:.3g}"
    return text if adjusted is None else f"{text} ({adjusted:.3g})"


def _difference(value: Any, ci: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "undefined"
    low, high = ci or [None, None]
    if low is None or high is None or np.isnan(low):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def comparison_method_lines(cfg: dict[str, Any]) -> list[str]:
    """What the comparison table's columns are, for the reports."""
    level = round(100 * float(cfg["confidence_level"]))
    point = cfg["operating_point"]
    other = "specificity" if point["match"] == "sensitivity" else "sensitivity"
    return [
        "Unit: **patient**. DeLong: the clustered DeLong test of AUC(a) = AUC(b) "
        "(Obuchowski 1997; the same cases for both models), with its normal-theory "
        f"interval of the AUC difference; bootstrap: {level}% percentile interval of the "
        f"difference over {cfg['bootstrap_replicates']} replicates resampling patients.",
        f"Decisions, at one matched operating point: each model's threshold is set on "
        f"validation to {point['match']} {point['value']:g}; on test, the difference of "
        f"sensitivities (a - b, on the positives) and of specificities (on the negatives) "
        f"is each tested (two-sided, {level}% CI) by a patient bootstrap over validation "
        f"and test together that re-chooses the thresholds in every replicate. At matched "
        f"{point['match']}, the {other} difference says which model decides better; the "
        f"{point['match']} difference shows how well the validation threshold carried over.",
        "Holm adjusts each test's p-values across all pairs (in brackets).",
    ]


def comparison_table(comparisons: list[dict], cfg: dict[str, Any]) -> list[str]:
    """The pairwise comparisons as a markdown table (a class column when they have one),
    preceded by what each column compares."""
    by_class = any("target" in c for c in comparisons)
    first = "| class " if by_class else ""
    lines = [
        *comparison_method_lines(cfg),
        "",
        f"{first}| a | b | patients (cases) | AUC a - b (DeLong CI) | DeLong p (Holm) | "
        "bootstrap CI of AUC a - b | sensitivity a / b | sensitivity a - b [CI] | p (Holm) | "
        "specificity a / b | specificity a - b [CI] | p (Holm) |",
        ("|---" if by_class else "") + "|---" * 12 + "|",
    ]
    for c in comparisons:
        lead = f"| {c.get('target', '')} " if by_class else ""
        if "undefined" in c:
            lines.append(f"{lead}| {c['a']} | {c['b']} | undefined: {c['undefined']} |" + " |" * 9)
            continue
        b_low, b_high = c["bootstrap_difference_ci"]
        cells = [
            f"{c['patients']} ({c['patches']})",
            _difference(c["difference"], c["delong_ci"]),
            _p(c["delong_p"], c.get("delong_p_holm")),
            "undefined" if b_low is None else f"[{b_low:+.3f}, {b_high:+.3f}]",
        ]
        point = c.get("operating_point")
        for rate in MATCHED_RATES:
            if point is None:
                cells += ["undefined: single-class validation split", "", ""]
                continue
            cells += [
                f"{point[f'{rate}_a']:.3f} / {point[f'{rate}_b']:.3f}",
                _difference(point[f"{rate}_difference"], point[f"{rate}_difference_ci"]),
                _p(point[f"{rate}_p"], point.get(f"{rate}_p_holm")),
            ]
        lines.append(f"{lead}| {c['a']} | {c['b']} | " + " | ".join(cells) + " |")
    return lines
