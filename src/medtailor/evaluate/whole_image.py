"""Evaluation of whole-image classifiers (``patches.source: whole_image``).

Per model and per class (multi-class: one-vs-rest) or finding (multi-label, unknowns left
out): AUC on validation and test with a patient-bootstrap CI, a Youden threshold chosen
on validation with test sensitivity and specificity; the mean of the defined per-class
AUCs with a patient-bootstrap CI (every replicate draws patients once for all classes).
Between models, per class: the clustered DeLong test, the patient-bootstrap AUC
difference and the clustered McNemar test, Holm-corrected across the model pairs of that
class. There is no FROC: the samples are images, not detector candidates.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.classification import (
    auc_interval,
    auc_with_ci,
    evaluable,
    operating_point,
)
from medtailor.evaluate.comparisons import compare_models, comparison_table
from medtailor.evaluate.report import calibrated_range_lines
from medtailor.evaluate.stats import (
    bootstrap_metric,
    rarer_class_df,
    weighted_auc,
)
from medtailor.figures import pyplot, save_figure


def wide_targets(frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(labels, probs, patients) of one split: one row per image, one column per class."""
    part = frame[frame["split"] == split]
    labels = part.pivot(index="patch_id", columns="target", values="label")
    probs = part.pivot(index="patch_id", columns="target", values="prob")
    patients = part.groupby("patch_id")["patient_id"].first().loc[labels.index].to_numpy()
    order = list(dict.fromkeys(part["target"]))
    return labels[order], probs[order], patients


def mean_auc_metric(frame: pd.DataFrame, split: str) -> tuple[Any, np.ndarray, int]:
    """(metric, patients, df): ``metric(weights)`` is the mean of the defined per-class AUCs
    under patient-bootstrap weights (replicates x images), NaN where no class is defined;
    ``df`` is the smallest rarer-class degrees of freedom over those classes."""
    labels, probs, patients = wide_targets(frame, split)
    label_values, prob_values = labels.to_numpy(float), probs.to_numpy(float)
    defined = []
    for k in range(label_values.shape[1]):
        known = label_values[:, k] >= 0
        cases = label_values[known, k] == 1
        if not (cases.all() or not cases.any()):
            defined.append((known, cases, k))

    def mean_of_classes(weights: np.ndarray) -> np.ndarray:
        if not defined:
            return np.full(len(weights), np.nan)
        per_class = [
            weighted_auc(cases, prob_values[known, k], weights[:, known])
            for known, cases, k in defined
        ]
        with warnings.catch_warnings():  # a replicate without any defined class is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.vstack(per_class), axis=0)

    df = min((rarer_class_df(cases, patients[known]) for known, cases, _ in defined), default=0)
    return mean_of_classes, patients, df


def mean_auc_with_ci(
    frame: pd.DataFrame, split: str, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """The mean of the defined per-class AUCs, with a logit-t patient-bootstrap interval."""
    metric, patients, df = mean_auc_metric(frame, split)
    if np.isnan(metric(np.ones((1, len(patients))))[0]):
        return {"auc": None, "auc_ci": [None, None], "undefined": "no class with both outcomes"}
    return {
        **auc_interval(metric, patients, df, replicates, level, seed),
        "images": len(patients),
    }


def mean_auc_difference_with_ci(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    split: str,
    replicates: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """Mean AUC of a minus that of b on the same samples, with a paired patient-bootstrap
    CI (each replicate weighs both models' samples alike)."""
    metric_a, patients, _ = mean_auc_metric(frame_a, split)
    metric_b, patients_b, _ = mean_auc_metric(frame_b, split)
    if not np.array_equal(patients, patients_b):
        raise ValueError("the two models were scored on different samples")

    def difference(weights: np.ndarray) -> np.ndarray:
        return metric_a(weights) - metric_b(weights)

    value = float(difference(np.ones((1, len(patients))))[0])
    if np.isnan(value):
        return {"difference": None, "difference_ci": [None, None]}
    interval = bootstrap_metric(difference, patients, replicates, level, seed)
    return {"difference": value, **interval.as_dict("difference")}


def evaluate_whole_image_model(
    name: str, frame: pd.DataFrame, cfg: dict[str, Any], seed: int
) -> dict[str, Any]:
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    result: dict[str, Any] = {"model": name, "classes": {}}
    for target, part in frame.groupby("target", sort=False):
        val, test = part[part["split"] == "val"], part[part["split"] == "test"]
        result["classes"][target] = {
            "val": auc_with_ci(val, replicates, level, seed),
            "test": auc_with_ci(test, replicates, level, seed),
            "test_operating_point": operating_point(val, test, replicates, level, seed),
        }
    for split in ("val", "test"):
        result[f"{split}_mean"] = mean_auc_with_ci(frame, split, replicates, level, seed)
    return result


def compare_whole_image_models(frames: dict[str, pd.DataFrame], cfg: dict, seed: int) -> list[dict]:
    """The pairwise tests of ``compare_models``, one family per class."""
    rows = []
    targets = list(dict.fromkeys(next(iter(frames.values()))["target"])) if frames else []
    for target in targets:
        chosen = {name: frame[frame["target"] == target] for name, frame in frames.items()}
        rows += [{"target": target, **row} for row in compare_models(chosen, cfg, seed)]
    return rows


def roc_curves(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Test ROC curves per model and class (unknowns left out)."""
    from sklearn.metrics import roc_curve

    parts = []
    for name, frame in frames.items():
        test = evaluable(frame[frame["split"] == "test"])
        for target, part in test.groupby("target", sort=False):
            if part["label"].nunique() == 2:
                fpr, tpr, _ = roc_curve(part["label"], part["prob"])
                parts.append(
                    pd.DataFrame({"model": name, "target": target, "fpr": fpr, "tpr": tpr})
                )
    columns = ["model", "target", "fpr", "tpr"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def roc_figure(curves: pd.DataFrame, out_dir: Path) -> str | None:
    if curves.empty:
        return None
    plt = pyplot()
    targets = list(dict.fromkeys(curves["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.4 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for name, part in curves[curves["target"] == target].groupby("model"):
            ax.plot(part["fpr"], part["tpr"], label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_title(str(target))
        ax.set_xlabel("1 - specificity")
    axes[0][0].set_ylabel("sensitivity")
    axes[0][-1].legend(fontsize="small")
    save_figure(fig, out_dir / "figures" / "roc.png")
    return "figures/roc.png"


def _interval(value: Any, ci: Any) -> str:
    if value is None:
        return "undefined"
    low, high = ci or [None, None]
    bounds = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{value:.3f}{bounds}"


def report_lines(
    task: dict[str, Any], results: dict[str, dict], comparisons: list[dict], cfg: dict, figure
) -> list[str]:
    level = round(100 * float(cfg["confidence_level"]))
    # A binary task reports its class 1; the others every class or finding.
    targets = list(next(iter(results.values()))["classes"]) if results else []
    kind = {"binary": "binary", "multiclass": "multi-class (one-vs-rest AUC per class)"}.get(
        task["task"], "multi-label (AUC per finding; unknown targets left out)"
    )
    lines = [
        "# medtailor report: whole-image classification",
        "",
        f"Task: {kind}; classes: {', '.join(map(str, task['classes']))}. Each sample is one image.",
        f"Unit of every interval and test: the patient (images of one patient are "
        f"correlated). {level}% AUC CIs come from {cfg['bootstrap_replicates']} "
        "patient-bootstrap replicates, on the logit scale with a Student t (patients of the "
        "rarer class - 1 degrees of freedom).",
        "",
        *calibrated_range_lines(results),
        "## Test AUC per model",
        "",
        "| model | mean AUC | " + " | ".join(map(str, targets)) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for name, result in sorted(results.items()):
        mean = result["test_mean"]
        cells = [
            _interval(
                result["classes"][t]["test"].get("auc"), result["classes"][t]["test"].get("auc_ci")
            )
            for t in targets
        ]
        lines.append(
            f"| {name} | {_interval(mean.get('auc'), mean.get('auc_ci'))} | "
            + " | ".join(cells)
            + " |"
        )
    if comparisons:
        lines += [
            "",
            "## Pairwise comparisons per class (test split)",
            "",
            *comparison_table(comparisons, cfg),
        ]
    if figure:
        lines += ["", f"![ROC curves per class]({figure})"]
    return lines


def evaluate_whole_images(
    models: dict[str, Path],
    store: Any,
    out_dir: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the whole-image classifiers in ``models``; writes summary.json, report.md,
    roc.csv, per-model JSON and the ROC figure; returns the flat DVC metrics."""
    from medtailor.evaluate import _clean, checkpoint_facts
    from medtailor.evaluate.classification import load_predictions
    from medtailor.train.architecture import load_classifier

    cfg, seed = params["evaluate"], int(params["seed"])
    task = store.task()
    results, frames = {}, {}
    for name, folder in sorted(models.items()):
        frame = load_predictions(folder / "predictions.parquet", store.index)
        _, checkpoint = load_classifier(folder / "best.pt")
        result = evaluate_whole_image_model(name, frame, cfg, seed)
        result.update(checkpoint_facts(checkpoint))
        results[name], frames[name] = result, frame
        (out_dir / "models").mkdir(parents=True, exist_ok=True)
        (out_dir / "models" / f"{name}.json").write_text(
            json.dumps(_clean(result), indent=2) + "\n"
        )
    comparisons = compare_whole_image_models(frames, cfg, seed)
    curves = roc_curves(frames)
    curves.to_csv(out_dir / "roc.csv", index=False)
    figure = roc_figure(curves, out_dir)
    summary = {"task": task, "models": _clean(results), "comparisons": _clean(comparisons)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = report_lines(task, results, comparisons, cfg, figure)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    flat: dict[str, Any] = {}
    for name, result in results.items():
        flat[f"{name}_test_auc"] = result["test_mean"].get("auc")
        for target, per_class in result["classes"].items():
            flat[f"{name}_test_auc_{target}"] = per_class["test"].get("auc")
    return _clean(flat)
