"""The training machinery on a tiny store: devices, batch norm, EMA, checkpoints, resume keys,
loud failures, and a real 2-process DistributedDataParallel run on CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medtailor.complexity import complexity
from medtailor.train.architecture import build_classifier, load_classifier
from medtailor.train.loop import sync_batchnorm, train_batches, train_model

from .conftest import BIN, ENV
from .tiny_store import TINY_ENTRY, write_tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    # 8 x 10 + 1 training patches: with batch 8 the last batch would hold a single patch.
    return write_tiny_store(tmp_path_factory.mktemp("tiny"), {"train": 81, "val": 24, "test": 24})


def test_macs_are_counted_on_the_models_own_device():
    model = build_classifier({**TINY_ENTRY, "model": "efficientnet_lite0"})
    on_cpu = complexity(model, (1, 32, 32))
    # On the meta device nothing is computed; a probe made on the CPU would fail to mix.
    on_meta = complexity(model.to("meta"), (1, 32, 32))
    assert on_meta == on_cpu and on_cpu["macs"] > 0


def test_the_last_batch_of_one_is_dropped_and_evaluation_takes_any_batch(store, tmp_path):
    assert train_batches(81, 8, 1) == (10, True)
    assert train_batches(5, 8, 1) == (1, False)  # one short batch is all there is: keep it
    assert train_batches(81, 8, 2) == (5, True)  # per process: 41 patches
    for head in ("nonlinear", "conv"):  # batch norm in the head
        entry = {**TINY_ENTRY, "head": {"type": head}, "batch_size": 8}
        train_model(head, entry, store, tmp_path / head, tmp_path / f"{head}.state", 0)
        # Predictions in batches of one, as a last evaluation batch may be.
        model, _ = load_classifier(tmp_path / head / "best.pt")
        saved = pd.read_parquet(tmp_path / head / "predictions.parquet")
        from medtailor.patches.store import PatchStore
        from medtailor.train.data import PatchDataset
        from medtailor.train.loop import predict

        val = PatchDataset(PatchStore(store), "val", 32, 1, False)
        probs = predict(model, val, 1, torch.device("cpu"))
        np.testing.assert_allclose(probs, saved[saved["split"] == "val"]["prob"], atol=1e-5)


def test_the_evaluated_ema_has_moved_from_the_initial_weights(store, tmp_path):
    entry = {**TINY_ENTRY, "model": "efficientnet_lite0", "head": {"type": "linear"}}
    train_model("ema", entry, store, tmp_path / "out", tmp_path / "state", seed=3)
    torch.manual_seed(3)  # the loop builds its model right after seeding
    initial = build_classifier(entry).state_dict()
    ema = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["model"]
    trained = torch.load(tmp_path / "state" / "last.pt", weights_only=True)["model"]

    def distance(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in a if k.endswith("weight"))

    # Ten steps at decay 0.99 without warm-up would move the EMA ~10% of the way.
    assert distance(ema, initial) > 0.5 * distance(trained, initial)


def test_sync_batchnorm_converts_for_gpus_and_is_skipped_on_cpu():
    model = build_classifier({**TINY_ENTRY, "head": {"type": "nonlinear"}})
    converted = sync_batchnorm(model, True, torch.device("cuda", 0))
    kinds = {type(m) for m in converted.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    kept = sync_batchnorm(build_classifier(TINY_ENTRY), True, torch.device("cpu"))
    assert torch.nn.SyncBatchNorm not in {type(m) for m in kept.modules()}


def test_a_checkpoint_rebuilds_its_model_without_params(store, tmp_path):
    entry = {**TINY_ENTRY, "model": "efficientnet_lite0", "truncate": 2, "head": {"type": "conv"}}
    train_model("carried", entry, store, tmp_path / "out", tmp_path / "state", 0)
    model, checkpoint = load_classifier(tmp_path / "out" / "best.pt")
    assert checkpoint["config"]["truncate"] == 2 and checkpoint["config"]["head"]["type"] == "conv"
    assert checkpoint["macs"] > 0 and checkpoint["parameters"] == sum(
        p.numel() for p in model.parameters()
    )
    image = torch.rand(2, 1, 32, 32)
    assert model(image).shape == (2, 2)


def test_state_of_other_inputs_is_deleted_not_resumed(store, tmp_path, caplog):
    entry = {**TINY_ENTRY, "epochs": 2}
    state = tmp_path / "state"
    train_model("keyed", entry, store, tmp_path / "out", state, 0)
    first = torch.load(state / "last.pt", weights_only=True)
    assert first["epoch"] == 2
    # The same configuration on a store with other patches: no resume from the finished run.
    other = write_tiny_store(tmp_path / "other", {"train": 81, "val": 24, "test": 24}, seed=9)
    caplog.set_level("INFO")
    summary = train_model("keyed", entry, other, tmp_path / "out", state, 0)
    assert "belongs to other inputs or settings; starting afresh" in caplog.text
    assert "resumed" not in caplog.text
    second = torch.load(state / "last.pt", weights_only=True)
    assert second["resume_key"] != first["resume_key"]
    assert len(pd.read_csv(tmp_path / "out" / "history.csv")) == 2
    assert summary["best_epoch"] in (1, 2)


def test_a_validation_split_without_positives_fails_loudly(tmp_path):
    store = write_tiny_store(
        tmp_path / "store", {"train": 24, "val": 12, "test": 12}, val_positives=False
    )
    with pytest.raises(RuntimeError, match="validation AUC is undefined in every epoch"):
        train_model("blind", TINY_ENTRY, store, tmp_path / "out", tmp_path / "state", 0)


def test_a_failing_stage_keeps_the_full_traceback_in_its_log(tmp_path, repo_params):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params))
    result = subprocess.run(
        [
            str(BIN / "medtailor"),
            "train",
            "--params",
            str(params),
            "--model",
            "lite0_imagenet",
            "--input",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medtailor train: error:") and "index.parquet" in last


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_and_only_rank_zero_writes(store, tmp_path, repo_params):
    """compute.gpus: 2 makes `medtailor train` relaunch itself under torchrun; without GPUs
    the two processes use gloo on the CPU, exactly the code path of a 2-GPU job."""
    params = json.loads(json.dumps(repo_params))
    params["compute"]["gpus"] = 2
    params["train"].update({k: v for k, v in TINY_ENTRY.items() if k in params["train"]})
    params["train"].update({"epochs": 2, "sync_batchnorm": True})
    params["models"] = {
        "ddp": {k: TINY_ENTRY[k] for k in ("model", "init", "head", "unfreeze", "truncate")}
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tracking = tmp_path / "mlflow.db"
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tracking}"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [
            str(BIN / "medtailor"),
            "train",
            "--params",
            "params.yaml",
            "--model",
            "ddp",
            "--input",
            str(store),
            "--output",
            "out",
            "--state",
            "state",
            "--metrics",
            "metrics.json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "torch.distributed.run" in result.stderr and "--nproc_per_node=2" in result.stderr
    assert "sync_batchnorm needs GPUs" in result.stderr
    summary = json.loads((tmp_path / "metrics.json").read_text())
    # Each process trains 41 of the 81 patches in batches of 8: 5 steps per epoch.
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and summary["train_patches"] == 81
    checkpoint = torch.load(tmp_path / "out" / "best.pt", weights_only=True)
    assert not any("module." in key for key in checkpoint["model"])  # unwrapped weights
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracking}")
    experiment = client.get_experiment_by_name("medtailor")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # rank 0 only
    assert runs[0].data.metrics["best_val_auc"] == summary["best_val_auc"]


def test_class_balanced_sampling_caps_negatives_and_draws_fresh_ones_each_epoch():
    from medtailor.train.data import balanced_indices

    labels = np.array([1] * 3 + [0] * 40)
    first = balanced_indices(labels, 2.0, np.random.default_rng(1))
    second = balanced_indices(labels, 2.0, np.random.default_rng(2))
    for chosen in (first, second):
        assert set(np.flatnonzero(labels == 1)) <= set(chosen)  # every positive, every epoch
        assert (labels[chosen] == 0).sum() == 6 and len(set(chosen)) == len(chosen)
    assert set(first) != set(second)
    assert len(balanced_indices(labels, None, np.random.default_rng(1))) == 43
    assert len(balanced_indices(labels, 100.0, np.random.default_rng(1))) == 43
    assert len(balanced_indices(np.zeros(5), 2.0, np.random.default_rng(1))) == 5


def test_training_with_a_negative_cap_sees_the_capped_epoch(store, tmp_path):
    # 81 training patches: 27 positives, 54 negatives; a cap of 1 trains on 27 + 27.
    entry = {**TINY_ENTRY, "max_negatives_per_positive": 1}
    summary = train_model("capped", entry, store, tmp_path / "out", tmp_path / "state", 0)
    assert summary["train_patches"] == 81 and summary["train_patches_per_epoch"] == 54


def test_data_loader_workers_stay_within_the_jobs_threads():
    from medtailor.train.loop import loader_workers

    assert loader_workers(4, 2) == 1  # 2 threads: the main process and one worker
    assert loader_workers(4, 1) == 0
    assert loader_workers(0, 8) == 0 and loader_workers(3, 8) == 3


def test_a_job_killed_by_sigterm_ends_its_mlflow_run_killed(store, tmp_path, repo_params):
    """Slurm sends SIGTERM at a job's time limit: the stage's MLflow run must end KILLED
    (not stay RUNNING forever), and the command exit with 143 like a terminated process."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    params = json.loads(json.dumps(repo_params))
    params["train"].update({k: v for k, v in TINY_ENTRY.items() if k in params["train"]})
    params["train"]["epochs"] = 200  # far longer than the test waits
    params["models"] = {
        "long": {k: TINY_ENTRY[k] for k in ("model", "init", "head", "unfreeze", "truncate")}
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [str(BIN / "medtailor"), "train", "--params", "params.yaml", "--model", "long"]
    command += ["--input", str(store), "--output", "out", "--state", "state"]
    command += ["--metrics", "metrics.json", "--threads", "1"]
    job = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = tmp_path / "state" / "last.pt"
    deadline = time.monotonic() + 300
    while not state.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # at least one epoch done: the run is open and training
    assert job.poll() is None, job.communicate()[1][-3000:]
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr[-3000:]
    assert "terminated by signal" in stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medtailor").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].info.end_time is not None
    assert runs[0].data.tags["git_dirty"] in {"true", "false", "unknown"}
