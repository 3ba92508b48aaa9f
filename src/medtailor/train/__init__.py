"""``medtailor train --model <name>``: fine-tune one named model configuration.

A configuration is ``models.<name>`` in params.yaml merged over the ``train`` recipe
defaults (``recipe`` overrides them per model). Outputs in ``data/models/<name>/``:
``best.pt`` (EMA weights of the best validation AUC, with the configuration that rebuilds
the model), ``predictions.parquet`` (probabilities for every val and test patch),
``history.csv``. The resumable state (``last.pt``) lives in ``data/train_state/<name>/``,
which Snakemake and DVC leave alone when they rerun a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtailor.config import named_entry
from medtailor.train.loop import MetricSink, train_model


def model_entry(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The full configuration of model ``name``: recipe defaults, then the entry's own keys."""
    return named_entry(params, "models", "train", name)


def model_info(
    entry: dict[str, Any], num_classes: int = 2, input_size: int | None = None
) -> dict[str, Any]:
    """Parameters and MACs of a configuration (random weights: nothing is downloaded)."""
    from medtailor.complexity import complexity
    from medtailor.train.architecture import build_classifier

    size = int(input_size or entry["input_size"])
    built = build_classifier(
        {**entry, "init": "scratch"} if not entry["init"].startswith("gabor") else entry,
        num_classes,
    )
    return {
        "model": entry["model"],
        "input_size": size,
        **complexity(built, (int(entry["input_channels"]), size, size)),
    }


def run_train(
    name: str,
    store_dir: Path,
    out_dir: Path,
    state_dir: Path,
    params: dict[str, Any],
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train configuration ``name``; resumable state goes to ``state_dir``, which must lie
    outside what a workflow deletes before it reruns the job."""
    entry = model_entry(params, name)
    return train_model(name, entry, store_dir, out_dir, state_dir, int(params["seed"]), sink)
