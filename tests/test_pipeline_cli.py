"""The stages as users run them (the `medtailor` command), their MLflow runs, and PHI safety."""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from .conftest import small

pytestmark = pytest.mark.slow


def medtailor(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "medtailor.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_params):
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump(small(repo_params)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for stage in ("synth", "ingest", "resample"):
        medtailor(stage, cwd=root, env=env)
    status = medtailor("status", cwd=root, env=env)
    return root, env, status.stdout


def planted_identifiers(synth: Path) -> set[str]:
    found = set()
    for path in synth.rglob("*"):
        if path.is_file() and "dicom" in path.parts:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found |= {str(ds.PatientID), str(ds.PatientBirthDate)}
            found |= {part for part in str(ds.PatientName).split("^") if len(part) > 3}
    return found


def readable_text(path: Path) -> str:
    """Everything a person or program could read out of an output file."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if path.suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data)).to_csv()
    if path.suffix == ".db":
        with sqlite3.connect(path) as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            return "\n".join(str(db.execute(f"select * from {t}").fetchall()) for t in tables)
    return data.decode("latin-1")


def test_no_planted_identifier_reaches_any_output_or_mlflow(project):
    root, _, _ = project
    identifiers = planted_identifiers(root / "data" / "synth")
    assert len(identifiers) >= 3 * 4  # name token, ID and birth date of every patient
    outputs = [
        p
        for p in root.rglob("*")
        if p.is_file() and "synth" not in p.relative_to(root).parts and p.name != "params.yaml"
    ]
    assert any(p.suffix == ".db" for p in outputs) and any(
        "mlartifacts" in p.parts for p in outputs
    )
    for path in outputs:
        text = readable_text(path).lower()
        leaked = [value for value in identifiers if value.lower() in text]
        assert not leaked, f"{path.relative_to(root)} contains {leaked}"


def test_each_stage_is_an_mlflow_run_with_params_and_counts(project):
    from mlflow.tracking import MlflowClient

    root, env, _ = project
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medtailor")
    runs = {
        r.data.tags["medtailor.stage"]: r for r in client.search_runs([experiment.experiment_id])
    }
    assert set(runs) == {"synth", "ingest", "resample"}
    ingest = runs["ingest"].data
    assert ingest.params["ingest.min_slices"] == "3"
    assert ingest.metrics["files_rejected"] == 0 and ingest.metrics["images"] > 0
    assert runs["resample"].data.metrics["megavoxels_per_second"] > 0
    assert len(ingest.tags["params_hash"]) == 16
    artifacts = {a.path for a in client.list_artifacts(runs["ingest"].info.run_id)}
    assert {"audit.csv", "ingest.json"} <= artifacts
    metrics = json.loads((root / "metrics" / "ingest.json").read_text())
    assert metrics["images"] == ingest.metrics["images"]


def test_status_tells_where_everything_is(project):
    _, _, out = project
    assert "data/ingest/audit.csv" in out
    assert "mlflow ui --backend-store-uri" in out and "--host 127.0.0.1" in out
    assert "a dvc repro is not recorded for Snakemake" in out


def test_status_says_where_the_time_went(tmp_path):
    from medtailor.cli import job_times, time_lines

    header = "s\th:m:s\tmax_rss\n"
    for name, seconds in (("train/a", 60.0), ("train/b", 30.0), ("split", 1.5)):
        path = tmp_path / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{header}{seconds}\t0:00:00\t100\n")
    rows = job_times(tmp_path)
    assert rows == [("train", 2, 90.0), ("split", 1, 1.5)]
    lines = time_lines(rows)
    assert "1.5 min of job time" in lines[0] and "train" in lines[1] and "98%" in lines[1]


def test_a_command_without_threads_runs_on_one():
    """A library's own default takes every core: on a busy 2-core machine detection ran 6x
    slower. Snakemake passes each rule's threads; without them a command takes one."""
    from medtailor.cli import build_parser

    for stage in ("detect", "resample", "split"):
        assert build_parser().parse_args([stage]).threads == 1


def test_threads_hold_torch_and_the_numerical_libraries_to_the_job(monkeypatch):
    import torch

    from medtailor.cli import set_threads

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
