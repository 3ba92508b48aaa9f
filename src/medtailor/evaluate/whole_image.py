"""Evaluation of whole-image classifiers (``patches.source: whole_image``).

Per model and per class (multi-class: one-vs-rest) or finding (multi-label, unknowns left
out): AUC on validation and test with a patient-bootstrap CI, a Youden threshold chosen
on validation with test sensitivity, specificity and accuracy; the mean of the defined
per-class AUCs with a patient-bootstrap CI (every replicate draws patients once for all
classes). Multi-class models also get argmax accuracy, balanced accuracy and the confusion
matrix (what the literature on class-folder datasets reports). Between models, per class:
the tests of ``comparisons.compare_models`` (clustered DeLong, bootstrap AUC difference,
sensitivity and specificity at one matched operating point), Holm-corrected across the
model pairs of that class; pairs that differ only in their initialisation get the
pre-training boost in mean AUC. The report opens with the evidence (images, patients and
images of each class per split) and ends with activation maps of each class. There is
no FROC: the samples are images, not detector candidates.
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
from medtailor.split import SPLITS


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


def truth_table(index: pd.DataFrame, task: dict[str, Any]) -> pd.DataFrame:
    """Every sample's truth per target, one row each: split, patient, target and label
    (1, 0 or -1 unknown), as the classifiers' predictions code them."""
    parts = []
    for k, name in enumerate(task["classes"]):
        if task["task"] == "multilabel":
            label = index[f"target_{k}"]
        elif task["task"] == "multiclass":
            label = (index["label"] == k).astype(int)
        elif name == "1":  # binary: the positive class is the one target
            label = index["label"]
        else:
            continue
        parts.append(index[["split", "patient_id"]].assign(target=name, label=label.to_numpy()))
    return pd.concat(parts, ignore_index=True)


def whole_image_evidence(
    index: pd.DataFrame, task: dict[str, Any], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Per split: images and patients; per target: positive images and patients with one;
    with the warnings of ``evaluate.evidence`` (positive images count as positive patches)."""
    truth = truth_table(index, task)
    rows, warnings_ = [], []
    min_images = int(cfg["min_positive_patches"])
    min_patients = int(cfg["min_patients_with_positives"])
    for split in SPLITS:
        samples = index[index["split"] == split]
        row: dict[str, Any] = {
            "split": split,
            "images": len(samples),
            "patients": samples["patient_id"].nunique(),
            "classes": {},
        }
        for target, part in truth[truth["split"] == split].groupby("target", sort=False):
            positive = part[part["label"] == 1]
            row["classes"][target] = {
                "positive_images": len(positive),
                "patients_with_positives": positive["patient_id"].nunique(),
            }
            if len(positive) < min_images:
                warnings_.append(
                    f"{split}: {len(positive)} image(s) of {target}, fewer than {min_images} "
                    "(evaluate.evidence.min_positive_patches)"
                )
            if positive["patient_id"].nunique() < min_patients:
                warnings_.append(
                    f"{split}: {positive['patient_id'].nunique()} patient(s) with an image of "
                    f"{target}, fewer than {min_patients} "
                    "(evaluate.evidence.min_patients_with_positives)"
                )
        rows.append(row)
    return {"splits": rows, "warnings": warnings_}


def argmax_metrics(
    frame: pd.DataFrame, split: str, replicates: int, level: float, seed: int
) -> dict[str, Any]:
    """Multi-class: each image predicted as its most probable class. Accuracy and balanced
    accuracy (the mean of the per-class recalls) with patient-bootstrap percentile CIs, and
    the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    labels, probs, patients = wide_targets(frame, split)
    classes = list(labels.columns)
    true = labels.to_numpy(float).argmax(axis=1)
    predicted = probs.to_numpy(float).argmax(axis=1)
    correct = (true == predicted).astype(float)
    members = np.stack([true == k for k in range(len(classes))]).astype(float)  # (K, n)

    def accuracy(weights: np.ndarray) -> np.ndarray:
        return (weights * correct).sum(axis=1) / weights.sum(axis=1)

    def balanced_accuracy(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = (weights[:, None, :] * members * correct).sum(-1) / (
                weights[:, None, :] * members
            ).sum(-1)
        with warnings.catch_warnings():  # a replicate may miss a class entirely
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(recalls, axis=1)

    result: dict[str, Any] = {
        "images": len(true),
        "classes": classes,
        "confusion_matrix": confusion_matrix(true, predicted, labels=range(len(classes)))
        .astype(int)
        .tolist(),
    }
    for name, metric in (("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy)):
        result[name] = float(metric(np.ones((1, len(true))))[0])
        result.update(bootstrap_metric(metric, patients, replicates, level, seed).as_dict(name))
    return result


def initialisation_pairs(results: dict[str, dict]) -> list[tuple[str, str]]:
    """(pre-trained, scratch) model pairs whose configurations differ only in ``init``."""

    def without_init(config: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in config.items() if k != "init"}, sort_keys=True)

    pairs = []
    for scratch, result in sorted(results.items()):
        if result["config"].get("init") != "scratch":
            continue
        for other, candidate in sorted(results.items()):
            same = without_init(candidate["config"]) == without_init(result["config"])
            if other != scratch and candidate["config"].get("init") != "scratch" and same:
                pairs.append((other, scratch))
    return pairs


def pretraining_boosts(
    results: dict[str, dict], frames: dict[str, pd.DataFrame], cfg: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    """Test mean AUC of each pre-trained model minus that of its scratch twin, with a
    paired patient-bootstrap CI."""
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    return [
        {
            "pretrained": pretrained,
            "scratch": scratch,
            "init": results[pretrained]["config"]["init"],
            **mean_auc_difference_with_ci(
                frames[pretrained], frames[scratch], "test", replicates, level, seed
            ),
        }
        for pretrained, scratch in initialisation_pairs(results)
    ]


def class_activation_figure(
    name: str,
    model: Any,
    entry: dict[str, Any],
    frame: pd.DataFrame,
    store: Any,
    params: dict[str, Any],
    out_dir: Path,
) -> str | None:
    """Activation maps (``evaluate.cam_method``) of each class on validation images of that
    class: one row per class, up to ``evaluate.gradcam_per_outcome`` images each, the map of
    that class's evidence over the image. None for volumes (the maps are 2D)."""
    from medtailor.evaluate.gradcam import CAM_METHODS, gradcam_maps, stack_patches

    per_class = int(params["evaluate"]["gradcam_per_outcome"])
    val = frame[(frame["split"] == "val") & (frame["label"] == 1)]
    val = val.merge(store.index[["patch_id", "row"]], on="patch_id")
    if per_class <= 0 or val.empty or set(val["kind"]) != {"radiograph"}:
        return None
    task = store.task()
    targets = [t for t in dict.fromkeys(frame["target"]) if (val["target"] == t).any()]
    method = str(params["evaluate"]["cam_method"])
    plt = pyplot()
    fig, axes = plt.subplots(
        len(targets), per_class, figsize=(2.2 * per_class, 2.3 * len(targets)), squeeze=False
    )
    for row, target in enumerate(targets):
        part = val[val["target"] == target]
        cases = part.sample(min(per_class, len(part)), random_state=int(params["seed"]))
        images = stack_patches(
            store.array("radiograph", "val"), cases["row"].to_numpy(), int(entry["input_size"])
        )
        output = task["classes"].index(target) if task["task"] != "binary" else 1
        maps = gradcam_maps(
            model, images, images.shape[-1], method, output, task["task"] == "multilabel"
        )
        for column in range(per_class):
            ax = axes[row, column]
            ax.axis("off")
            if column < len(cases):
                ax.imshow(images[column, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(maps[column], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                ax.set_title(f"{target}: p={cases['prob'].iloc[column]:.2f}", fontsize=8)
    fig.suptitle(f"{CAM_METHODS[method][0]}, {name} (validation images of each class)", fontsize=10)
    save_figure(fig, out_dir / "figures" / f"cam_{name}.png", dpi=110)
    return f"figures/cam_{name}.png"


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


def _evidence_lines(evidence: dict[str, Any], targets: list[str]) -> list[str]:
    lines = [
        "## Evidence",
        "",
        "What the numbers rest on: images and patients per split, and per class the images "
        "of that class (patients with one).",
        "",
        "| split | images | patients | " + " | ".join(map(str, targets)) + " |",
        "|---|---|---|" + "---|" * len(targets),
    ]
    for row in evidence["splits"]:
        cells = []
        for target in targets:
            counts = row["classes"].get(target, {})
            cells.append(
                f"{counts.get('positive_images', 0)} ({counts.get('patients_with_positives', 0)})"
            )
        lines.append(
            f"| {row['split']} | {row['images']} | {row['patients']} | " + " | ".join(cells) + " |"
        )
    lines += [""] + [f"- **Warning:** {w}" for w in evidence["warnings"]]
    return lines + ([""] if evidence["warnings"] else [])


def _auc_table(results: dict[str, dict], targets: list[str], split: str) -> list[str]:
    lines = [
        "| model | mean AUC | " + " | ".join(map(str, targets)) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for name, result in sorted(results.items()):
        mean = result[f"{split}_mean"]
        cells = [
            _interval(
                result["classes"][t][split].get("auc"), result["classes"][t][split].get("auc_ci")
            )
            for t in targets
        ]
        lines.append(
            f"| {name} | {_interval(mean.get('auc'), mean.get('auc_ci'))} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _operating_point_lines(results: dict[str, dict], targets: list[str]) -> list[str]:
    lines = [
        "## Operating point per class (test split)",
        "",
        "Each class's threshold is chosen on the validation split (Youden's J) and applied to "
        "the test images; intervals from the patient bootstrap.",
        "",
        "| model | class | threshold | sensitivity | specificity | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in sorted(results.items()):
        for target in targets:
            point = result["classes"][target]["test_operating_point"]
            if point.get("threshold") is None:
                lines.append(f"| {name} | {target} | {point.get('undefined', 'undefined')} | | | |")
                continue
            cells = [
                _interval(point.get(metric), point.get(f"{metric}_ci"))
                for metric in ("sensitivity", "specificity", "accuracy")
            ]
            lines.append(
                f"| {name} | {target} | {point['threshold']:.3f} | " + " | ".join(cells) + " |"
            )
    return lines


def _argmax_lines(results: dict[str, dict]) -> list[str]:
    lines = [
        "## Multi-class decisions (test split)",
        "",
        "Each image is given its most probable class. Balanced accuracy is the mean of the "
        "per-class recalls; intervals from the patient bootstrap (percentile).",
        "",
        "| model | accuracy | balanced accuracy |",
        "|---|---|---|",
    ]
    for name, result in sorted(results.items()):
        argmax = result["test_argmax"]
        lines.append(
            f"| {name} | {_interval(argmax['accuracy'], argmax.get('accuracy_ci'))} | "
            f"{_interval(argmax['balanced_accuracy'], argmax.get('balanced_accuracy_ci'))} |"
        )
    for name, result in sorted(results.items()):
        argmax = result["test_argmax"]
        classes = argmax["classes"]
        lines += [
            "",
            f"Confusion matrix of {name} (rows: true class, columns: predicted):",
            "",
            "| true \\ predicted | " + " | ".join(map(str, classes)) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for true, counts in zip(classes, argmax["confusion_matrix"], strict=True):
            lines.append(f"| {true} | " + " | ".join(map(str, counts)) + " |")
    return lines


def _boost_lines(boosts: list[dict[str, Any]], level: int) -> list[str]:
    lines = [
        "## Pre-training boost (test split)",
        "",
        "Pairs of models whose configurations differ only in their initialisation: test mean "
        f"AUC of the pre-trained one minus that of the one from scratch, {level}% paired "
        "patient-bootstrap CI.",
        "",
        "| pre-trained | from scratch | difference in mean AUC |",
        "|---|---|---|",
    ]
    for row in boosts:
        lines.append(
            f"| {row['pretrained']} ({row['init']}) | {row['scratch']} | "
            f"{_interval(row.get('difference'), row.get('difference_ci'))} |"
        )
    return lines


def report_lines(
    task: dict[str, Any],
    results: dict[str, dict],
    comparisons: list[dict],
    cfg: dict,
    figure: str | None,
    evidence: dict[str, Any] | None = None,
    boosts: list[dict[str, Any]] | None = None,
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
        *(_evidence_lines(evidence, targets) if evidence else []),
        "## Test AUC per model",
        "",
        *_auc_table(results, targets, "test"),
        "",
        "## Validation AUC per model",
        "",
        "The split the checkpoints and thresholds were chosen on: expect it above the test AUC.",
        "",
        *_auc_table(results, targets, "val"),
        "",
        *_operating_point_lines(results, targets),
    ]
    if results and all("test_argmax" in r for r in results.values()):
        lines += ["", *_argmax_lines(results)]
    if boosts:
        lines += ["", *_boost_lines(boosts, level)]
    if comparisons:
        lines += [
            "",
            "## Pairwise comparisons per class (test split)",
            "",
            *comparison_table(comparisons, cfg),
        ]
    if figure:
        lines += ["", f"![ROC curves per class]({figure})"]
    maps = {
        name: r["activation_maps"]
        for name, r in sorted(results.items())
        if r.get("activation_maps")
    }
    if maps:
        from medtailor.evaluate.gradcam import CAM_METHODS

        method = CAM_METHODS[str(cfg["cam_method"])][0]
        lines += [
            "",
            "## Activation maps",
            "",
            f"{method} (evaluate.cam_method) of each class's evidence on validation images of "
            "that class: where the network looked, not proof of what it learnt. No pointing "
            "game: whole-image samples carry no lesion masks.",
            "",
            *(f"![activation maps {name}]({path})" for name, path in maps.items()),
        ]
    return lines


def evaluate_whole_images(
    models: dict[str, Path],
    store: Any,
    out_dir: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the whole-image classifiers in ``models``; writes summary.json, report.md,
    roc.csv, per-model JSON (and confusion matrices), the ROC and activation-map figures;
    returns the flat DVC metrics."""
    from medtailor.evaluate import _clean, checkpoint_facts
    from medtailor.evaluate.classification import load_predictions
    from medtailor.train.architecture import load_classifier

    cfg, seed = params["evaluate"], int(params["seed"])
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    task = store.task()
    results, frames = {}, {}
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    for name, folder in sorted(models.items()):
        frame = load_predictions(folder / "predictions.parquet", store.index)
        model, checkpoint = load_classifier(folder / "best.pt")
        result = evaluate_whole_image_model(name, frame, cfg, seed)
        result.update(checkpoint_facts(checkpoint))
        if task["task"] == "multiclass":
            result["test_argmax"] = argmax_metrics(frame, "test", replicates, level, seed)
            argmax = result["test_argmax"]
            pd.DataFrame(
                argmax["confusion_matrix"], index=argmax["classes"], columns=argmax["classes"]
            ).rename_axis("true").to_csv(out_dir / "models" / f"{name}_confusion.csv")
        result["activation_maps"] = class_activation_figure(
            name, model, checkpoint["config"], frame, store, params, out_dir
        )
        results[name], frames[name] = result, frame
        (out_dir / "models" / f"{name}.json").write_text(
            json.dumps(_clean(result), indent=2) + "\n"
        )
    evidence = whole_image_evidence(store.index, task, cfg["evidence"])
    comparisons = compare_whole_image_models(frames, cfg, seed)
    boosts = pretraining_boosts(results, frames, cfg, seed)
    curves = roc_curves(frames)
    curves.to_csv(out_dir / "roc.csv", index=False)
    figure = roc_figure(curves, out_dir)
    summary = {
        "task": task,
        "evidence": evidence,
        "models": _clean(results),
        "comparisons": _clean(comparisons),
        "pretraining_boosts": _clean(boosts),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = report_lines(task, results, comparisons, cfg, figure, evidence, boosts)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    flat: dict[str, Any] = {"evidence_warnings": len(evidence["warnings"])}
    for name, result in results.items():
        flat[f"{name}_test_auc"] = result["test_mean"].get("auc")
        flat[f"{name}_val_auc"] = result["val_mean"].get("auc")
        for target, per_class in result["classes"].items():
            flat[f"{name}_test_auc_{target}"] = per_class["test"].get("auc")
        if "test_argmax" in result:
            flat[f"{name}_test_accuracy"] = result["test_argmax"]["accuracy"]
            flat[f"{name}_test_balanced_accuracy"] = result["test_argmax"]["balanced_accuracy"]
    for row in boosts:
        flat[f"{row['pretrained']}_pretraining_boost"] = row.get("difference")
    return _clean(flat)
