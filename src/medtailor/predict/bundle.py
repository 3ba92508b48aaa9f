"""What travels with a trained classifier: one folder that ``medtailor predict`` (and the
MLflow model wrapping it) needs, with no params.yaml of the project that trained it.

A bundle holds:
- ``classifier.pt`` (``segmenter.pt`` for a 3D segmentation network): the checkpoint, its
  own configuration and task inside;
- ``detector/``: the detector checkpoints that made the candidates it learnt from (none
  for whole images or the user's own boxes);
- ``params.json``: the trained project's params, so ingest, resample, detection and patch
  extraction run on new scans exactly as they ran on the training data;
- ``operating_point.json``: the threshold of each target chosen on validation (Youden),
  which ``findings.csv`` applies;
- ``bundle.json``: the model's name, task, the project's commit and params hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.config import load_params, params_hash
from medtailor.tracking import git_commit

BUNDLE_FILE = "bundle.json"
CLASSIFIER_FILE = "classifier.pt"
SEGMENTER_FILE = "segmenter.pt"
DETECTOR_FOLDER = "detector"
PARAMS_FILE = "params.json"
OPERATING_POINT_FILE = "operating_point.json"


class BundleError(ValueError):
    """A model folder that cannot be applied to new scans (the message says why)."""


def operating_thresholds(predictions: pd.DataFrame) -> dict[str, float | None]:
    """Each target's Youden threshold on the validation predictions (labelled rows); None
    when validation holds one class only."""
    from medtailor.evaluate.stats import youden_threshold

    val = predictions[(predictions["split"] == "val") & (predictions["label"] >= 0)]
    thresholds: dict[str, float | None] = {}
    for target, rows in val.groupby("target", sort=False):
        labels = rows["label"].to_numpy() == 1
        defined = labels.any() and not labels.all()
        thresholds[str(target)] = (
            youden_threshold(labels, rows["prob"].to_numpy(float)) if defined else None
        )
    return thresholds


def detector_checkpoints(detector_dir: Path) -> list[Path]:
    """The detectors trained on the whole training split (not the out-of-fold ones, which
    scored training patients only) and their plans."""
    kept = [*detector_dir.glob("*.pt"), *detector_dir.glob("*_plan.json")]
    return sorted(path for path in kept if "_fold" not in path.stem)


def write_bundle(
    model_dir: Path,
    params: dict[str, Any],
    detector_dir: Path | None,
    out_dir: Path,
    commit: str = "",
) -> dict[str, Any]:
    """Gather ``model_dir``'s classifier with what predicting needs into ``out_dir``."""
    checkpoint = model_dir / "best.pt"
    predictions = model_dir / "predictions.parquet"
    for needed in (checkpoint, predictions):
        if not needed.is_file():
            raise BundleError(f"{needed}: missing; {model_dir} is not a trained classifier")
    uses_detector = (
        params["patches"]["source"] == "candidates" and params["detector"]["source"] == "builtin"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, out_dir / CLASSIFIER_FILE)
    if uses_detector:
        found = detector_checkpoints(detector_dir) if detector_dir is not None else []
        if not any(path.suffix == ".pt" for path in found):
            raise BundleError(
                f"{detector_dir}: no trained detector beside {model_dir}, and its candidates "
                "came from the built-in detector"
            )
        (out_dir / DETECTOR_FOLDER).mkdir(exist_ok=True)
        for path in found:
            shutil.copy2(path, out_dir / DETECTOR_FOLDER / path.name)
    thresholds = operating_thresholds(pd.read_parquet(predictions))
    (out_dir / OPERATING_POINT_FILE).write_text(json.dumps(thresholds, indent=2) + "\n")
    (out_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {
        "model": model_dir.name,
        "task": state.get("task", {}),
        "input": {
            "kind": params["train"]["kind"],
            "size": int(state["config"]["input_size"]),
            "channels": int(state["config"]["input_channels"]),
        },
        "samples": params["patches"]["source"],
        "detector": "builtin"
        if uses_detector
        else params.get("detector", {}).get("source", "none"),
        "commit": commit,
        "params_hash": params_hash(params),
        "validation_auc": _finite(state.get("val_auc")),
    }
    (out_dir / BUNDLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_segmentation_bundle(
    model_dir: Path, params: dict[str, Any], out_dir: Path, commit: str = ""
) -> dict[str, Any]:
    """Gather a trained segmentation network (``data/seg_models/<name>``) with the params
    that ingest and resample new volumes as its training data was."""
    checkpoint = model_dir / "best.pt"
    if not checkpoint.is_file():
        raise BundleError(f"{checkpoint}: missing; {model_dir} is not a trained segmentation model")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, out_dir / SEGMENTER_FILE)
    (out_dir / OPERATING_POINT_FILE).write_text("{}\n")
    (out_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {
        "model": model_dir.name,
        "task": {"task": "segmentation", "classes": list(state["entry"]["labels"])},
        "samples": "segmentation",
        "detector": "none",
        "commit": commit,
        "params_hash": params_hash(params),
    }
    (out_dir / BUNDLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(float(value)) else None


def project_of(model_dir: Path) -> Path:
    """The project a trained model folder (``<project>/data/models/<name>``) belongs to."""
    project = model_dir.resolve().parent.parent.parent
    if model_dir.resolve().parent.parent.name != "data" or not (project / "params.yaml").is_file():
        raise BundleError(
            f"{model_dir}: neither a bundle ({BUNDLE_FILE}) nor a model folder of a project "
            "(<project>/data/models/<name> beside its params.yaml)"
        )
    return project


def bundle_project_model(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """A bundle of a project's trained model folder (``data/models/<name>`` or
    ``data/seg_models/<name>``), read with the project's params."""
    project = project_of(model_dir)
    params = load_params(project / "params.yaml")
    if model_dir.resolve().parent.name == "seg_models":
        return write_segmentation_bundle(model_dir, params, out_dir, git_commit(project))
    return write_bundle(
        model_dir, params, project / "data" / "detector", out_dir, git_commit(project)
    )


def read_bundle(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, float | None]]:
    """(bundle record, params snapshot, thresholds) of a bundle folder."""
    missing = [
        name
        for name in (BUNDLE_FILE, PARAMS_FILE, OPERATING_POINT_FILE)
        if not (folder / name).is_file()
    ]
    if missing:
        raise BundleError(f"{folder}: not a model bundle, missing {', '.join(missing)}")
    record = json.loads((folder / BUNDLE_FILE).read_text())
    network = SEGMENTER_FILE if record["samples"] == "segmentation" else CLASSIFIER_FILE
    if not (folder / network).is_file():
        raise BundleError(f"{folder}: not a model bundle, missing {network}")
    return (
        record,
        json.loads((folder / PARAMS_FILE).read_text()),
        json.loads((folder / OPERATING_POINT_FILE).read_text()),
    )
