"""What every training stage shares about its process: device and ranks, per-epoch seeds,
and resumable state that belongs to the current inputs only."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medtailor.imageio import save_torch

log = logging.getLogger(__name__)
# params.yaml's optimizer names -> timm's create_optimizer_v2 names.
OPTIMIZERS = {"sgd": "momentum", "nesterov": "nesterov", "adam": "adam", "adamw": "adamw"}
# Where a training loop sends its per-epoch metrics (MLflow under a stage run).
MetricSink = Callable[[dict[str, float], int], None]


def recipe_optimizer(model: torch.nn.Module, entry: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser a recipe names (timm's factory: weight decay off for norms and biases),
    with its learning rate, weight decay and momentum."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model,
        opt=OPTIMIZERS[entry["optimizer"]],
        lr=float(entry["learning_rate"]),
        weight_decay=float(entry["weight_decay"]),
        momentum=float(entry["momentum"]),
    )


def publish_trained(best_path: Path, history: list[dict[str, Any]], out_dir: Path) -> None:
    """A finished run's declared outputs: its best checkpoint (copied atomically from the
    state folder) and its per-epoch history."""
    import shutil

    import pandas as pd

    from medtailor.imageio import atomic_output

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "best.pt") as tmp:
        shutil.copyfile(best_path, tmp)
    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**31)


def distributed_context() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under torchrun
    and pins each process to its own GPU (LOCAL_RANK) when there are GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank(), world, device) if world > 1 else (0, 1, device)


def discard_stale_state(state_dir: Path, key: str, name: str) -> None:
    """Delete ``last.pt``/``best.pt`` unless they belong to ``key`` (these inputs and
    settings): state of other inputs is never resumed, and no stale best.pt survives."""
    last = state_dir / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("resume_key") == key:
            return
        log.info("%s: %s belongs to other inputs or settings; starting afresh", name, last)
    for stale in ("last.pt", "best.pt"):
        (state_dir / stale).unlink(missing_ok=True)


def save_training_state(
    path: Path, key: str, epoch: int, history: list[dict[str, Any]], **state: Any
) -> None:
    """``last.pt``: what resumes a run after ``epoch`` (the module and optimiser state dicts
    and best-so-far values in ``state``), its per-epoch history as plain lists (tensors
    and numbers only, so ``weights_only`` loads it) and the ``key`` of its inputs."""
    keys = list(history[0])
    save_torch(
        {
            **state,
            "epoch": epoch,
            "history_keys": keys,
            "history": [[row[k] for k in keys] for row in history],
            "resume_key": key,
        },
        path,
    )


def load_training_state(
    path: Path, device: torch.device
) -> tuple[dict[str, Any], int, list[dict[str, Any]]] | None:
    """(state, first epoch to run, history so far) from ``last.pt``, or None without one
    (``discard_stale_state`` has already removed state of other inputs)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    history = [dict(zip(state["history_keys"], row, strict=True)) for row in state["history"]]
    return state, int(state["epoch"]) + 1, history
