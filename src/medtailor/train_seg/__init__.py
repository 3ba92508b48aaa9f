"""``medtailor train-seg --model <name>``: train one named 3D segmentation configuration.

A configuration is ``seg_models.<name>`` in params.yaml merged over the ``train_seg``
recipe (``recipe`` overrides it per model), like ``train``'s ``models``. The data are the
resampled volumes that have a label map, split by patient as everywhere else. Outputs in
``data/seg_models/<name>/``: ``best.pt`` (the weights of the best validation Dice with the
configuration and data facts that rebuild the network), ``history.csv``, ``dice.parquet``
(Dice per val/test volume and class), and the predicted label maps of the val and test
volumes as NIfTI on the resampled grid (``predictions/``) and on the ingested grid
(``predictions_native/``). The resumable state lives in ``data/train_seg_state/<name>/``,
which Snakemake and DVC leave alone when they rerun a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtailor.config import named_entry
from medtailor.train_seg.loop import MetricSink, train_segmentation


def seg_entry(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The full configuration of segmentation model ``name``: recipe, then its own keys."""
    return named_entry(params, "seg_models", "train_seg", name)


def run_train_seg(
    name: str,
    resample_dir: Path,
    split_csv: Path,
    ingest_dir: Path | None,
    out_dir: Path,
    state_dir: Path,
    params: dict[str, Any],
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train configuration ``name``; resumable state goes to ``state_dir``, which must lie
    outside what a workflow deletes before it reruns the job."""
    entry = seg_entry(params, name)
    return train_segmentation(
        name,
        entry,
        resample_dir,
        split_csv,
        ingest_dir,
        out_dir,
        state_dir,
        int(params["seed"]),
        sink,
    )
