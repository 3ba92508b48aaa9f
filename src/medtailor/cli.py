"""The ``medtailor`` command: one subcommand per pipeline stage, each one MLflow run.

Snakemake rules and DVC stages call exactly these subcommands; every one of them reads
and validates params.yaml first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtailor import __version__
from medtailor.config import ParamsError, load_params

log = logging.getLogger("medtailor")
DATA = Path("data")
METRICS = Path("metrics")


def _record_summary(summary: dict[str, Any], metrics: Path, artifacts: list[Path]) -> None:
    """Write the stage summary as its DVC metrics file and log it, with artefacts, to MLflow."""
    import mlflow

    from medtailor.imageio import atomic_path

    metrics.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(metrics)
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(metrics)
    mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float)})
    for path in [metrics, *artifacts]:
        if path.exists():
            mlflow.log_artifact(str(path))


def cmd_synth(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.synth import generate_dataset
    from medtailor.tracking import stage_run

    with stage_run("synth", params):
        summary = generate_dataset(params, args.output)
        _record_summary(summary, args.metrics, [])
    return summary


def cmd_ingest(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.ingest import run_ingest
    from medtailor.tracking import stage_run

    source = args.input or Path(params["ingest"]["input"])
    with stage_run("ingest", params):
        summary = run_ingest(source, args.output, params)
        _record_summary(summary, args.metrics, [args.output / "audit.csv"])
    return summary


def cmd_resample(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.resample import run_resample
    from medtailor.tracking import stage_run

    with stage_run("resample", params):
        summary = run_resample(args.input, args.output, params)
        _record_summary(summary, args.metrics, [])
    return summary


def cmd_status(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.tracking import tracking_uri

    lines = ["medtailor outputs:"]
    for stage, what in [
        ("synth", "synthetic raw data"),
        ("ingest", "manifest.parquet, boxes.parquet, images/, labels/"),
        ("resample", "manifest.parquet, boxes.parquet, images/, labels/"),
    ]:
        folder = args.data / stage
        summary_file = METRICS / f"{stage}.json"
        state = "missing" if not folder.exists() else "done"
        lines.append(f"  {stage:<9} {folder}/  ({what}) [{state}]")
        if summary_file.exists():
            lines.append(f"            summary: {json.loads(summary_file.read_text())}")
    audit = args.data / "ingest" / "audit.csv"
    if audit.exists():
        n = max(sum(1 for _ in audit.open()) - 1, 0)
        lines.append(f"  audit     {audit}  ({n} rejected input(s), each with its reason)")
    uri = tracking_uri(params["tracking"])
    lines.append(f"  MLflow    {uri}  (experiment '{params['tracking']['experiment']}')")
    lines.append(
        f"            browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )
    print("\n".join(lines))
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtailor",
        description="Reproducible medical-imaging pipeline: "
        "synth -> ingest -> resample -> (detect, patches, train, search, evaluate).",
    )
    parser.add_argument("--version", action="version", version=f"medtailor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def stage(name: str, func: Callable, help_text: str, output: Path, input_help: str | None):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--params",
            type=Path,
            default=Path("params.yaml"),
            help="params file (default: params.yaml)",
        )
        p.add_argument(
            "--output", type=Path, default=output, help=f"output folder (default: {output})"
        )
        metrics = METRICS / f"{name}.json"
        p.add_argument(
            "--metrics",
            type=Path,
            default=metrics,
            help=f"summary metrics JSON (default: {metrics})",
        )
        if input_help:
            p.add_argument("--input", type=Path, default=None, help=input_help)
        p.set_defaults(func=func)
        return p

    stage(
        "synth",
        cmd_synth,
        "Write the deterministic synthetic dataset (DICOM radiographs and CT series, NIfTI "
        "volumes, label maps, boxes) from params 'synth' and 'seed'.",
        DATA / "synth",
        None,
    )
    stage(
        "ingest",
        cmd_ingest,
        "Audit and convert raw DICOM/NIfTI under the input folder to NIfTI with a "
        "pseudonymous manifest (manifest.parquet), boxes (boxes.parquet) and an audit "
        "report (audit.csv) of every rejected file.",
        DATA / "ingest",
        "raw data folder (default: params ingest.input)",
    )
    p = stage(
        "resample",
        cmd_resample,
        "Resample ingested volumes to isotropic spacing and radiographs to a fixed pixel "
        "spacing (params 'resample'); label maps and boxes follow their images.",
        DATA / "resample",
        "ingest output folder (default: data/ingest)",
    )
    p.set_defaults(input=DATA / "ingest")
    status = sub.add_parser(
        "status", help="Show where the outputs, audit report and MLflow runs are."
    )
    status.add_argument("--params", type=Path, default=Path("params.yaml"))
    status.add_argument("--data", type=Path, default=DATA, help="data folder (default: data)")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params = load_params(args.params)
        summary = args.func(args, params)
    except ParamsError as exc:
        print(f"medtailor {args.command}: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"medtailor {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if summary:
        print(json.dumps({args.command: summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
