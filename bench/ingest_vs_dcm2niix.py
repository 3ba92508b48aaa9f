"""Benchmark: `medtailor ingest` against dcm2niix on a generated corpus.

Two corpora, each written once under bench/results/: CT series (default 50 series x 100
slices of 256 x 256 = 5,000 files), and with ``--volumes N`` multi-volume diffusion-like
MR series (N volumes of b-value and gradient per series, small EPI slices: many small
files, as the GE and Philips DWI exports that were 6-8x slower than dcm2niix). Both tools
convert the corpus to gzipped NIfTI; the wall time of each is reported with their ratio.
Usage: python bench/ingest_vs_dcm2niix.py [--series 50] [--slices 100] [--side 256]
       [--volumes 0] [--workers 2]
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


def write_corpus(root: Path, series: int, slices: int, side: int, volumes: int = 0) -> int:
    """``series`` series of ``slices`` slices, one classic file per image: CT volumes, or
    with ``volumes`` diffusion MR series of that many volumes (b = 0, then b = 1000 along
    directions on a spiral), InstanceNumber in acquisition order, as Philips and GE export
    DWI."""
    rng = np.random.default_rng(0)
    spacing = [1.8, 1.8, 2.5] if volumes else [0.7, 0.7, 1.5]
    affine = np.diag([*spacing, 1.0])
    count = 0
    for s in range(series):
        identity = PlantedIdentity(
            name=f"BENCH^P{s}", patient_id=f"B{s:05d}", birth_date="19600101"
        )
        for v in range(max(1, volumes)):
            hu = rng.integers(-1000, 1500, (side, side, slices)).astype(np.int16)
            datasets = ct_series_datasets(
                hu,
                affine,
                identity=identity,
                study_uid=f"1.2.826.0.1.{s}",
                series_uid=f"1.2.826.0.1.{s}.1",
                sop_uids=[f"1.2.826.0.1.{s}.1.{v}.{k + 1}" for k in range(slices)],
                compression="none",
                study_date="20240101",
            )
            for k, ds in enumerate(datasets):
                name = f"slice{k:04d}.dcm"
                if volumes:
                    angle = 2.4 * v
                    direction = [np.cos(angle) * 0.6, np.sin(angle) * 0.6, 0.8] if v else [0] * 3
                    ds.Modality = "MR"
                    ds.InstanceNumber = v * slices + k + 1
                    ds.DiffusionBValue = 0 if v == 0 else 1000
                    ds.DiffusionGradientOrientation = [round(float(x), 4) for x in direction]
                    name = f"IM{v * slices + k:05d}.dcm"
                write_dataset(ds, root / f"patient{s:03d}" / name)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--volumes", type=int, default=0, help="diffusion volumes per series")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    shape = f"{args.series}x{args.slices}x{args.side}"
    kind = f"dwi_corpus_{shape}x{args.volumes}" if args.volumes else f"corpus_{shape}"
    corpus = RESULTS / f"ingest_{kind}"
    if not corpus.is_dir():
        written = write_corpus(corpus, args.series, args.slices, args.side, args.volumes)
        print("files written:", written)
    files = sum(1 for p in corpus.rglob("*.dcm"))

    from medtailor.ingest import run_ingest

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["ingest"]["workers"] = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run_ingest(corpus, Path(tmp) / "ingest", params)
        ours = time.perf_counter() - started
    assert summary["volumes"] == args.series * max(1, args.volumes), summary
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
        "corpus": corpus.name,
        "files": files,
        "workers": args.workers,
        "medtailor_seconds": round(ours, 2),
        "dcm2niix_seconds": None if reference is None else round(reference, 2),
        "ratio": None if reference is None else round(ours / reference, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "ingest_vs_dcm2niix_dwi.json" if args.volumes else "ingest_vs_dcm2niix.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
