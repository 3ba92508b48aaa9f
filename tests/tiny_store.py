"""A small patch store written in milliseconds, for tests of the training machinery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medtailor.patches import INDEX_COLUMNS
from medtailor.patches.store import INDEX, PatchWriter, write_fingerprint

TINY_ENTRY = {
    "kind": "radiograph",
    "model": "resnet10t",
    "init": "scratch",
    "head": {"type": "nonlinear"},
    "unfreeze": "all",
    "truncate": 0,
    "input_size": 32,
    "input_channels": 1,
    "channel_mode": "timm",
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "warmup_epochs": 0,
    "batch_size": 8,
    "epochs": 1,
    "ema_decay": 0.99,
    "class_weighting": "balanced",
    "augmentation": {},
    "compile": False,
    "sync_batchnorm": False,
    "num_workers": 0,
    "max_negatives_per_positive": None,
}


def write_tiny_store(
    root: Path, counts: dict[str, int], seed: int = 0, val_positives: bool = True
) -> Path:
    """Patches of 32 x 32: positives carry a bright square, negatives only noise. Every
    split has patients of four patches each."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in counts.items():
        for k in range(n):
            label = int(k % 3 == 0) if (split != "val" or val_positives) else 0
            rows.append(
                {
                    "patch_id": f"{split}-{k}",
                    "image_id": f"{split}-image-{k // 2}",
                    "study_id": f"{split}-study-{k // 4}",
                    "patient_id": f"{split}-patient-{k // 4}",
                    "kind": "radiograph",
                    "split": split,
                    "row": k,
                    "score": 50.0,
                    "best_iou": 0.8 if label else 0.0,
                    "gt_id": "",
                    "label": label,
                }
            )
    index = pd.DataFrame(rows).reindex(columns=INDEX_COLUMNS)
    root.mkdir(parents=True, exist_ok=True)
    writer = PatchWriter(
        root, {("radiograph", s): n for s, n in counts.items()}, {"radiograph": (32, 32)}, "float32"
    )
    for row in index.itertuples():
        patch = rng.random((32, 32)).astype(np.float32) * 0.3
        if row.label == 1:
            x, y = rng.integers(4, 20, 2)
            patch[x : x + 8, y : y + 8] += 0.6
        writer.write("radiograph", row.split, row.row, patch)
    writer.close()
    index.to_parquet(root / INDEX, index=False)
    write_fingerprint(root)
    return root
