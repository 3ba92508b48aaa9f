"""The training loop of one segmentation configuration, with ``train``'s reliability.

Every epoch passes once over the training volumes (``samples_per_volume`` crops each) with
Dice + cross-entropy (MONAI ``DiceCELoss``) and SGD under a linear warm-up then a
multi-step decay (timm's scheduler, per epoch). Every ``validate_every`` epochs (and at the
last) the validation volumes are segmented whole by sliding-window inference and scored
with Dice per class; the best mean foreground Dice picks ``best.pt``. ``last.pt`` (model,
optimiser, scheduler, history) is written atomically after every epoch in the state
folder, which the workflow never deletes, keyed by configuration, seed and data, so a
killed job resumes where it stopped and state from other inputs is discarded. Each epoch
reseeds torch and the MONAI transforms from (seed, epoch): a resumed run repeats the
uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from timm.scheduler import MultiStepLRScheduler
from tqdm import tqdm

from medtailor import runtime
from medtailor.complexity import complexity
from medtailor.config import params_hash
from medtailor.dice import dice_per_case
from medtailor.imageio import atomic_output, save_nifti, save_torch
from medtailor.runtime import MetricSink, distributed_context, epoch_seed
from medtailor.split import SPLITS
from medtailor.train_seg.data import (
    class_values,
    data_fingerprint,
    ingested_grids,
    load_sample,
    pad_to_patch,
    segmentation_rows,
    to_grid,
    to_label_values,
    training_transform,
)
from medtailor.train_seg.models import SegInput, create_seg_model

log = logging.getLogger(__name__)
# Called with (model, epoch, step) before every training step and with step None before
# validation and the final predictions: the single-path supernet picks its path there.
StepHook = Callable[[torch.nn.Module, int, int | None], None]


@torch.no_grad()
def segment(
    model: torch.nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    device: torch.device,
) -> np.ndarray:
    """Class indices of a whole (C, X, Y, Z) volume by Gaussian-weighted sliding windows."""
    model.eval()
    padded, cuts = pad_to_patch(image, patch_size)
    logits = sliding_window_inference(
        padded[None].to(device),
        roi_size=list(patch_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
    )
    return logits[0].argmax(0)[tuple(cuts)].cpu().numpy()


def validation_dice(
    model: torch.nn.Module,
    samples: list[dict[str, Any]],
    entry: dict[str, Any],
    device: torch.device,
) -> np.ndarray:
    """(volumes, classes) Dice of the class-index maps (classes 1..K)."""
    window = entry["sliding_window"]
    classes = list(range(1, len(entry["labels"]) + 1))
    predictions = [
        segment(
            model,
            s["image"],
            entry["patch_size"],
            int(window["batch_size"]),
            float(window["overlap"]),
            device,
        )
        for s in samples
    ]
    truths = [s["label"][0].numpy() for s in samples]
    return dice_per_case(predictions, truths, classes)


def split_samples(
    resample_dir: Path, rows: pd.DataFrame, entry: dict[str, Any], split: str
) -> list[dict[str, Any]]:
    """The labelled volumes of one split, loaded and normalised as training sees them."""
    return [
        load_sample(resample_dir, row, dict(entry["labels"]), entry["intensity"])
        for _, row in rows[rows["split"] == split].iterrows()
    ]


def mean_foreground_dice(per_case: np.ndarray) -> float:
    """The mean over classes of each class's mean Dice (classes absent everywhere skipped):
    what picks the best epoch and scores a search candidate."""
    with np.errstate(all="ignore"):
        per_class = np.nanmean(per_case, axis=0) if len(per_case) else np.array([])
    finite = per_class[np.isfinite(per_class)]
    return float(finite.mean()) if len(finite) else float("nan")


def dice_metrics(per_case: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    with np.errstate(all="ignore"):
        per_class = [
            float(np.nanmean(per_case[:, k])) if len(per_case) else np.nan
            for k in range(len(names))
        ]
    metrics = {f"val_dice_{name}": value for name, value in zip(names, per_class, strict=True)}
    metrics["val_dice_mean"] = mean_foreground_dice(per_case)
    return metrics


def segmentation_checkpoint(
    model: torch.nn.Module, entry: dict[str, Any], data: SegInput, **facts: Any
) -> dict[str, Any]:
    """Weights with everything that rebuilds the network (no params.yaml needed)."""
    return {
        "model": model.state_dict(),
        "entry": entry,
        "data": {
            "in_channels": data.in_channels,
            "num_classes": data.num_classes,
            "spacing": list(data.spacing),
            "patch_size": list(data.patch_size),
        },
        **facts,
    }


def train_segmentation(
    name: str,
    entry: dict[str, Any],
    resample_dir: Path,
    split_csv: Path,
    ingest_dir: Path | None,
    out_dir: Path,
    state_dir: Path,
    seed: int,
    sink: MetricSink | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    sink = sink or (lambda metrics, step: None)
    on_step = on_step or (lambda model, epoch, step: None)
    _, _, device = distributed_context()
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    rows = segmentation_rows(resample_dir, split_csv)
    names = list(entry["labels"])
    samples = {split: split_samples(resample_dir, rows, entry, split) for split in SPLITS}
    if not samples["train"] or not samples["val"]:
        raise RuntimeError(
            f"{resample_dir}: segmentation needs labelled volumes in train and val; the split "
            f"has {len(samples['train'])} and {len(samples['val'])}"
        )
    channels = {int(s["image"].shape[0]) for split in samples.values() for s in split}
    if len(channels) > 1:
        raise ValueError(f"{resample_dir}: volumes with different channel counts {channels}")
    spacing = tuple(float(v) for v in rows.iloc[0]["spacing"])
    patch_size = tuple(int(v) for v in entry["patch_size"])
    data = SegInput(channels.pop(), len(names) + 1, spacing, patch_size)
    model = create_seg_model(entry, data).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last_3d)
    counts = complexity(model, (data.in_channels, *patch_size))

    epochs = int(entry["epochs"])
    optimizer = runtime.recipe_optimizer(model, entry)
    scheduler = MultiStepLRScheduler(
        optimizer,
        decay_t=[max(1, round(float(f) * epochs)) for f in entry["milestones"]],
        decay_rate=float(entry["gamma"]),
        warmup_t=int(entry["warmup_epochs"]),
        warmup_lr_init=float(entry["learning_rate"]) * 0.01,
        warmup_prefix=False,
    )
    criterion = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    ratios = [float(r) for r in entry["crop_class_ratios"]]
    if len(ratios) != data.num_classes:
        raise ValueError(
            f"train_seg.crop_class_ratios has {len(ratios)} values for {data.num_classes} "
            f"classes (background, {', '.join(names)})"
        )
    transform = training_transform(patch_size, int(entry["samples_per_volume"]), ratios)
    train_set = Dataset(samples["train"], transform)

    key = params_hash({"entry": entry, "seed": seed, "data": data_fingerprint(resample_dir, rows)})
    state_dir.mkdir(parents=True, exist_ok=True)
    runtime.discard_stale_state(state_dir, key, name)
    last_path, best_path = state_dir / "last.pt", state_dir / "best.pt"
    start, history, best_dice = 1, [], -1.0
    resumed = runtime.load_training_state(last_path, device)
    if resumed is not None:
        state, start, history = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_dice = float(state["best_dice"])
        log.info("%s: resumed at epoch %d (of %d) from %s", name, start, epochs, last_path)

    validate_every = int(entry["validate_every"])
    for epoch in tqdm(range(start, epochs + 1), desc=f"train_seg {name}", unit="epoch"):
        scheduler.step(epoch - 1)
        torch.manual_seed(epoch_seed(seed, epoch))
        transform.set_random_state(seed=epoch_seed(seed, epoch))
        loader = DataLoader(
            train_set,
            batch_size=int(entry["batch_size"]),
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
            num_workers=0,
        )
        model.train()
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        for step, batch in enumerate(loader):
            on_step(model, epoch, step)
            images, targets = batch["image"].to(device), batch["label"].to(device)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                loss = criterion(model(images).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(images)
            seen += len(images)
        seconds = time.perf_counter() - started
        metrics: dict[str, float] = {
            "train_loss": total_loss / max(seen, 1),
            "learning_rate": optimizer.param_groups[0]["lr"],
            "patches_per_second": seen / seconds if seconds > 0 else 0.0,
        }
        validated = epoch % validate_every == 0 or epoch == epochs
        on_step(model, epoch, None)
        metrics.update(
            dice_metrics(validation_dice(model, samples["val"], entry, device), names)
            if validated
            else dice_metrics(np.zeros((0, len(names))), names)
        )
        history.append({"epoch": epoch, **metrics})
        score = metrics["val_dice_mean"]
        improved = validated and np.isfinite(score) and score > best_dice
        if improved or not best_path.is_file():
            best_dice = score if improved else best_dice
            save_torch(
                segmentation_checkpoint(model, entry, data, epoch=epoch, val_dice=score, **counts),
                best_path,
            )
        runtime.save_training_state(
            last_path,
            key,
            epoch,
            history,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            best_dice=best_dice,
        )
        sink({k: v for k, v in metrics.items() if np.isfinite(v)}, epoch)

    best = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    on_step(model, epochs, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    dice = write_predictions(model, samples, rows, entry, ingest_dir, out_dir, device)
    runtime.publish_trained(best_path, history, out_dir)
    with atomic_output(out_dir / "dice.parquet") as tmp:
        dice.to_parquet(tmp, index=False)
    summary: dict[str, Any] = {
        "epochs": epochs,
        "best_epoch": int(best["epoch"]),
        "best_val_dice_mean": float(best["val_dice"]),
        "final_train_loss": history[-1]["train_loss"],
        "train_volumes": len(samples["train"]),
        "patches_per_second": float(np.mean([h["patches_per_second"] for h in history])),
        **counts,
    }
    # Validation numbers only, as in train: test Dice during training invites choosing
    # models on the test set (dice.parquet holds both for evaluate).
    for label_name in names:
        part = dice[(dice["split"] == "val") & (dice["class"] == label_name)]["dice"]
        summary[f"val_dice_{label_name}"] = (
            float(part.mean()) if part.notna().any() else float("nan")
        )
    return summary


def write_predictions(
    model: torch.nn.Module,
    samples: dict[str, list[dict[str, Any]]],
    rows: pd.DataFrame,
    entry: dict[str, Any],
    ingest_dir: Path | None,
    out_dir: Path,
    device: torch.device,
) -> pd.DataFrame:
    """Label maps of the val and test volumes on the resampled grid (``predictions/``) and,
    with the ingest folder, on each volume's ingested grid (``predictions_native/``); Dice
    per volume and class on the resampled grid."""
    window = entry["sliding_window"]
    values = class_values(entry["labels"])
    names = list(entry["labels"])
    grids = ingested_grids(ingest_dir) if ingest_dir is not None else {}
    patients = rows.set_index("image_id")["patient_id"]
    records = []
    for split in ("val", "test"):
        for sample in samples[split]:
            classes = segment(
                model,
                sample["image"],
                entry["patch_size"],
                int(window["batch_size"]),
                float(window["overlap"]),
                device,
            )
            label_map = to_label_values(classes, values)
            image_id = sample["image_id"]
            save_nifti(out_dir / "predictions" / f"{image_id}.nii.gz", label_map, sample["affine"])
            if image_id in grids:
                affine, shape = grids[image_id]
                native = to_grid(label_map, sample["affine"], affine, shape)
                save_nifti(out_dir / "predictions_native" / f"{image_id}.nii.gz", native, affine)
            per_class = dice_per_case(
                [classes], [sample["label"][0].numpy()], list(range(1, len(values) + 1))
            )[0]
            records += [
                {
                    "image_id": image_id,
                    "patient_id": patients[image_id],
                    "split": split,
                    "class": label_name,
                    "label_value": value,
                    "dice": float(d),
                }
                for label_name, value, d in zip(names, values, per_class, strict=True)
            ]
    return pd.DataFrame(records)
