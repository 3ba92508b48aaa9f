"""``medtailor score``: a frozen model (a bundle, ``medtailor.predict.bundle``) scores the
test split of a patch store, as the trained project scored its own test split; what
``predict`` and an external-validation project (``medtailor init --external``) run instead
of training. Writes ``predictions.parquet`` (the predictions contract of ``train``, split
``test`` only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtailor.imageio import atomic_output
from medtailor.predict.bundle import CLASSIFIER_FILE, BundleError, read_bundle

__all__ = ["run_score", "score_patches"]


def score_patches(bundle: Path, store_dir: Path) -> tuple[Any, np.ndarray, torch.nn.Module]:
    """(dataset, probabilities, classifier) of the bundle's classifier on every test patch
    of its kind in ``store_dir``."""
    from medtailor.patches.store import PatchStore
    from medtailor.train.architecture import load_classifier
    from medtailor.train.data import PatchDataset
    from medtailor.train.loop import predict

    record, _, _ = read_bundle(bundle)
    store = PatchStore(store_dir)

    def what(task: dict[str, Any]) -> tuple[Any, list[str]]:
        return task.get("task"), list(task.get("classes", []))

    if what(store.task()) != what(record["task"]):
        raise BundleError(
            f"{store_dir}: its patches are {store.task()}, but {record['model']} classifies "
            f"{record['task']}"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier, checkpoint = load_classifier(bundle / CLASSIFIER_FILE, device)
    config = checkpoint["config"]
    dataset = PatchDataset(
        store,
        "test",
        int(config["input_size"]),
        int(config["input_channels"]),
        False,
        kind=record["input"]["kind"],
    )
    probs = predict(classifier, dataset, int(config.get("batch_size", 32)), device)
    return dataset, probs, classifier


def run_score(bundle: Path, store_dir: Path, out_dir: Path) -> dict[str, Any]:
    from medtailor.train.loop import prediction_table

    record, _, _ = read_bundle(bundle)
    dataset, probs, _ = score_patches(bundle, store_dir)
    table = prediction_table(record["model"], "test", dataset, probs)
    table = table[["patch_id", "model", "split", "target", "prob", "label"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "predictions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    labelled = table[table["label"] >= 0]
    return {
        "patches": len(table),
        "positives": int((labelled["label"] == 1).sum()),
        "mean_probability": float(table["prob"].mean()) if len(table) else 0.0,
    }
