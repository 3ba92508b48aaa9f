"""The training loop of one model configuration: resumable, deterministic on CPU.

Every epoch ends with a validation pass (of the EMA weights) and an atomic checkpoint
(``last.pt``: model, EMA, optimiser, scheduler, history). A killed run restarts from
``last.pt``; because every epoch reseeds the random generators from (seed, epoch), the
resumed run repeats the uninterrupted one exactly. ``best.pt`` keeps the EMA weights of
the epoch with the best validation AUC.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from medtailor.config import params_hash
from medtailor.imageio import atomic_output, save_torch
from medtailor.patches.store import PatchStore
from medtailor.train.architecture import build_classifier
from medtailor.train.complexity import complexity
from medtailor.train.data import PatchDataset

log = logging.getLogger(__name__)
MetricSink = Callable[[dict[str, float], int], None]
OPTIMIZERS = {"sgd": "momentum", "nesterov": "nesterov", "adam": "adam", "adamw": "adamw"}


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**31)


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: PatchDataset, batch_size: int, device: torch.device
) -> np.ndarray:
    model.eval()
    probs = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(images.to(device)).float()
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros(0)


def class_weights(labels: torch.Tensor, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=2).float().clamp(min=1)
    return counts.sum() / (2 * counts)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train_model(
    name: str,
    entry: dict[str, Any],
    store_dir: Path,
    out_dir: Path,
    seed: int,
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train configuration ``name``; write best.pt, last.pt, predictions.parquet, history.csv."""
    sink = sink or (lambda metrics, step: None)
    rank, world = _distributed()
    device = torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    )
    cuda = device.type == "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_classifier(entry).to(device)
    counts = complexity(
        model, (int(entry["input_channels"]), int(entry["input_size"]), int(entry["input_size"]))
    )
    if cuda:
        model = model.to(memory_format=torch.channels_last)

    store = PatchStore(store_dir)
    size, channels = int(entry["input_size"]), int(entry["input_channels"])
    train_set = PatchDataset(store, "train", size, channels, True, entry["augmentation"])
    val_set = PatchDataset(store, "val", size, channels, True)
    test_set = PatchDataset(store, "test", size, channels, False)
    if len(train_set) == 0:
        raise RuntimeError(f"{store_dir}: no labelled training patches")
    batch_size, epochs = int(entry["batch_size"]), int(entry["epochs"])
    steps_per_epoch = max(1, -(-len(train_set) // (batch_size * world)))

    optimizer = create_optimizer_v2(
        model,
        opt=OPTIMIZERS[entry["optimizer"]],
        lr=float(entry["learning_rate"]),
        weight_decay=float(entry["weight_decay"]),
        momentum=float(entry["momentum"]),
    )
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(float(entry["warmup_epochs"]) * steps_per_epoch)
    scheduler = (
        CosineLRScheduler(
            optimizer,
            t_initial=total_steps,
            lr_min=0.0,
            warmup_t=warmup_steps,
            warmup_lr_init=0.0,
            t_in_epochs=False,
        )
        if entry["schedule"] == "cosine"
        else None
    )
    ema = (
        ModelEmaV3(model, decay=float(entry["ema_decay"]))
        if float(entry["ema_decay"]) > 0
        else None
    )
    weights = class_weights(train_set.labels, entry["class_weighting"])
    criterion = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    trained = torch.compile(model) if entry["compile"] else model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if cuda else None
        )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    config_hash = params_hash({"entry": entry, "seed": seed})
    start, history, best_auc = 1, [], -1.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=True)
        if state["config_hash"] == config_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            start = int(state["epoch"]) + 1
            history = [
                dict(zip(state["history_keys"], row, strict=True)) for row in state["history"]
            ]
            best_auc = float(state["best_auc"])
            log.info("%s: resuming after epoch %d", name, start - 1)
        else:
            log.info("%s: last.pt belongs to another configuration; starting afresh", name)

    evaluated = ema.module if ema is not None else model
    for epoch in tqdm(
        range(start, epochs + 1), desc=f"train {name}", unit="epoch", disable=rank != 0
    ):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        sampler = (
            DistributedSampler(train_set, world, rank, seed=epoch_seed(seed, epoch))
            if world > 1
            else None
        )
        loader = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=int(entry["num_workers"]),
            drop_last=False,
        )
        trained.train()
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device), labels.to(device)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = criterion(trained(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates = (epoch - 1) * steps_per_epoch + step + 1
            if scheduler is not None:
                scheduler.step_update(updates)
            if ema is not None:
                ema.update(model, step=updates)
            total_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
        seconds = time.perf_counter() - started

        val_probs = predict(evaluated, val_set, batch_size, device)
        val_labels = val_set.labels.numpy()
        val_loss = (
            float(
                torch.nn.functional.binary_cross_entropy(
                    torch.as_tensor(val_probs).clamp(1e-7, 1 - 1e-7),
                    torch.as_tensor(val_labels, dtype=torch.float64).float(),
                )
            )
            if len(val_probs)
            else float("nan")
        )
        metrics = {
            "train_loss": total_loss / max(seen, 1),
            "val_loss": val_loss,
            "val_auc": auc(val_labels, val_probs),
            "learning_rate": optimizer.param_groups[0]["lr"],
            "images_per_second": seen / seconds if seconds > 0 else 0.0,
        }
        history.append({"epoch": epoch, **metrics})
        improved = not np.isnan(metrics["val_auc"]) and metrics["val_auc"] > best_auc
        if rank == 0:
            if improved or not best_path.is_file():
                best_auc = metrics["val_auc"] if improved else best_auc
                save_torch(
                    {
                        "model": evaluated.state_dict(),
                        "epoch": epoch,
                        "val_auc": metrics["val_auc"],
                    },
                    best_path,
                )
            keys = list(history[0])
            save_torch(
                {
                    "model": model.state_dict(),
                    "ema": ema.module.state_dict() if ema is not None else {},
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "best_auc": best_auc,
                    "history_keys": keys,
                    "history": [[row[k] for k in keys] for row in history],
                    "config_hash": config_hash,
                },
                last_path,
            )
            sink(metrics, epoch)

    if rank != 0:
        return {}
    best = torch.load(best_path, map_location=device, weights_only=True)
    evaluated.load_state_dict(best["model"])
    frames = []
    for split, dataset in (("val", val_set), ("test", test_set)):
        frame = dataset.frame()[["patch_id", "label"]].copy()
        frame["prob"] = predict(evaluated, dataset, batch_size, device)
        frame["model"], frame["split"] = name, split
        frames.append(frame)
    predictions = pd.concat(frames, ignore_index=True)[
        ["patch_id", "model", "split", "prob", "label"]
    ]
    with atomic_output(out_dir / "predictions.parquet") as tmp:
        predictions.to_parquet(tmp, index=False)
    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
    final = history[-1]
    return {
        "epochs": epochs,
        "best_epoch": int(best["epoch"]),
        "best_val_auc": float(best["val_auc"]),
        "final_val_auc": final["val_auc"],
        "final_train_loss": final["train_loss"],
        "test_auc_at_best": auc(
            test_set.labels.numpy(),
            predictions.loc[predictions["split"] == "test", "prob"].to_numpy(),
        ),
        "images_per_second": float(np.mean([h["images_per_second"] for h in history])),
        "train_patches": len(train_set),
        "input_size": int(entry["input_size"]),
        **counts,
    }
