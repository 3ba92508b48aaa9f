"""The training stage on the synthetic patch store: quality, determinism, kill and resume."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medtailor.train import run_train

pytestmark = pytest.mark.slow


def config(detection_run, **recipe):
    params = copy.deepcopy(detection_run["params"])
    params["models"] = {
        "under_test": {
            "model": "efficientnet_lite0",
            "init": "imagenet",
            "head": {"type": "linear"},
            "unfreeze": "all",
            "truncate": 0,
            "recipe": recipe,
        }
    }
    return params


def test_pretrained_lite0_learns_the_synthetic_fracture_task(detection_run, tmp_path):
    params = config(detection_run)
    history = []
    summary = run_train(
        "under_test",
        detection_run["root"] / "patches",
        tmp_path,
        params,
        lambda m, e: history.append(m),
    )
    # Chance is 0.5; the model is chosen on validation, so judge it on the untouched test split.
    assert summary["best_val_auc"] > 0.8
    assert summary["test_auc_at_best"] > 0.8
    assert len(history) == params["train"]["epochs"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    assert set(predictions["split"]) == {"val", "test"}
    assert predictions["prob"].between(0, 1).all()
    assert summary["parameters"] > 3e6 and summary["macs"] > 0


def test_two_runs_with_one_seed_are_identical(detection_run, tmp_path):
    params = config(detection_run, epochs=2)
    first = run_train("under_test", detection_run["root"] / "patches", tmp_path / "a", params)
    second = run_train("under_test", detection_run["root"] / "patches", tmp_path / "b", params)
    assert first["best_val_auc"] == second["best_val_auc"]
    assert first["final_train_loss"] == second["final_train_loss"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a" / "predictions.parquet"),
        pd.read_parquet(tmp_path / "b" / "predictions.parquet"),
    )


def test_a_killed_run_resumes_to_the_same_result(detection_run, tmp_path):
    params = config(detection_run, epochs=4)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    def command(out):
        return [
            sys.executable,
            "-m",
            "medtailor.cli",
            "train",
            "--params",
            str(params_file),
            "--model",
            "under_test",
            "--input",
            str(detection_run["root"] / "patches"),
            "--output",
            str(out),
            "--metrics",
            str(out / "metrics.json"),
        ]

    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while (
        not (interrupted / "last.pt").exists() and time.time() < deadline and process.poll() is None
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(interrupted / "last.pt", weights_only=True)
    assert 1 <= state["epoch"] < 4, "the run must be killed part-way"
    assert not (interrupted / "predictions.parquet").exists()

    subprocess.run(command(interrupted), env=env, check=True, capture_output=True)
    straight = pd.read_csv(tmp_path / "straight" / "history.csv")
    resumed = pd.read_csv(interrupted / "history.csv")
    columns = ["epoch", "train_loss", "val_loss", "val_auc", "learning_rate"]
    pd.testing.assert_frame_equal(straight[columns], resumed[columns])
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "straight" / "predictions.parquet"),
        pd.read_parquet(interrupted / "predictions.parquet"),
    )
    assert np.isfinite(resumed["val_auc"]).all()
