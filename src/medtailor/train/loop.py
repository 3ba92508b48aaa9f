"""The training loop of one model configuration: resumable, deterministic on CPU, DDP-ready.

Every epoch ends with a validation pass (of the EMA weights) and an atomic checkpoint
(``last.pt``: model, EMA, optimiser, history) in the *state folder*, which the workflow
never deletes (Snakemake removes a job's declared outputs before it runs, DVC before it
reproduces a stage), so a killed job resumes where it stopped. The checkpoint is keyed by
the configuration, the seed and the patch store's fingerprint: state from other inputs is
deleted, never reused. Because every epoch reseeds the random generators from
(seed, epoch), the resumed run repeats the uninterrupted one exactly. ``best.pt`` keeps
the EMA weights of the epoch with the best validation AUC, with the configuration that
rebuilds the model.

Under ``torchrun`` (WORLD_SIZE > 1) each process trains a shard with
DistributedDataParallel (wrapped before ``torch.compile``); only rank 0 writes
checkpoints, predictions and metrics.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from medtailor.complexity import complexity
from medtailor.config import params_hash
from medtailor.imageio import atomic_output, save_torch
from medtailor.patches.store import PatchStore
from medtailor.runtime import (
    MetricSink,
    discard_stale_state,
    distributed_context,
    epoch_seed,
    load_training_state,
    publish_trained,
    recipe_optimizer,
    save_training_state,
)
from medtailor.targets import CANDIDATE_TASK, output_count
from medtailor.train.architecture import build_classifier, classifier_checkpoint
from medtailor.train.data import PatchDataset, balanced_indices
from medtailor.train.objectives import (
    class_weights,
    has_defined_auc,
    mean_auc,
    probabilities,
    training_loss,
    validation_loss,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: PatchDataset, batch_size: int, device: torch.device
) -> np.ndarray:
    """Probabilities (``objectives.probabilities``: of class 1 for a binary store, one
    column per class or finding otherwise); eval mode, so any batch size (even 1) works."""
    model.eval()
    probs = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs.append(probabilities(model(images.to(device)), dataset.task).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros(0)


def prediction_table(
    name: str, split: str, dataset: PatchDataset, probs: np.ndarray
) -> pd.DataFrame:
    """The predictions contract: one row per patch (binary) or per patch and class or
    finding (``target`` names it; ``label`` is 1/0 for it, -1 when unknown)."""
    frame = dataset.frame()[["patch_id", "label"]].reset_index(drop=True)
    task = dataset.task
    if task["task"] == "binary":
        target = "positive" if task["classes"] == CANDIDATE_TASK["classes"] else task["classes"][1]
        return frame.assign(model=name, split=split, target=target, prob=probs)
    targets = dataset.targets.numpy()
    parts = []
    for k, target in enumerate(task["classes"]):
        label = (targets == k).astype(np.int8) if task["task"] == "multiclass" else targets[:, k]
        parts.append(
            pd.DataFrame(
                {
                    "patch_id": frame["patch_id"],
                    "label": label,
                    "model": name,
                    "split": split,
                    "target": target,
                    "prob": probs[:, k],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batches: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> None:
    """Re-estimate every batch norm's running mean and variance as the plain average over
    ``batches`` training batches (weights unchanged): a subnet cut from a supernet inherits
    statistics measured on the largest network."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches seen
    was_training = model.training
    model.train()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(dataset) > batch_size,
    )
    for step, (images, _) in enumerate(loader):
        if step >= batches:
            break
        model(images.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


def sync_batchnorm(model: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """Batch norm synchronised across processes (GPUs only: PyTorch's SyncBatchNorm has no
    CPU kernel, so a CPU run keeps per-process statistics and says so)."""
    if not enabled:
        return model
    if device.type != "cuda":
        log.warning(
            "sync_batchnorm needs GPUs; on %s each process keeps its own statistics", device
        )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def loader_workers(requested: int, threads: int) -> int:
    """Data-loader processes within the job's threads (``--threads``, torch's pool): the
    main process keeps one, so at most ``threads - 1`` workers run beside it."""
    return max(0, min(requested, threads - 1))


def train_batches(n_samples: int, batch_size: int, world: int) -> tuple[int, bool]:
    """(steps per epoch, drop_last). The last incomplete batch is dropped (a batch of one
    breaks batch norm in training), unless one batch is all there is."""
    per_process = -(-n_samples // world)
    drop_last = per_process > batch_size
    return (per_process // batch_size if drop_last else 1), drop_last


def resume_key(entry: dict[str, Any], seed: int, store: PatchStore) -> str:
    """Identity of a training run: its configuration, seed and the exact patch store."""
    return params_hash({"entry": entry, "seed": seed, "store": store.fingerprint()})


def train_model(
    name: str,
    entry: dict[str, Any],
    store_dir: Path,
    out_dir: Path,
    state_dir: Path,
    seed: int,
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train configuration ``name``; write best.pt, predictions.parquet and history.csv to
    ``out_dir`` (last.pt and best.pt of the run in progress live in ``state_dir``)."""
    sink = sink or (lambda metrics, step: None)
    rank, world, device = distributed_context()
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    store = PatchStore(store_dir)
    size, channels = int(entry["input_size"]), int(entry["input_channels"])
    train_set = PatchDataset(store, "train", size, channels, True, entry["augmentation"])
    # Validation and test score every candidate (the in-between band is negative there).
    val_set = PatchDataset(store, "val", size, channels, False)
    test_set = PatchDataset(store, "test", size, channels, False)
    if len(train_set) == 0:
        raise RuntimeError(f"{store_dir}: no labelled training patches")
    task = store.task()
    if not has_defined_auc(val_set.targets.numpy(), task):
        raise RuntimeError(
            f"{store_dir}: the validation split's {len(val_set)} patch(es) have no class with "
            "both positives and negatives: validation AUC is undefined in every epoch, so no "
            "checkpoint can be chosen (more patients, or a detector that finds their lesions)"
        )

    model = build_classifier(entry, output_count(task)).to(device)
    counts = complexity(model, (channels, size, size))
    if int(entry.get("bn_recalibration_batches", 0)) > 0:
        recalibrate_batchnorm(
            model,
            train_set,
            int(entry["bn_recalibration_batches"]),
            int(entry["batch_size"]),
            device,
            epoch_seed(seed, 0),
        )
    if world > 1:
        model = sync_batchnorm(model, bool(entry["sync_batchnorm"]), device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    batch_size, epochs = int(entry["batch_size"]), int(entry["epochs"])
    # Negatives are capped per positive in binary tasks only (the detector's candidates).
    cap = entry["max_negatives_per_positive"] if task["task"] == "binary" else None
    train_labels = train_set.labels.numpy()

    def epoch_indices(epoch: int) -> np.ndarray:
        return balanced_indices(train_labels, cap, np.random.default_rng(epoch_seed(seed, epoch)))

    # Every epoch draws the same number of patches of each class (fresh negatives).
    epoch_labels = torch.from_numpy(train_labels[epoch_indices(1)])
    if len(epoch_labels) < len(train_labels):
        log.info(
            "%s: class-balanced sampling, %d of %d negative training patches per epoch "
            "(train.max_negatives_per_positive = %s)",
            name,
            int((epoch_labels == 0).sum()),
            int((train_labels == 0).sum()),
            cap,
        )
    steps_per_epoch, drop_last = train_batches(len(epoch_labels), batch_size, world)
    workers = loader_workers(int(entry["num_workers"]), torch.get_num_threads())
    if workers < int(entry["num_workers"]):
        log.info(
            "%s: %d data-loader worker(s) instead of train.num_workers = %s, within the "
            "job's %d thread(s)",
            name,
            workers,
            entry["num_workers"],
            torch.get_num_threads(),
        )

    optimizer = recipe_optimizer(model, entry)
    scheduler = (
        CosineLRScheduler(
            optimizer,
            t_initial=epochs * steps_per_epoch,
            lr_min=0.0,
            warmup_t=int(float(entry["warmup_epochs"]) * steps_per_epoch),
            warmup_lr_init=0.0,
            t_in_epochs=False,
        )
        if entry["schedule"] == "cosine"
        else None
    )
    # timm's EMA warm-up: with tens of steps per epoch a fixed decay of 0.99 would keep the
    # evaluated weights near their initial values for the first epochs.
    ema = (
        ModelEmaV3(model, decay=float(entry["ema_decay"]), use_warmup=True)
        if float(entry["ema_decay"]) > 0
        else None
    )
    epoch_targets = train_set.targets[torch.from_numpy(epoch_indices(1))]
    weights = class_weights(epoch_targets, task, entry["class_weighting"])
    criterion = training_loss(task, None if weights is None else weights.to(device))
    trained: torch.nn.Module = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None
        )
    if entry["compile"]:
        trained = torch.compile(trained)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    key = resume_key(entry, seed, store)
    last_path, best_path = state_dir / "last.pt", state_dir / "best.pt"
    if rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
        discard_stale_state(state_dir, key, name)
    if world > 1:
        dist.barrier()  # rank 0 has removed stale state before anyone reads it
    start, history, best_auc = 1, [], -1.0
    resumed = load_training_state(last_path, device)
    if resumed is not None:
        state, start, history = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        best_auc = float(state["best_auc"])
        log.info("%s: resumed at epoch %d (of %d) from %s", name, start, epochs, last_path)

    evaluated = ema.module if ema is not None else model
    for epoch in tqdm(
        range(start, epochs + 1), desc=f"train {name}", unit="epoch", disable=rank != 0
    ):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        epoch_set = Subset(train_set, epoch_indices(epoch).tolist())
        sampler = (
            DistributedSampler(epoch_set, world, rank, seed=epoch_seed(seed, epoch))
            if world > 1
            else None
        )
        loader = DataLoader(
            epoch_set,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            drop_last=drop_last,
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
        val_targets = val_set.targets.numpy()
        metrics = {
            "train_loss": total_loss / max(seen, 1),
            "val_loss": validation_loss(val_targets, val_probs, task),
            "val_auc": mean_auc(val_targets, val_probs, task),
            "learning_rate": optimizer.param_groups[0]["lr"],
            "images_per_second": seen / seconds if seconds > 0 else 0.0,
        }
        history.append({"epoch": epoch, **metrics})
        improved = not np.isnan(metrics["val_auc"]) and metrics["val_auc"] > best_auc
        if rank == 0:
            if improved or not best_path.is_file():
                best_auc = metrics["val_auc"] if improved else best_auc
                save_torch(
                    classifier_checkpoint(
                        evaluated, entry, task, epoch=epoch, val_auc=metrics["val_auc"], **counts
                    ),
                    best_path,
                )
            save_training_state(
                last_path,
                key,
                epoch,
                history,
                model=model.state_dict(),
                ema=ema.module.state_dict() if ema is not None else {},
                optimizer=optimizer.state_dict(),
                best_auc=best_auc,
            )
            sink(metrics, epoch)

    if rank != 0:
        return {}
    best = torch.load(best_path, map_location=device, weights_only=True)
    evaluated.load_state_dict(best["model"])
    predictions = pd.concat(
        [
            prediction_table(name, split, dataset, predict(evaluated, dataset, batch_size, device))
            for split, dataset in (("val", val_set), ("test", test_set))
        ],
        ignore_index=True,
    )[["patch_id", "model", "split", "target", "prob", "label"]]
    publish_trained(best_path, history, out_dir)
    with atomic_output(out_dir / "predictions.parquet") as tmp:
        predictions.to_parquet(tmp, index=False)
    final = history[-1]
    # Only validation numbers: test metrics during training invite choosing on the test set.
    return {
        "epochs": epochs,
        "best_epoch": int(best["epoch"]),
        "best_val_auc": float(best["val_auc"]),
        "final_val_auc": final["val_auc"],
        "final_train_loss": final["train_loss"],
        "images_per_second": float(np.mean([h["images_per_second"] for h in history])),
        "train_patches": len(train_set),
        "train_patches_per_epoch": len(epoch_labels),
        "input_size": size,
        **counts,
    }
