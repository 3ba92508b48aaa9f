"""Benchmark: `medtailor ingest` against dcm2niix on a generated corpus of CT series.

The corpus (default 50 series x 100 slices of 256 x 256 = 5,000 files) is written once
under bench/results/ingest_corpus. Both tools convert it to gzipped NIfTI; the wall time
of each is reported with their ratio.
Usage: python bench/ingest_vs_dcm2niix.py [--series 50] [--slices 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from medtailor.synth.dicom_writer import PlantedIdentity, ct_series_datasets, write_dataset

RESULTS = Path(__file__).parent / "results"


def write_corpus(root: Path, series: int, slices: int, side: int) -> int:
    rng = np.random.default_rng(0)
    affine = np.diag([0.7, 0.7, 1.5, 1.0])
    count = 0
    for s in range(series):
        hu = rng.integers(-1000, 1500, (side, side, slices)).astype(np.int16)
        identity = PlantedIdentity(
            name=f"BENCH^P{s}", patient_id=f"B{s:05d}", birth_date="19600101"
        )
        datasets = ct_series_datasets(
            hu,
            affine,
            identity=identity,
            study_uid=f"1.2.826.0.1.{s}",
            series_uid=f"1.2.826.0.1.{s}.1",
            sop_uids=[f"1.2.826.0.1.{s}.1.{k + 1}" for k in range(slices)],
            compression="none",
            study_date="20240101",
        )
        for k, ds in enumerate(datasets):
            write_dataset(ds, root / f"patient{s:03d}" / f"slice{k:04d}.dcm")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    corpus = RESULTS / f"ingest_corpus_{args.series}x{args.slices}x{args.side}"
    if not corpus.is_dir():
        print("files written:", write_corpus(corpus, args.series, args.slices, args.side))
    files = sum(1 for p in corpus.rglob("*.dcm"))

    from medtailor.ingest import run_ingest

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["ingest"]["workers"] = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run_ingest(corpus, Path(tmp) / "ingest", params)
        ours = time.perf_counter() - started
    assert summary["volumes"] == args.series, summary
    reference = None
    if shutil.which("dcm2niix"):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run(
                # One file per series (SeriesInstanceUID): the series share a series number.
                ["dcm2niix", "-z", "y", "-b", "n", "-f", "%j", "-o", tmp, str(corpus)],
                check=True,
                capture_output=True,
            )
            reference = time.perf_counter() - started
    result = {
        "files": files,
        "workers": args.workers,
        "medtailor_seconds": round(ours, 2),
        "dcm2niix_seconds": None if reference is None else round(reference, 2),
        "ratio": None if reference is None else round(ours / reference, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest_vs_dcm2niix.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
