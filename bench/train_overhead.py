"""Benchmark: throughput of the train stage against a bare timm + PyTorch loop.

Same model (efficientnet_lite0, 1 channel, 2 classes), batch (128) and input (64 x 64).
The bare loop trains on tensors already in memory; the stage reads a memory-mapped patch
store through its Dataset/DataLoader and runs its scheduler and EMA. Augmentation is
off in both, so the difference is the stage's own overhead (images/s of the training
passes only; the stage's validation is timed separately).
Usage: python bench/train_overhead.py [--patches 2048] [--epochs 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import yaml

from medtailor.patches.store import INDEX, PatchWriter

BATCH, SIZE = 128, 64


def make_store(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    counts = {("radiograph", "train"): n, ("radiograph", "val"): 256, ("radiograph", "test"): 2}
    writer = PatchWriter(root, counts, {"radiograph": (SIZE, SIZE)}, "float32")
    rows = []
    for (kind, split), count in counts.items():
        for row in range(count):
            writer.write(kind, split, row, rng.random((SIZE, SIZE), dtype=np.float32))
            rows.append(
                {
                    "patch_id": f"{split}{row}",
                    "kind": kind,
                    "split": split,
                    "row": row,
                    "label": row % 2,
                }
            )
    writer.close()
    pd.DataFrame(rows).to_parquet(root / INDEX)


def bare_loop(n: int, epochs: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=2, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    images, labels = torch.rand(n, 1, SIZE, SIZE), torch.arange(n) % 2
    rates = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            loss = torch.nn.functional.cross_entropy(
                model(images[start : start + BATCH]), labels[start : start + BATCH]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(n / (time.perf_counter() - started))
    return float(np.median(rates[1:] or rates))


def stage_loop(store: Path, n: int, epochs: int) -> float:
    from medtailor.train.loop import train_model

    params = yaml.safe_load(Path("params.yaml").read_text())
    entry = {
        **copy.deepcopy(params["train"]),
        "model": "efficientnet_lite0",
        "init": "scratch",
        "head": {"type": "linear"},
        "unfreeze": "all",
        "truncate": 0,
        "batch_size": BATCH,
        "epochs": epochs,
        "input_size": SIZE,
        "augmentation": {},
    }
    history: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        train_model(
            "bench", entry, store, Path(out), Path(out) / "state", 0, lambda m, e: history.append(m)
        )
    rates = [h["images_per_second"] for h in history]
    return float(np.median(rates[1:] or rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp), args.patches)
        bare = bare_loop(args.patches, args.epochs)
        stage = stage_loop(Path(tmp), args.patches, args.epochs)
    result = {
        "model": "efficientnet_lite0",
        "batch": BATCH,
        "input": SIZE,
        "patches": args.patches,
        "bare_images_per_second": round(bare, 1),
        "stage_images_per_second": round(stage, 1),
        "overhead_percent": round(100 * (bare / stage - 1), 2),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
