"""``medtailor evaluate``: trustworthy statistics for every trained model, and the report.

For each model (its ``predictions.parquet``; the model itself is rebuilt from its
checkpoint): AUC on val and test with patient-bootstrap CIs; a threshold chosen on
validation (Youden) and test sensitivity, specificity, precision, F1 and accuracy with
CIs; the detection-level FROC on the test split with the classifier's probabilities
replacing the detector's scores (AUFROC with a patient-bootstrap CI, LUNA16 score), next
to the detector's own FROC; activation-map figures (LayerCAM or Grad-CAM) and their
pointing game. Across models: patient-clustered DeLong and McNemar tests with Holm
correction, patient-bootstrap AUC differences, Spearman correlations and plots, written
to ``report.md``. Every interval and test has the patient as its unit: patches of one
patient are correlated.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from tqdm import tqdm

from medtailor.evaluate.classification import (
    EvaluationInputError,
    auc_with_ci,
    evaluable,
    load_predictions,
    operating_point,
)
from medtailor.evaluate.comparisons import compare_models
from medtailor.evaluate.detection import candidate_hits, froc_summary, recall_by_candidates
from medtailor.evaluate.evidence import evidence_table, evidence_warnings
from medtailor.evaluate.segmentation import dice_curves, evaluate_segmentation, search_seg_section
from medtailor.patches import lesions_found
from medtailor.patches.store import PatchStore
from medtailor.split import SPLITS, manifest_with_split
from medtailor.tables import read_boxes

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes None (an undefined metric), numpy scalars become Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def checkpoint_facts(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of a model from its own checkpoint: size, cost, configuration."""
    config = checkpoint["config"]
    return {
        "parameters": checkpoint.get("parameters"),
        "macs": checkpoint.get("macs"),
        "init": config["init"],
        "architecture": config["model"],
        "config": config,
        "search_role": checkpoint.get("search", {}).get("role"),
    }


def evaluate_model(
    name: str,
    frame: pd.DataFrame,
    detection: dict[str, Any],
    cfg: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    val, test = frame[frame["split"] == "val"], frame[frame["split"] == "test"]
    result: dict[str, Any] = {"model": name}
    for split, part in (("val", val), ("test", test)):
        result[split] = auc_with_ci(part, replicates, level, seed)
    result["test_operating_point"] = operating_point(val, test, replicates, level, seed)
    candidates = detection["candidates"].merge(
        test[["patch_id", "prob"]], on="patch_id", how="inner"
    )
    froc, curve = froc_summary(
        candidates,
        detection["lesions"],
        detection["images"],
        "prob",
        cfg["froc"],
        replicates,
        level,
        seed,
    )
    result["test_froc"] = froc
    return result, {"froc": curve.assign(model=name)}


def detection_inputs(
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    index: pd.DataFrame,
    kind: str,
    cfg: dict,
    split: str = "test",
) -> dict:
    """Candidates of ``split`` with their lesion hits, the lesions and the images, for FROC
    (``manifest`` with its split column, ``truths`` the ground-truth boxes)."""
    images = manifest[(manifest["split"] == split) & (manifest["kind"] == kind)][
        ["image_id", "study_id", "patient_id", "shape"]
    ]
    truths = truths[truths["image_id"].isin(images["image_id"])]
    truths = truths.merge(images[["image_id", "study_id"]], on="image_id")
    lesions = truths.groupby("lesion_id", as_index=False)["study_id"].first()
    chosen = index[(index["split"] == split) & (index["kind"] == kind)]
    candidates = candidate_hits(
        chosen,
        truths,
        images.set_index("image_id")["shape"],
        float(cfg["hit_iou"]),
        float(cfg["false_positive_iou"]),
        cfg["in_between"],
    )
    return {
        "candidates": candidates,
        "lesions": lesions,
        "images": images[["image_id", "study_id", "patient_id"]],
    }


def detection_context(
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    index: pd.DataFrame,
    params: dict[str, Any],
    splits: tuple[str, ...],
) -> tuple[dict, dict[str, Any], dict[str, Any], pd.DataFrame]:
    """What every model's evaluation shares: the test candidates with their lesion hits,
    the evidence table of ``splits`` and the detector's own FROC (its summary and curve)."""
    cfg, seed = params["evaluate"], int(params["seed"])
    detection = detection_inputs(manifest, truths, index, "radiograph", cfg["froc"])
    evidence = split_evidence(
        manifest, truths, index, cfg["evidence"], params["patches"]["positive_iou"], splits
    )
    froc, curve = froc_summary(
        detection["candidates"],
        detection["lesions"],
        detection["images"],
        "score",
        cfg["froc"],
        int(cfg["bootstrap_replicates"]),
        float(cfg["confidence_level"]),
        seed,
    )
    return detection, evidence, froc, curve


def correlations(table: pd.DataFrame) -> list[dict]:
    """Spearman correlations across models (CheXtransfer's analyses), where defined."""
    found = []
    pairs = [("parameters", "test_auc"), ("macs", "test_auc"), ("parameters", "pretraining_boost")]
    for x, y in pairs:
        part = table[[x, y]].dropna() if x in table and y in table else pd.DataFrame()
        if len(part) >= 3 and part[x].nunique() > 1 and part[y].nunique() > 1:
            rho, p = scipy_stats.spearmanr(part[x], part[y])
            found.append({"x": x, "y": y, "rho": float(rho), "p_value": float(p), "n": len(part)})
        else:
            found.append(
                {
                    "x": x,
                    "y": y,
                    "undefined": f"needs 3 or more models with distinct values (have {len(part)})",
                }
            )
    return found


def trained_folders(paths: list[Path], names: list[str] | None = None) -> dict[str, Path]:
    """Model name -> folder, for every path that is a trained folder (it has ``best.pt``)
    or holds trained folders; ``names`` keeps only those."""
    found: dict[str, Path] = {}
    for path in paths:
        candidates = [path] if (path / "best.pt").is_file() else sorted(path.glob("*/best.pt"))
        for folder in (c.parent if c.name == "best.pt" else c for c in candidates):
            if folder.name in found and found[folder.name] != folder:
                raise EvaluationInputError(
                    f"two trained folders are named {folder.name}: {found[folder.name]}, {folder}"
                )
            found[folder.name] = folder
    if names:
        missing = sorted(set(names) - set(found))
        if missing:
            raise EvaluationInputError(
                f"no trained folder (with best.pt) for {missing} under {[str(p) for p in paths]}"
            )
        found = {name: found[name] for name in names}
    if not found:
        raise EvaluationInputError(
            f"no trained model folder (with best.pt) in {[str(p) for p in paths]}"
        )
    return found


def evaluate_segmentation_only(
    segmentation: dict[str, Path], search_seg: Path | None, out_dir: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """A project of 3D segmentation alone: the Dice of every segmentation model (and the
    segmentation search's selection), its report and flat metrics."""
    from medtailor.evaluate.report import segmentation_report

    if not segmentation:
        raise EvaluationInputError("no segmentation model to evaluate (seg_models is empty)")
    cfg, seed = params["evaluate"], int(params["seed"])
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = segmentation_sections(segmentation, search_seg, out_dir, replicates, level, seed)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    segmentation_report(summary, out_dir, params)
    return _clean(dice_metrics(summary))


def segmentation_sections(
    segmentation: dict[str, Path] | None,
    search_seg: Path | None,
    out_dir: Path,
    replicates: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """The summary's segmentation sections: Dice per model (with the curves figure) and
    the segmentation search's selection, each when there is something to show."""
    summary: dict[str, Any] = {}
    if segmentation:
        summary["segmentation"] = _clean(
            evaluate_segmentation(segmentation, replicates, level, seed)
        )
        curves_figure = dice_curves(segmentation, out_dir)
        if curves_figure is not None:
            summary["segmentation"]["figure"] = f"figures/{curves_figure.name}"
    if search_seg is not None:
        summary["search_seg"] = _clean(search_seg_section(search_seg, out_dir))
    return summary


def dice_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat DVC metrics of the segmentation models: test Dice per class."""
    return {
        f"{name}_test_dice_{row['class']}": row["dice"]
        for name, result in summary.get("segmentation", {}).get("models", {}).items()
        for row in result["test"]
    }


def run_evaluate(
    models: dict[str, Path],
    store_dir: Path | None,
    resample_dir: Path,
    split_csv: Path,
    out_dir: Path,
    params: dict[str, Any],
    search_summary: Path | None = None,
    segmentation: dict[str, Path] | None = None,
    search_seg: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every model in ``models`` (name -> its trained folder); write the report
    (with the architecture search's table and figures when ``search_summary`` is given, and
    the Dice of the segmentation models in ``segmentation``, name -> train_seg folder, and
    the segmentation search's selection and figures when ``search_seg`` is its fine folder).

    Each model is rebuilt from its own checkpoint (which carries its configuration and its
    parameter and MAC counts), never from the current params.yaml.
    """
    from medtailor.evaluate.report import (
        gradcam_for_model,
        gradcam_pointing_game,
        write_report,
    )
    from medtailor.train.architecture import load_classifier

    if store_dir is None:
        return evaluate_segmentation_only(segmentation or {}, search_seg, out_dir, params)
    cfg, seed = params["evaluate"], int(params["seed"])
    store = PatchStore(store_dir)
    if store.task().get("samples") == "whole_image":
        from medtailor.evaluate.whole_image import evaluate_whole_images

        out_dir.mkdir(parents=True, exist_ok=True)
        return evaluate_whole_images(models, store, out_dir, params)
    for split in ("val", "test"):
        if not ((store.index["split"] == split) & (store.index["kind"] == "radiograph")).any():
            raise EvaluationInputError(
                f"{store_dir}: no {split} patches (no {split} patient, or the detector kept no "
                f"candidate there): nothing to evaluate"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(exist_ok=True)
    manifest = manifest_with_split(resample_dir, split_csv)
    truths = read_boxes(resample_dir / "boxes.parquet")
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    detection, evidence, detector_froc, detector_curve = detection_context(
        manifest, truths, store.index, params, SPLITS
    )
    detector_recall = detector_recall_table(manifest, truths, store.index, cfg["froc"])
    results, frames, curves = {}, {}, [detector_curve.assign(model="detector")]
    for name, folder in tqdm(sorted(models.items()), desc="evaluate", unit="model"):
        frame = load_predictions(folder / "predictions.parquet", store.index)
        model, checkpoint = load_classifier(folder / "best.pt")
        result, tables = evaluate_model(name, frame, detection, cfg, seed)
        config = checkpoint["config"]
        result.update(checkpoint_facts(checkpoint))
        threshold = result["test_operating_point"].get("threshold")
        if threshold is not None and int(cfg["gradcam_per_outcome"]) > 0:
            result["gradcam"] = str(
                gradcam_for_model(name, model, config, frame, store, params, threshold, out_dir)
            )
            result["pointing_game"] = gradcam_pointing_game(
                model, config, frame, store, truths, params, threshold
            )
        results[name], frames[name] = result, frame
        curves.append(tables["froc"])
        (out_dir / "models" / f"{name}.json").write_text(
            json.dumps(_clean(result), indent=2) + "\n"
        )

    comparisons = compare_models(frames, cfg, seed)
    table = summary_table(results, comparisons)
    summary = {
        "evidence": _clean(evidence),
        "models": _clean(results),
        "detector_froc": _clean(detector_froc),
        "detector_recall": _clean(detector_recall_summary(detector_recall)),
        "comparisons": _clean(comparisons),
        "correlations": _clean(correlations(table)),
    }
    if search_summary is not None:
        summary["search"] = search_section(search_summary, out_dir)
    summary.update(
        segmentation_sections(segmentation, search_seg, out_dir, replicates, level, seed)
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pd.concat(curves, ignore_index=True).to_csv(out_dir / "froc.csv", index=False)
    roc_table(frames).to_csv(out_dir / "roc.csv", index=False)
    detector_recall.to_csv(out_dir / "detector_recall.csv", index=False)
    write_report(
        summary,
        table,
        frames,
        pd.concat(curves, ignore_index=True),
        out_dir,
        params,
        detector_recall,
    )
    flat = {
        "detector_aufroc": detector_froc["aufroc"],
        "evidence_warnings": len(evidence["warnings"]),
    }
    for name, result in results.items():
        flat[f"{name}_test_auc"] = result["test"].get("auc")
        flat[f"{name}_test_aufroc"] = result["test_froc"].get("aufroc")
        game = result.get("pointing_game") or {}
        if game.get("true_positives"):
            flat[f"{name}_gradcam_pointing"] = game["hits"] / game["true_positives"]
    flat.update(dice_metrics(summary))
    return _clean(flat)


def detector_recall_table(
    manifest: pd.DataFrame, truths: pd.DataFrame, index: pd.DataFrame, froc_cfg: dict
) -> pd.DataFrame:
    """Lesion recall of the kept radiograph candidates (score above ``patches.min_score``)
    against the number of candidates per image, on the validation and test splits."""
    most = int(index.groupby("image_id").size().max()) if len(index) else 1
    tables = []
    for split in ("val", "test"):
        inputs = detection_inputs(manifest, truths, index, "radiograph", froc_cfg, split)
        table = recall_by_candidates(inputs["candidates"], inputs["lesions"], most)
        tables.append(table.assign(split=split, lesions=len(inputs["lesions"])))
    return pd.concat(tables, ignore_index=True)


def detector_recall_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per split: lesions, recall with the best candidate per image, with 5, and with all."""
    summary = {}
    for split, part in table.groupby("split", sort=False):
        recall = part.set_index("candidates_per_image")["recall"]
        summary[split] = {
            "lesions": int(part["lesions"].iloc[0]),
            "recall_at_1": recall.iloc[0],
            "recall_at_5": recall.iloc[min(4, len(recall) - 1)],
            "recall_all": recall.iloc[-1],
            "candidates_per_image_max": int(recall.index.max()),
        }
    return summary


def search_section(summary_dir: Path, out_dir: Path) -> dict[str, Any]:
    """What the report shows of the search: its figures (copied) and its history in brief."""
    import shutil

    history = pd.read_csv(summary_dir / "history.csv")
    finalists = json.loads((summary_dir / "finalists.json").read_text())
    figures = []
    for figure in sorted((summary_dir / "figures").glob("*.png")):
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, out_dir / "figures" / figure.name)
        figures.append(f"figures/{figure.name}")
    return {
        "space": finalists["space"],
        "genes": len(finalists["genes"]),
        "candidates": len(history),
        "trained": int((history["status"] == "trained").sum()),
        "distinct_networks": int(history["key"].nunique()),
        "reference_score": history["score"].iloc[0],
        "best_score": history["best_so_far"].iloc[-1],
        "finalists": finalists["finalists"],
        "figures": figures,
    }


def split_evidence(
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    index: pd.DataFrame,
    cfg: dict,
    positive_iou: float,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, Any]:
    """The evidence table of the radiograph patches and its warnings (logged as well), for
    ``splits`` (an external cohort: test alone, so no warning about training)."""
    lesions = truths.merge(manifest[["image_id", "split", "kind"]], on="image_id")
    found = lesions_found(index, truths, manifest, float(positive_iou))
    table = evidence_table(index, lesions, "radiograph", found)
    table = table[table["split"].isin(splits)].reset_index(drop=True)
    warnings = evidence_warnings(table, cfg)
    for warning in warnings:
        log.warning("little evidence: %s", warning)
    return {"table": table.to_dict("records"), "warnings": warnings}


def paired_boost_interval(comparisons: list[dict], imagenet: str, scratch: str) -> list | None:
    """The patient-bootstrap interval of AUC(imagenet) - AUC(scratch) from the pairwise
    comparisons (stored for the pair in name order, so it flips when scratch comes first)."""
    for c in comparisons:
        if {c["a"], c["b"]} == {imagenet, scratch} and "bootstrap_difference_ci" in c:
            low, high = c["bootstrap_difference_ci"]
            return [low, high] if c["a"] == imagenet else [-high, -low]
    return None


def summary_table(results: dict[str, dict], comparisons: list[dict] | None = None) -> pd.DataFrame:
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "model": name,
                "architecture": r.get("architecture"),
                "init": r.get("init"),
                "test_auc": r["test"].get("auc"),
                "test_auc_ci": r["test"].get("auc_ci"),
                "test_aufroc": r["test_froc"].get("aufroc"),
                "test_aufroc_ci": r["test_froc"].get("aufroc_ci"),
                "parameters": r.get("parameters"),
                "macs": r.get("macs"),
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        # The boost of a pre-trained model is against the first (by name) from-scratch
        # model of its architecture.
        scratch = table[table["init"] == "scratch"].sort_values("model")
        scratch = scratch.drop_duplicates("architecture").set_index("architecture")
        boosts, intervals = [], []
        for row in table.itertuples():
            partner = scratch.loc[row.architecture] if row.architecture in scratch.index else None
            if (
                row.init == "imagenet"
                and partner is not None
                and row.test_auc is not None
                and partner["test_auc"] is not None
            ):
                boosts.append(row.test_auc - partner["test_auc"])
                intervals.append(
                    paired_boost_interval(comparisons or [], row.model, partner["model"])
                )
            else:
                boosts.append(np.nan)
                intervals.append(None)
        table["pretraining_boost"] = boosts
        table["pretraining_boost_ci"] = intervals
    return table


def roc_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    from sklearn.metrics import roc_curve

    parts = []
    for name, frame in frames.items():
        test = evaluable(frame[frame["split"] == "test"])
        if test["label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(test["label"], test["prob"])
            parts.append(pd.DataFrame({"model": name, "fpr": fpr, "tpr": tpr}))
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["model", "fpr", "tpr"])
    )
