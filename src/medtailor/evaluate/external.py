"""External validation: frozen models (bundles, ``medtailor.predict.bundle``) scored on a
cohort none of them saw (``medtailor init --external``).

Every patient of the cohort is a test patient. Per model: AUC and AUFROC with
patient-bootstrap CIs, the operating point at the threshold the trained project chose on
its own validation split (the cohort chooses nothing), and calibration
(``evaluate.reliability``). Across models: the same patient-clustered comparisons as the
trained project's report. The Evidence table has the cohort's row only: warnings about
training or validation do not apply to an external cohort.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medtailor.evaluate import _clean, detection_context, evaluate_model, roc_table
from medtailor.evaluate.classification import (
    EvaluationInputError,
    load_predictions,
    point_at_threshold,
)
from medtailor.evaluate.comparisons import (
    _difference,
    _p,
    compare_models,
    comparison_method_lines,
)
from medtailor.evaluate.reliability import calibration_summary, reliability_figure
from medtailor.patches.store import PatchStore
from medtailor.predict.bundle import read_bundle
from medtailor.split import manifest_with_split
from medtailor.tables import read_boxes


def evaluate_external(
    scores_dir: Path,
    bundles_dir: Path,
    store_dir: Path,
    resample_dir: Path,
    split_csv: Path,
    out_dir: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Score every model of ``external.models`` (predictions in ``scores_dir/<model>``,
    bundles in ``bundles_dir/<model>``); write summary.json, the curves and report.md."""
    cfg, seed = params["evaluate"], int(params["seed"])
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    store = PatchStore(store_dir)
    if not ((store.index["split"] == "test") & (store.index["kind"] == "radiograph")).any():
        raise EvaluationInputError(
            f"{store_dir}: the detector kept no radiograph candidate in the cohort: nothing "
            "to evaluate"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_with_split(resample_dir, split_csv)
    truths = read_boxes(resample_dir / "boxes.parquet")
    detection, evidence, detector_froc, detector_curve = detection_context(
        manifest, truths, store.index, params, ("test",)
    )
    results, frames, curves, reliability = {}, {}, [detector_curve.assign(model="detector")], {}
    for name in params["external"]["models"]:
        frame = load_predictions(scores_dir / name / "predictions.parquet", store.index, ("test",))
        record, _, thresholds = read_bundle(bundles_dir / name)
        threshold = next(iter(thresholds.values()), None)
        test = frame[frame["split"] == "test"]
        # The trained project's evaluation, on a cohort with no validation split...
        result, tables = evaluate_model(name, frame, detection, cfg, seed)
        del result["val"]
        result["trained_validation_auc"] = record.get("validation_auc")
        # ...and its decisions at the threshold the trained project chose.
        result["test_operating_point"] = (
            point_at_threshold(test, threshold, replicates, level, seed)
            if threshold is not None
            else {"threshold": None, "undefined": "the trained project chose no threshold"}
        )
        result["calibration"], reliability[name] = calibration_summary(
            test, replicates, level, seed
        )
        results[name], frames[name] = result, frame
        curves.append(tables["froc"])
    comparisons = compare_models(frames, cfg, seed)
    summary = {
        "external": dict(params["external"]),
        "cohort": {
            "images": int((manifest["kind"] == "radiograph").sum()),
            "patients": int(manifest["patient_id"].nunique()),
            "lesions": len(detection["lesions"]),
        },
        "evidence": _clean(evidence),
        "models": _clean(results),
        "detector_froc": _clean(detector_froc),
        "comparisons": _clean(comparisons),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pd.concat(curves, ignore_index=True).to_csv(out_dir / "froc.csv", index=False)
    roc_table(frames).to_csv(out_dir / "roc.csv", index=False)
    pd.concat(
        [curve.assign(model=name) for name, curve in reliability.items()], ignore_index=True
    ).to_csv(out_dir / "reliability.csv", index=False)
    (out_dir / "figures").mkdir(exist_ok=True)
    reliability_figure(reliability, out_dir / "figures" / "reliability.png")
    write_external_report(summary, out_dir, params)
    flat: dict[str, Any] = {
        "detector_aufroc": detector_froc["aufroc"],
        "evidence_warnings": len(evidence["warnings"]),
    }
    for name, result in results.items():
        flat[f"{name}_test_auc"] = result["test"].get("auc")
        flat[f"{name}_test_aufroc"] = result["test_froc"].get("aufroc")
        flat[f"{name}_brier"] = result["calibration"].get("brier")
        flat[f"{name}_calibration_slope"] = result["calibration"].get("slope")
    return _clean(flat)


def _value(value: Any, ci: Any = None, digits: int = 3) -> str:
    if value is None:
        return "undefined"
    text = f"{value:.{digits}f}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def auc_comparison_lines(comparisons: list[dict], cfg: dict[str, Any]) -> list[str]:
    """The AUC comparisons (the decision tests match thresholds on a validation split,
    which an external cohort does not have)."""
    if not comparisons:
        return ["One model: nothing to compare."]
    lines = [
        comparison_method_lines(cfg)[0],
        "Holm adjusts the DeLong p-values across all pairs (in brackets).",
        "",
        "| a | b | patients (cases) | AUC a - b (DeLong CI) | DeLong p (Holm) | "
        "bootstrap CI of AUC a - b |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        if "undefined" in c:
            lines.append(f"| {c['a']} | {c['b']} | undefined: {c['undefined']} | | | |")
            continue
        low, high = c["bootstrap_difference_ci"]
        lines.append(
            f"| {c['a']} | {c['b']} | {c['patients']} ({c['patches']}) | "
            f"{_difference(c['difference'], c['delong_ci'])} | "
            f"{_p(c['delong_p'], c.get('delong_p_holm'))} | "
            + ("undefined" if low is None else f"[{low:+.3f}, {high:+.3f}]")
            + " |"
        )
    return lines


def write_external_report(summary: dict[str, Any], out_dir: Path, params: dict[str, Any]) -> Path:
    cfg = params["evaluate"]
    level = f"{float(cfg['confidence_level']):.0%}"
    external, cohort = summary["external"], summary["cohort"]
    lines = [
        "# External validation",
        "",
        f"Frozen models of the project `{Path(external['project']).name}` (commit "
        f"`{external['commit'][:12] or 'unknown'}`, params hash `{external['params_hash']}`), "
        f"scored on the cohort `{Path(str(params['ingest']['input'])).name}`: "
        f"{cohort['images']} radiographs of {cohort['patients']} patients, "
        f"{cohort['lesions']} lesions. No model was trained or tuned on it: each threshold is "
        "the one its project chose on its own validation split. Intervals: "
        f"{level}, patient bootstrap ({cfg['bootstrap_replicates']} replicates) unless "
        "stated.",
        "",
        "## Evidence",
        "",
        "| patients | patches | positive patches | patients with positives | lesions | "
        "detector recall |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["evidence"]["table"]:
        recall = row["detector_recall"]
        lines.append(
            f"| {row['patients']} | {row['patches']} | {row['positive_patches']} | "
            f"{row['patients_with_positives']} | {row['lesions']} | "
            f"{'n/a' if recall is None else f'{recall:.0%}'} |"
        )
    lines += [""] + [f"- **Warning:** {w}" for w in summary["evidence"]["warnings"]]
    lines += [
        "",
        "## Discrimination",
        "",
        f"| model | AUC [{level} CI] | AUFROC [{level} CI] | AUC on its own validation |",
        "|---|---|---|---|",
    ]
    for name, r in summary["models"].items():
        lines.append(
            f"| {name} | {_value(r['test'].get('auc'), r['test'].get('auc_ci'))} | "
            f"{_value(r['test_froc'].get('aufroc'), r['test_froc'].get('aufroc_ci'))} | "
            f"{_value(r.get('trained_validation_auc'))} |"
        )
    lines.append(
        f"\nThe detector alone: AUFROC "
        f"{_value(summary['detector_froc'].get('aufroc'), summary['detector_froc'].get('aufroc_ci'))}."
    )
    lines += [
        "",
        "## Operating point (the trained project's threshold)",
        "",
        "| model | threshold | sensitivity | specificity | precision |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["models"].items():
        p = r["test_operating_point"]
        lines.append(
            f"| {name} | {_value(p.get('threshold'))} | "
            f"{_value(p.get('sensitivity'), p.get('sensitivity_ci'))} | "
            f"{_value(p.get('specificity'), p.get('specificity_ci'))} | "
            f"{_value(p.get('precision'), p.get('precision_ci'))} |"
        )
    lines += [
        "",
        "## Calibration",
        "",
        "Brier score (0 is perfect; patient bootstrap), calibration slope (1 is ideal; below 1 "
        "the probabilities are too extreme, above 1 too timid) and intercept (calibration-in-the-large, 0 is "
        "ideal; above 0 the model underestimates the risk), from logistic regressions on "
        "logit(p) with patient-clustered intervals.",
        "",
        "| model | Brier | slope | intercept | mean probability | observed rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["models"].items():
        c = r["calibration"]
        lines.append(
            f"| {name} | {_value(c.get('brier'), c.get('brier_ci'))} | "
            f"{_value(c.get('slope'), c.get('slope_ci'), 2)} | "
            f"{_value(c.get('intercept'), c.get('intercept_ci'), 2)} | "
            f"{_value(c.get('mean_probability'))} | {_value(c.get('observed_rate'))} |"
        )
    lines += ["", "![reliability](figures/reliability.png)", "", "## Comparisons", ""]
    lines += auc_comparison_lines(summary["comparisons"], cfg)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
