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
from sklearn.metrics import roc_auc_score

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


@pytest.fixture(scope="module")
def pretrained_lite0(detection_run, tmp_path_factory) -> dict:
    """The demo's pre-trained Lite0 recipe (patches seen at 128 px) trained once on the
    synthetic patches, for the tests of what it learns and where its maps point."""
    params = config(detection_run, input_size=128)
    out = tmp_path_factory.mktemp("pretrained_lite0")
    history: list[dict] = []
    summary = run_train(
        "under_test",
        detection_run["root"] / "patches",
        out,
        out / "state",
        params,
        lambda m, e: history.append(m),
    )
    return {"out": out, "summary": summary, "history": history, "params": params}


def test_pretrained_lite0_learns_the_synthetic_fracture_task(detection_run, pretrained_lite0):
    out, params = pretrained_lite0["out"], pretrained_lite0["params"]
    summary, history = pretrained_lite0["summary"], pretrained_lite0["history"]
    # Chance is 0.5; the model is chosen on validation, so judge it on the untouched test split
    # (here, by the test; training itself reports validation numbers only).
    assert summary["best_val_auc"] > 0.8
    assert not any("test" in key for key in summary)
    assert len(history) == params["train"]["epochs"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    predictions = pd.read_parquet(out / "predictions.parquet")
    test = predictions[predictions["split"] == "test"].merge(
        pd.read_parquet(detection_run["root"] / "patches" / "index.parquet")[
            ["patch_id", "best_iou"]
        ],
        on="patch_id",
    )
    # Judge recognition on the patches whose label is not a convention: a candidate with
    # 0.2 <= IoU <= 0.5 holds most of a fracture yet counts as negative at test (issue 9's
    # rule), and on a test split of ~30 patches three of them cap the AUC near 0.82 for a
    # model that recognises every fracture.
    clear = test[(test["label"] == 1) | (test["best_iou"] < 0.2)]
    # Enough of each for the AUC to mean something (64 pairs or more; the detector's test
    # candidates leave 8 clear negatives and 12 positives since its input divisor was fixed).
    assert (clear["label"] == 0).sum() >= 8 and (clear["label"] == 1).sum() >= 8
    assert roc_auc_score(clear["label"], clear["prob"]) > 0.85
    assert set(predictions["split"]) == {"val", "test"}
    assert predictions["prob"].between(0, 1).all()
    assert summary["parameters"] > 3e6 and summary["macs"] > 0


def test_the_maps_of_a_pretrained_model_point_at_the_fracture(detection_run, pretrained_lite0):
    """Issue 9 item 16's pointing game, end to end on trained weights: for the pre-trained
    Lite0, the maximum of its LayerCAM map (the default evaluate.cam_method) falls inside
    the lesion box for most validation and test true positives, far above chance (the box
    covers about a sixth of a patch). Measured 21 of 25; Grad-CAM's maps 9 of 25."""
    from medtailor.evaluate.report import gradcam_pointing_game
    from medtailor.patches.store import PatchStore
    from medtailor.tables import read_boxes
    from medtailor.train.architecture import load_classifier

    out, params = pretrained_lite0["out"], pretrained_lite0["params"]
    model, checkpoint = load_classifier(out / "best.pt")
    assert checkpoint["config"]["input_size"] == 128
    game = gradcam_pointing_game(
        model,
        checkpoint["config"],
        pd.read_parquet(out / "predictions.parquet"),
        PatchStore(detection_run["root"] / "patches"),
        read_boxes(detection_run["root"] / "resample" / "boxes.parquet"),
        params,
        0.5,
    )
    assert game["method"] == params["evaluate"]["cam_method"] == "layercam"
    assert game["true_positives"] >= 10, game
    assert game["hits"] > 2 / 3 * game["true_positives"] and game["chance"] < 0.25, game


def test_two_runs_with_one_seed_are_identical(detection_run, tmp_path):
    params = config(detection_run, epochs=2)
    store = detection_run["root"] / "patches"
    first = run_train("under_test", store, tmp_path / "a", tmp_path / "a.state", params)
    second = run_train("under_test", store, tmp_path / "b", tmp_path / "b.state", params)
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
            "--state",
            str(out.with_name(out.name + ".state")),
            "--metrics",
            str(out / "metrics.json"),
        ]

    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    last = tmp_path / "interrupted.state" / "last.pt"
    process = subprocess.Popen(
        command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(last, weights_only=True)
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
