"""``medtailor predict``: a trained classifier applied to new scans.

The new scans go through the trained project's own stages, with its params (from the
model's bundle, ``predict.bundle``): ingest (pseudonyms, audit), resample, the detector
that made the training candidates, patch extraction, then the classifier. Every
candidate that the patch stage keeps (score above ``patches.min_score``) is scored.

Outputs in ``--output``:
- ``findings.csv``: one row per scored candidate: the pseudonymous image and patient, the
  image's ``source_row`` (its row in the sorted list of input files, a join key without
  file names), the box in the original image's pixels (``px0``..; edges, x along the
  image's first axis) and in world mm (``wx0``..), the detector's score, the probability
  and ``positive``: whether it reaches the threshold chosen on validation;
- ``overlays/<image_id>.png``: the image with its boxes and their probabilities, and the
  activation map inside each positive box;
- ``model/``: the bundle that was applied (the same files travel with any copy);
- ``work/``: the stages' outputs (ingest's ``audit.csv`` names every rejected file).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.predict.bundle import (
    BUNDLE_FILE,
    DETECTOR_FOLDER,
    BundleError,
    bundle_project_model,
    read_bundle,
)
from medtailor.spatial import world_to_voxel
from medtailor.tables import manifest_affine, read_manifest

__all__ = ["BundleError", "resolve_bundle", "run_predict"]
log = logging.getLogger(__name__)
MLFLOW_SCHEMES = ("models:/", "runs:/")
WORLD = ["wx0", "wy0", "wz0", "wx1", "wy1", "wz1"]
PIXELS = ["px0", "py0", "pz0", "px1", "py1", "pz1"]
FINDING_COLUMNS = [
    "image_id",
    "patient_id",
    "source_row",
    "candidate_id",
    "kind",
    *PIXELS,
    *WORLD,
    "score",
    "target",
    "prob",
    "threshold",
    "positive",
]


def resolve_bundle(model: str, out_dir: Path) -> Path:
    """The bundle folder behind ``--model``: an MLflow model URI, an MLflow model folder, a
    bundle, or a project's trained model folder (bundled into ``out_dir/model``)."""
    if model.startswith(MLFLOW_SCHEMES):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
        return _bundle_inside(local, model)
    folder = Path(model)
    if not folder.is_dir():
        raise BundleError(f"--model {model}: no such folder (or models:/<name>/<version>)")
    if (folder / BUNDLE_FILE).is_file():
        return folder
    if (folder / "MLmodel").is_file():
        return _bundle_inside(folder, model)
    bundle = out_dir / "model"
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle_project_model(folder, bundle)
    return bundle


def _bundle_inside(folder: Path, model: str) -> Path:
    found = sorted(folder.rglob(BUNDLE_FILE))
    if not found:
        raise BundleError(f"--model {model}: an MLflow model without a medtailor bundle")
    return found[0].parent


def everyone_in_test(resample_dir: Path, split_csv: Path) -> Path:
    """A split table that puts every patient in ``test``: new scans are scored as the
    test split is (the in-between IoU band counts as negative; nothing is left out)."""
    manifest = read_manifest(resample_dir / "manifest.parquet")
    patients = sorted(manifest["patient_id"].unique())
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"patient_id": patients, "split": "test"}).to_csv(split_csv, index=False)
    return split_csv


def original_pixels(world: np.ndarray, affine: np.ndarray, ndim: int) -> np.ndarray:
    """Box corners in world mm -> pixel edges of the ingested (original) grid, low corner
    first per axis; the inverse of ``detect``'s voxel-edge -> world mapping."""
    low = world_to_voxel(affine, world[:, :3], 3)[:, :ndim] + 0.5
    high = world_to_voxel(affine, world[:, 3:], 3)[:, :ndim] + 0.5
    out = np.full((len(world), 6), np.nan)
    out[:, :ndim] = np.minimum(low, high)
    out[:, 3 : 3 + ndim] = np.maximum(low, high)
    return out


def findings_table(
    index: pd.DataFrame,
    probs: np.ndarray,
    candidates: pd.DataFrame,
    ingest_manifest: pd.DataFrame,
    target: str,
    threshold: float | None,
) -> pd.DataFrame:
    """One row per scored candidate (binary task), boxes in original pixels and world mm."""
    scored = index[["patch_id", "image_id", "patient_id", "kind", "score"]].assign(prob=probs)
    boxes = candidates[["candidate_id", *WORLD]].rename(columns={"candidate_id": "patch_id"})
    scored = scored.merge(boxes, on="patch_id", how="left")
    by_id = ingest_manifest.set_index("image_id")
    parts = []
    for image_id, rows in scored.groupby("image_id", sort=True):
        row = by_id.loc[image_id]
        pixels = original_pixels(
            rows[WORLD].to_numpy(float), manifest_affine(row), int(row["ndim"])
        )
        parts.append(rows.assign(**dict(zip(PIXELS, pixels.T, strict=True))))
    found = pd.concat(parts) if parts else scored.reindex(columns=[*scored.columns, *PIXELS])
    found = found.merge(ingest_manifest[["image_id", "source_row"]], on="image_id")
    found = found.rename(columns={"patch_id": "candidate_id"})
    found["target"] = target
    found["threshold"] = threshold
    found["positive"] = (found["prob"] >= threshold) if threshold is not None else pd.NA
    found = found.sort_values(["image_id", "prob"], ascending=[True, False], kind="stable")
    return found[FINDING_COLUMNS].reset_index(drop=True)


def image_findings(
    index: pd.DataFrame,
    probs: np.ndarray,
    ingest_manifest: pd.DataFrame,
    task: dict[str, Any],
    thresholds: dict[str, float | None],
) -> pd.DataFrame:
    """Whole images: one row per image and class (binary: the positive class; multi-label:
    each finding) with its probability and whether it reaches the class's validation
    threshold; multi-class rows also name the most probable class (``argmax``)."""
    classes = [str(c) for c in task["classes"]]
    targets = classes[1:] if task["task"] == "binary" else classes
    table = np.asarray(probs, float).reshape(len(index), -1)
    meta = index[["image_id", "patient_id", "kind"]].reset_index(drop=True)
    parts = []
    for k, target in enumerate(targets):
        threshold = thresholds.get(target)
        part = meta.assign(target=target, prob=table[:, k], threshold=threshold)
        part["positive"] = (part["prob"] >= threshold) if threshold is not None else pd.NA
        if task["task"] == "multiclass":
            part["argmax"] = [classes[j] for j in table.argmax(axis=1)]
        parts.append(part)
    found = pd.concat(parts, ignore_index=True)
    found = found.merge(ingest_manifest[["image_id", "source_row"]], on="image_id")
    columns = ["image_id", "patient_id", "source_row", "kind", "target", "prob", "threshold"]
    columns += ["positive", *(["argmax"] if task["task"] == "multiclass" else [])]
    return found.sort_values(["image_id", "target"], kind="stable")[columns].reset_index(drop=True)


def predict_segmentation(
    bundle: Path, record: dict[str, Any], params: dict[str, Any], input_root: Path, out_dir: Path
) -> dict[str, Any]:
    """A segmentation network on new volumes: label maps on their original grids and
    ``findings.csv`` (voxels and mL of each class per volume)."""
    from medtailor.ingest import run_ingest
    from medtailor.predict.segmentation import LABEL_MAPS, segment_volumes
    from medtailor.resample import run_resample

    work = out_dir / "work"
    run_ingest(input_root, work / "ingest", params)
    run_resample(work / "ingest", work / "resample", params)
    findings = segment_volumes(bundle, work, out_dir)
    findings.to_csv(out_dir / "findings.csv", index=False)
    summary = {
        "model": record["model"],
        "images": int(read_manifest(work / "ingest" / "manifest.parquet").shape[0]),
        "images_of_kind": int(findings["image_id"].nunique()),
        "findings": len(findings),
        "positive": int((findings["voxels"] > 0).sum()),
        "label_maps": str(out_dir / LABEL_MAPS),
        "overlays": 0,
    }
    (out_dir / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_predict(
    model: str, input_root: Path, out_dir: Path, boxes: Path | None = None
) -> dict[str, Any]:
    """Apply ``model`` to the raw folder ``input_root``; write findings and overlays."""
    from medtailor.detect import run_detect
    from medtailor.ingest import run_ingest
    from medtailor.patches import run_patches
    from medtailor.resample import run_resample
    from medtailor.score import score_patches

    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = resolve_bundle(model, out_dir)
    record, params, thresholds = read_bundle(bundle)
    if record["samples"] == "segmentation":
        return predict_segmentation(bundle, record, params, input_root, out_dir)
    whole_image = record["samples"] == "whole_image"
    if not whole_image and record["task"].get("task", "binary") != "binary":
        raise BundleError(
            f"{record['model']}: a candidate classifier with classes {record['task']}: "
            "predict applies two-class candidate classifiers"
        )
    if record["detector"] == "external":
        if boxes is None:
            raise BundleError(
                f"{record['model']} learnt from the user's own boxes (detector.source: "
                "external): give the new scans' boxes with --boxes <csv>"
            )
        params["detector"]["external_boxes"] = str(boxes)
    work = out_dir / "work"
    run_ingest(input_root, work / "ingest", params)
    run_resample(work / "ingest", work / "resample", params)
    split_csv = everyone_in_test(work / "resample", work / "split.csv")
    if whole_image:
        run_patches(
            work / "resample",
            split_csv,
            None,
            work / "patches",
            params,
            trained_task=record["task"],
        )
    else:
        detector = boxes if record["detector"] == "external" else bundle / DETECTOR_FOLDER
        run_detect(work / "resample", detector, work / "candidates.parquet", params)
        run_patches(
            work / "resample", split_csv, work / "candidates.parquet", work / "patches", params
        )

    dataset, probs, classifier = score_patches(bundle, work / "patches")
    manifest = read_manifest(work / "ingest" / "manifest.parquet")
    if whole_image:
        findings = image_findings(dataset.frame(), probs, manifest, record["task"], thresholds)
    else:
        target, threshold = next(iter(thresholds.items()), ("positive", None))
        findings = findings_table(
            dataset.frame(),
            probs,
            pd.read_parquet(work / "candidates.parquet"),
            manifest,
            target,
            threshold,
        )
    findings.to_csv(out_dir / "findings.csv", index=False)

    from medtailor.predict.overlay import write_image_overlays, write_overlays

    write = write_image_overlays if whole_image else write_overlays
    overlays = write(findings, classifier, dataset, work / "ingest", out_dir / "overlays", params)
    summary = {
        "model": record["model"],
        "images": int(read_manifest(work / "ingest" / "manifest.parquet").shape[0]),
        "images_of_kind": int(findings["image_id"].nunique()),
        "findings": len(findings),
        "positive": int(findings["positive"].fillna(False).astype(bool).sum()),
        "thresholds": thresholds,
        "overlays": overlays,
    }
    (out_dir / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
