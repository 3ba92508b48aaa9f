"""Orchestration against the real thing: an MLflow server over REST, failures, reruns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from .conftest import BIN, ENV, run

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(server.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def rest(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_pipeline_logs_parent_and_child_runs_to_a_real_mlflow_server(project, mlflow_server):
    env = {**ENV, "MLFLOW_TRACKING_URI": mlflow_server}
    result = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", "metrics/resample.json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = rest(mlflow_server, "experiments/get-by-name?experiment_name=medtailor")[
        "experiment"
    ]
    runs = rest(
        mlflow_server,
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    )["runs"]
    by_stage = {}
    for found in runs:
        tags = {t["key"]: t["value"] for t in found["data"].get("tags", [])}
        by_stage[tags["medtailor.stage"]] = (found, tags)
    assert set(by_stage) == {"pipeline", "synth", "ingest", "resample"}
    parent, parent_tags = by_stage["pipeline"]
    assert parent["info"]["status"] == "FINISHED"
    assert {"git_commit", "params_hash", "dvc_lock_hash"} <= set(parent_tags)
    for stage in ("synth", "ingest", "resample"):
        child, tags = by_stage[stage]
        assert tags["mlflow.parentRunId"] == parent["info"]["run_id"], stage
        assert child["info"]["status"] == "FINISHED"
    ingest, _ = by_stage["ingest"]
    params = {p["key"]: p["value"] for p in ingest["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in ingest["data"]["metrics"]}
    assert (
        params["ingest.min_slices"] == "3"
        and metrics["files_rejected"] == 0
        and metrics["images"] > 0
    )
    listed = rest(mlflow_server, f"artifacts/list?run_id={ingest['info']['run_id']}")
    assert {"audit.csv", "ingest.json"} <= {f["path"] for f in listed["files"]}


def test_a_failing_job_is_loud_and_names_its_log(project):
    raw = project / "junk"
    raw.mkdir()
    (raw / "notes.txt").write_text("not an image")
    # Tables the tasks need, so the workflow's check of the data lets ingest run and fail.
    (raw / "annotations").mkdir()
    (raw / "annotations" / "boxes.csv").write_text("source,x0,y0,x1,y1\nnotes.txt,0,0,4,4\n")
    (raw / "annotations" / "labels.csv").write_text("source,label\nnotes.txt,notes.txt\n")
    params = (project / "params.yaml").read_text().replace("input: data/synth", f"input: {raw}")
    (project / "params.yaml").write_text(params)
    result = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1", "metrics/ingest.json"],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "logs/ingest.log" in result.stderr + result.stdout
    assert "no usable image" in (project / "logs" / "ingest.log").read_text()
    assert not (project / "metrics" / "ingest.json").exists()


def kill_snakemake_once(project, target: str, ready, timeout: float, delay: float = 0.0):
    """Run Snakemake for ``target`` and kill -9 it and its job once ``ready`` exists."""
    process = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", target],
        cwd=project,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not ready.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_an_interrupted_job_is_rerun_with_rerun_incomplete(project):
    # Kill Snakemake and its job while the job is writing its output folder.
    kill_snakemake_once(project, "metrics/synth.json", project / "data" / "synth" / "dicom", 120)
    dry = subprocess.run(
        [str(BIN / "snakemake"), "-n", "metrics/synth.json"],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert "incomplete" in (dry.stdout + dry.stderr).lower()
    # A killed Snakemake leaves its lock: the documented recovery is --unlock, then rerun.
    run([str(BIN / "snakemake"), "--unlock"], project)
    run(
        [str(BIN / "snakemake"), "--cores", "1", "--rerun-incomplete", "metrics/synth.json"],
        project,
    )
    assert (project / "metrics" / "synth.json").is_file()
    assert (
        "Nothing to be done"
        in run([str(BIN / "snakemake"), "-n", "metrics/synth.json"], project).stdout
    )


def test_a_train_job_killed_under_snakemake_resumes_where_it_stopped(project_with_patches):
    """kill -9 a `train` job (and its Snakemake) part-way, rerun with --rerun-incomplete:
    the job resumes from its last finished epoch (its state lives outside the outputs that
    Snakemake deletes) and ends exactly where an uninterrupted run ends."""
    import pandas as pd
    import torch
    import yaml

    project = project_with_patches
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"] = {"lite0_scratch": params["models"]["lite0_scratch"]}
    params["train"]["epochs"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake = str(BIN / "snakemake")

    target = "metrics/train/lite0_scratch.json"
    state = project / "data" / "train_state" / "lite0_scratch" / "last.pt"
    kill_snakemake_once(project, target, state, 600, delay=0.5)  # into the second epoch
    finished = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= finished < 4, "the job must be killed part-way"

    run([snakemake, "--unlock"], project)
    run([snakemake, "--cores", "1", "--rerun-incomplete", target], project)
    log = (project / "logs" / "train" / "lite0_scratch.log").read_text()
    assert f"resumed at epoch {finished + 1} (of 4)" in log

    resumed = json.loads((project / target).read_text())
    model_dir = project / "data" / "models" / "lite0_scratch"
    resumed_predictions = pd.read_parquet(model_dir / "predictions.parquet")
    resumed_history = pd.read_csv(model_dir / "history.csv")
    resumed_weights = torch.load(model_dir / "best.pt", weights_only=True)["model"]
    # The same job uninterrupted, under the same Snakemake (same threads), from no state.
    shutil.rmtree(project / "data" / "train_state")
    run([snakemake, "--cores", "1", "--forcerun", "train", target], project)
    assert "resumed" not in (project / "logs" / "train" / "lite0_scratch.log").read_text()
    straight = json.loads((project / target).read_text())
    for key in ("best_epoch", "best_val_auc", "final_val_auc", "final_train_loss"):
        assert resumed[key] == straight[key], key
    pd.testing.assert_frame_equal(
        resumed_predictions, pd.read_parquet(model_dir / "predictions.parquet")
    )
    # Every epoch's losses and AUCs (not the timing), and the final weights, exactly.
    pd.testing.assert_frame_equal(
        resumed_history.drop(columns="images_per_second"),
        pd.read_csv(model_dir / "history.csv").drop(columns="images_per_second"),
    )
    straight_weights = torch.load(model_dir / "best.pt", weights_only=True)["model"]
    for name, tensor in straight_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
