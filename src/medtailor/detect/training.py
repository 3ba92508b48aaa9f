"""Training the built-in RetinaNet detectors on the training split."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medtailor.detect.augment import Augmentation, training_crop
from medtailor.detect.data import KINDS, DetectionImage, load_detection_images
from medtailor.detect.inference import lesion_recall, predict_boxes
from medtailor.detect.model import build_detector, device, parameter_groups, validation_selection
from medtailor.detect.planning import resolve_detector_config
from medtailor.imageio import save_torch
from medtailor.runtime import MetricSink
from medtailor.split import hash_position, manifest_with_split

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def warmup_cosine(total_steps: int, warmup_share: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to zero at ``total_steps``."""
    warmup = max(1, int(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _batches(
    images: list[DetectionImage], cfg: Mapping[str, Any], rng: np.random.Generator
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    aug = Augmentation.from_config(cfg.get("augment"))
    crops = [
        training_crop(
            images[i].image,
            images[i].boxes,
            tuple(cfg["patch_size"]),
            rng,
            float(cfg["lesion_crop_fraction"]),
            aug,
        )
        for i in rng.permutation(np.repeat(np.arange(len(images)), int(cfg["crops_per_image"])))
    ]
    size = int(cfg["batch_size"])
    return [crops[i : i + size] for i in range(0, len(crops), size)]


def validation_recall(detector, images, cfg, patches_cfg) -> float:
    candidates = [predict_boxes(detector, item.image, tuple(cfg["patch_size"])) for item in images]
    found, total = lesion_recall(
        [item.boxes for item in images],
        candidates,
        float(patches_cfg["min_score"]),
        float(patches_cfg["positive_iou"]),
    )
    return found / total if total else float("nan")


FOLDS_FILE = "folds.csv"


def detector_file(out_dir: Path, kind: str, fold: int | None = None) -> Path:
    """``<kind>.pt`` (trained on the whole training split) or ``<kind>_fold<k>.pt`` (trained
    without the training patients of fold k, which it then scores)."""
    return out_dir / (f"{kind}.pt" if fold is None else f"{kind}_fold{fold}.pt")


def assign_folds(patient_ids: list[str], folds: int, key: str) -> dict[str, int]:
    """Training patients -> fold 0..folds-1, by the split's keyed hash (stable)."""
    ids = sorted(set(patient_ids))
    return dict(
        zip(
            ids,
            (hash_position(ids, f"{key}:detector-folds") * folds).astype(int).tolist(),
            strict=True,
        )
    )


def train_kind(
    kind: str,
    train: list[DetectionImage],
    val: list[DetectionImage],
    params: Mapping[str, Any],
    out_dir: Path,
    sink: MetricSink,
    fold: int | None = None,
) -> dict[str, float]:
    name = kind if fold is None else f"{kind}_fold{fold}"
    seed = int(params["seed"])
    cfg, plan = resolve_detector_config(
        params["detector"][kind],
        [item.boxes for item in train],
        [item.image.shape for item in train],
        seed,
    )
    if plan is not None:
        log.info("%s planned from the training boxes: %s", name, plan)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    run_device = device()
    selection = validation_selection(float(params["patches"]["min_score"]))
    detector = build_detector(KINDS[kind], cfg, selection).to(run_device)
    groups = parameter_groups(
        detector,
        float(cfg["learning_rate"]),
        float(cfg.get("backbone_learning_rate_factor", 1.0)),
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    epochs = int(cfg["epochs"])
    crops = len(train) * int(cfg["crops_per_image"])
    steps = epochs * -(-crops // int(cfg["batch_size"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))

    def checkpoint(epoch: int, recall: float) -> dict[str, Any]:
        return {
            "state_dict": detector.state_dict(),
            "kind": kind,
            "spatial_dims": KINDS[kind],
            "epoch": epoch,
            "val_recall": recall,
            # What detect needs to rebuild and run it: architecture, window, intensity.
            "config": dict(cfg),
        }

    best = -1.0
    # Validations in a row without a higher recall before training stops (0: never).
    patience = int(cfg.get("early_stopping_patience", 0))
    stale = 0
    started = time.perf_counter()
    history: dict[str, float] = {}
    for epoch in tqdm(range(1, epochs + 1), desc=f"train_detector {kind}", unit="epoch"):
        detector.train()
        totals = {"classification": 0.0, "box_regression": 0.0}
        batches = _batches(train, cfg, rng)
        for batch in batches:
            images = [torch.from_numpy(crop)[None].to(run_device) for crop, _ in batch]
            targets = [
                {
                    "boxes": torch.as_tensor(boxes, dtype=torch.float32, device=run_device),
                    "labels": torch.zeros(len(boxes), dtype=torch.long, device=run_device),
                }
                for _, boxes in batch
            ]
            losses = detector(images, targets)
            loss = losses["classification"] + losses["box_regression"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for key in totals:
                totals[key] += float(losses[key].detach()) / len(batches)
        metrics = {f"{name}_loss_{k}": v for k, v in totals.items()}
        last = epoch == epochs
        if val and (epoch % int(cfg["validate_every"]) == 0 or last):
            recall = validation_recall(detector, val, cfg, params["patches"])
            metrics[f"{name}_val_recall"] = recall
            stale = 0 if recall > best or np.isnan(recall) else stale + 1
            # Later epochs win ties: the model has seen more data for the same recall.
            if recall >= best or np.isnan(recall):
                best = recall
                save_torch(checkpoint(epoch, recall), detector_file(out_dir, kind, fold))
                history[f"{name}_best_epoch"] = epoch
        sink(metrics, epoch)
        history.update(metrics)
        history[f"{name}_epochs_run"] = epoch
        if patience and stale >= patience and not last:
            log.info(
                "%s: no higher validation recall in %d validations: stopped at epoch %d of %d",
                name,
                patience,
                epoch,
                epochs,
            )
            break
    if not val:  # nothing to choose on: keep the last epoch
        save_torch(checkpoint(epochs, float("nan")), detector_file(out_dir, kind, fold))
    history[f"{name}_best_val_recall"] = best
    if plan is not None and "mean_best_iou" in plan:
        history[f"{name}_anchor_mean_best_iou"] = plan["mean_best_iou"]
    history[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
    history[f"{name}_train_images"] = len(train)
    return history


def run_train_detector(
    resample_dir: Path,
    split_csv: Path,
    out_dir: Path,
    params: Mapping[str, Any],
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train one detector per image kind present in the training split and, with
    ``detector.train_folds`` k > 1, k more per kind, each without one fold of the training
    patients: ``detect`` scores each training image with the detector that never saw it
    (out-of-fold), so training candidates are as hard as validation and test ones."""
    sink = sink or (lambda metrics, step: None)
    manifest = manifest_with_split(resample_dir, split_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.pt"), *out_dir.glob("*_plan.json"), out_dir / FOLDS_FILE]:
        stale.unlink(missing_ok=True)
    folds = int(params["detector"]["train_folds"])
    train_patients = manifest.loc[manifest["split"] == "train", "patient_id"].tolist()
    fold_of = assign_folds(train_patients, folds, str(params["split"]["key"])) if folds > 1 else {}
    if fold_of:
        pd.DataFrame({"patient_id": list(fold_of), "fold": list(fold_of.values())}).to_csv(
            out_dir / FOLDS_FILE, index=False
        )
    summary: dict[str, Any] = {"train_folds": folds}
    for kind in KINDS:
        rows = manifest[manifest["kind"] == kind]
        train_rows = rows[rows["split"] == "train"]
        if train_rows.empty:
            log.info("no %s in the training split: no %s detector", kind, kind)
            continue
        intensity = params["detector"][kind]["intensity"]
        val = load_detection_images(resample_dir, rows[rows["split"] == "val"], intensity)
        train = load_detection_images(resample_dir, train_rows, intensity)
        summary.update(train_kind(kind, train, val, params, out_dir, sink))
        for fold in range(folds if folds > 1 else 0):
            held_out = train_rows["patient_id"].map(fold_of) == fold
            kept = [item for item, out in zip(train, held_out, strict=True) if not out]
            if not kept or held_out.sum() == 0:
                raise RuntimeError(
                    f"detector.train_folds = {folds}: fold {fold} leaves "
                    f"{len(kept)} training {kind} image(s) to train on and holds out "
                    f"{int(held_out.sum())}; use fewer folds"
                )
            summary.update(train_kind(kind, kept, val, params, out_dir, sink, fold))
    if not summary:
        raise RuntimeError(f"{split_csv}: the training split holds no image to train a detector on")
    return summary
