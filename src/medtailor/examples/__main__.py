"""``python -m medtailor.examples``: every example at its CPU scale (``make reproduce``).

Each example becomes a project under ``--into`` (``medtailor init --example``, once) and
runs through Snakemake; a project that exists is resumed, so Snakemake reruns only what
is missing. ``runs.csv`` records each run's wall-clock time and exit status, the numbers
docs/reproductions.md quotes.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medtailor.examples import example_names, load_example


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medtailor.examples", description=__doc__)
    parser.add_argument(
        "--datasets", type=Path, required=True, help="folder holding the public datasets"
    )
    parser.add_argument("--into", type=Path, default=Path("reproductions"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("names", nargs="*", help=f"examples (default: all: {example_names()})")
    args = parser.parse_args(argv)
    medtailor, snakemake = shutil.which("medtailor"), shutil.which("snakemake")
    if not medtailor or not snakemake:
        parser.error("medtailor and snakemake must be on PATH (make setup)")
    args.into.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.names or example_names():
        example = load_example(name)
        source, project = args.datasets / example["dataset"], args.into / name
        if not source.is_dir():
            print(f"{name}: {source} is absent; skipped", file=sys.stderr)
            continue
        if not (project / "params.yaml").is_file():
            init = [medtailor, "init", str(project), "--example", name, "--source", str(source)]
            subprocess.run(init, check=True)
        started = time.perf_counter()
        code = subprocess.run([snakemake, "--cores", str(args.cores)], cwd=project).returncode
        minutes = (time.perf_counter() - started) / 60
        failed += code != 0
        with (args.into / "runs.csv").open("a", newline="") as out:
            csv.writer(out).writerow(
                [name, time.strftime("%Y-%m-%dT%H:%M"), f"{minutes:.1f}", code]
            )
        print(f"{name}: {'done' if code == 0 else f'failed ({code})'} in {minutes:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
