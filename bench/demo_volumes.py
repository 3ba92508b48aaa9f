"""The demo's synthetic volumes, made the way the pipeline makes them, for the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtailor.ingest import run_ingest
from medtailor.resample import run_resample
from medtailor.split import run_split
from medtailor.synth import generate_dataset


def prepare_demo_volumes(params: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """synth, ingest, resample and split into ``root``; returns (resample dir, split.csv)."""
    generate_dataset(params, root / "synth")
    run_ingest(root / "synth", root / "ingest", params)
    run_resample(root / "ingest", root / "resample", params)
    run_split(root / "resample", root / "split.csv", params)
    return root / "resample", root / "split.csv"
