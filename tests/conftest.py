"""Shared fixtures: the repo's params, a small synthetic dataset, its ingest and resample, and
the pipeline runs that several end-to-end tests go on from (run once, copied or read)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medtailor.workflow.dvc_stages import write_dvc_yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write into the project's own MLflow store."""
    store = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    mp.setenv("DVC_NO_ANALYTICS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture()
def params(repo_params: dict) -> dict:
    return copy.deepcopy(repo_params)


def small(params: dict) -> dict:
    """A dataset small enough for unit tests that still has every kind of input.

    Six patients, placed 4/1/1 by the split key below, each with lesions on its radiographs;
    20 short detector epochs find the validation and test lesions (training refuses a
    validation split without positives), 2 volume-detector and 2 segmentation epochs only
    check the wiring.
    """
    params = copy.deepcopy(params)
    params["synth"]["n_patients"] = 6
    params["synth"]["radiograph_studies_per_patient"] = 1
    params["split"]["key"] = "tests-2"
    params["detector"]["radiograph"].update({"epochs": 20, "validate_every": 20})
    params["detector"]["volume"]["epochs"] = 2
    params["train"]["epochs"] = 2
    # A detector trained for 2 epochs scores low: keep every candidate so each split has patches.
    params["patches"]["min_score"] = 2.0
    params["evaluate"]["bootstrap_replicates"] = 100
    # The searches have their own end-to-end tests (test_search_stage.py, test_search_seg.py).
    params["search"]["enabled"] = False
    params["search_seg"]["enabled"] = False
    # The studies have their own end-to-end test (test_study.py).
    for study in params.get("studies", {}).values():
        study["enabled"] = False
    # Segmentation wiring only (test_train_seg.py tests what it learns).
    params["train_seg"].update(
        {"patch_size": [16, 16, 16], "samples_per_volume": 1, "epochs": 2, "validate_every": 2}
    )
    for entry in params["seg_models"].values():
        entry.update({"filters": 4, "max_filters": 16})
    # Two threads a job (the demo runs one): the rerun test checks that Snakemake never
    # runs two such jobs at once on 2 cores.
    params["compute"]["threads"] = 2
    return params


@pytest.fixture(scope="session")
def synth_dir(repo_params: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtailor.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(small(repo_params), out)
    return out


@pytest.fixture(scope="session")
def ingested(synth_dir: Path, repo_params: dict, tmp_path_factory: pytest.TempPathFactory):
    from medtailor.ingest import run_ingest

    out = tmp_path_factory.mktemp("ingest")
    summary = run_ingest(synth_dir, out, small(repo_params))
    return out, summary


@pytest.fixture(scope="session")
def resampled(ingested, repo_params: dict, tmp_path_factory: pytest.TempPathFactory):
    from medtailor.resample import run_resample

    out = tmp_path_factory.mktemp("resample")
    summary = run_resample(ingested[0], out, small(repo_params))
    return out, summary


@pytest.fixture(scope="session")
def seg_data(resampled, ingested, repo_params, tmp_path_factory):
    """The labelled volumes, split: (resample folder, split table, ingest folder, params)."""
    from medtailor.split import run_split

    params = small(repo_params)
    split_csv = tmp_path_factory.mktemp("seg_split") / "split.csv"
    run_split(resampled[0], split_csv, params)
    return resampled[0], split_csv, ingested[0], params


@pytest.fixture(scope="session")
def detection_run(repo_params: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default synthetic dataset through split, train_detector, detect and patches."""
    from medtailor.detect import run_detect, run_train_detector
    from medtailor.ingest import run_ingest
    from medtailor.patches import run_patches
    from medtailor.resample import run_resample
    from medtailor.split import run_split
    from medtailor.synth import generate_dataset

    root = tmp_path_factory.mktemp("detection")
    params = copy.deepcopy(repo_params)
    generate_dataset(params, root / "synth")
    run_ingest(root / "synth", root / "ingest", params)
    run_resample(root / "ingest", root / "resample", params)
    split_csv = root / "split" / "split.csv"
    run_split(root / "resample", split_csv, params)
    history: list[tuple[int, dict]] = []
    train_summary = run_train_detector(
        root / "resample",
        split_csv,
        root / "detector",
        params,
        lambda m, step: history.append((step, m)),
    )
    detect_summary = run_detect(
        root / "resample", root / "detector", root / "candidates.parquet", params
    )
    patches_summary = run_patches(
        root / "resample",
        split_csv,
        root / "candidates.parquet",
        root / "patches",
        params,
        root / "plots",
    )
    return {
        "root": root,
        "params": params,
        "split_csv": split_csv,
        "train": train_summary,
        "history": history,
        "detect": detect_summary,
        "patches": patches_summary,
    }


@pytest.fixture(scope="session")
def evaluation_run(detection_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two short trainings (ImageNet and scratch EfficientNet-Lite0) and their evaluation."""
    from medtailor.evaluate import run_evaluate
    from medtailor.train import run_train
    from medtailor.train_seg import run_train_seg

    root = tmp_path_factory.mktemp("evaluation")
    params = copy.deepcopy(detection_run["params"])
    params["models"] = {
        name: {
            "model": "efficientnet_lite0",
            "init": init,
            "head": {"type": "linear"},
            "unfreeze": "all",
            "truncate": 0,
            "recipe": {"epochs": 3},
        }
        for name, init in (("lite0_imagenet", "imagenet"), ("lite0_scratch", "scratch"))
    }
    params["evaluate"]["bootstrap_replicates"] = 200
    info = {}
    for name in params["models"]:
        info[name] = run_train(
            name,
            detection_run["root"] / "patches",
            root / "models" / name,
            root / "state" / name,
            params,
        )
    folders = {name: root / "models" / name for name in params["models"]}
    # A tiny segmentation run, so the report's Dice section is exercised too.
    params["train_seg"].update(
        {"patch_size": [16, 16, 16], "samples_per_volume": 1, "epochs": 1, "validate_every": 1}
    )
    # Two networks, so the paired comparison is exercised: the baseline and a searched-space
    # one named in params (2 levels: 16^3 patches halve 3 times).
    params["seg_models"] = {
        "dynunet_tiny": {"model": "dynunet", "filters": 4, "max_filters": 16},
        "c2fnas_tiny": {"model": "c2fnas", "levels": [1, 2, 1, 0], "max_level": 2, "filters": 4},
    }
    for name in params["seg_models"]:
        run_train_seg(
            name,
            detection_run["root"] / "resample",
            detection_run["split_csv"],
            detection_run["root"] / "ingest",
            root / "seg_models" / name,
            root / "seg_state" / name,
            params,
        )
    flat = run_evaluate(
        folders,
        detection_run["root"] / "patches",
        detection_run["root"] / "resample",
        detection_run["split_csv"],
        root / "evaluate",
        params,
        segmentation={name: root / "seg_models" / name for name in params["seg_models"]},
    )
    return {
        "root": root,
        "params": params,
        "flat": flat,
        "folders": folders,
        "info": info,
        "store": detection_run["root"] / "patches",
    }


BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def make_project(folder: Path, repo_params: dict) -> Path:
    """A copy of the repository's project with the small dataset's params."""
    # The repository's root is a project (links into medtailor/workflow/project) whose
    # dvc.yaml depends on the sources: copy those too.
    folder.mkdir(parents=True, exist_ok=True)
    for name in ["Snakefile", "dvc.yaml", "profiles", "slurm", "src"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, folder / name)
    (folder / "params.yaml").write_text(yaml.safe_dump(small(repo_params), sort_keys=False))
    write_dvc_yaml(folder / "dvc.yaml", folder)  # the stages of these params
    return folder


@pytest.fixture()
def project(tmp_path: Path, repo_params: dict) -> Path:
    return make_project(tmp_path, repo_params)


@pytest.fixture(scope="session")
def patches_done(repo_params: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose Snakemake run went as far as ``data/patches`` (shared: copy it)."""
    folder = make_project(tmp_path_factory.mktemp("patches_done"), repo_params)
    run([str(BIN / "snakemake"), "--cores", "2", "data/patches"], folder)
    return folder


@pytest.fixture()
def project_with_patches(patches_done: Path, tmp_path: Path) -> Path:
    """A copy of ``patches_done`` for a test to go on from: the copy keeps the files' times
    and Snakemake's records (relative paths), so Snakemake finds the patches up to date.
    Its MLflow store starts empty, as the copied one names the original's artefact folder."""
    folder = tmp_path / "project"
    shutil.copytree(
        patches_done,
        folder,
        symlinks=True,
        ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"),
    )
    return folder


@dataclass(frozen=True)
class PipelineRun:
    """The small dataset's whole pipeline, run once by ``snakemake --cores 2`` in a project
    made by ``medtailor init`` (a git repository with DVC). ``folder`` is that project
    (the rerun test goes on from it); the rest is what the run left, read before any test
    changed it (the Slurm test compares its own run with it)."""

    folder: Path
    commit: str
    metrics: dict[str, dict]
    split_csv: bytes
    candidates: pd.DataFrame


TIMING = re.compile(r"seconds|per_second|_per_s")


def stable_metrics(root: Path) -> dict[str, dict]:
    """Every metrics file, without the timings that differ from run to run."""
    found = {}
    for path in sorted((root / "metrics").rglob("*.json")):
        values = json.loads(path.read_text())
        found[str(path.relative_to(root))] = {
            k: v for k, v in values.items() if not TIMING.search(k)
        }
    return found


GIT_ENV = {
    **ENV,
    **{
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "t"), ("EMAIL", "t@t"))
    },
}


@pytest.fixture(scope="session")
def pipeline_run(repo_params: dict, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    folder = tmp_path_factory.mktemp("own") / "my project"
    run([str(BIN / "medtailor"), "init", str(folder)], folder.parent)
    (folder / "params.yaml").write_text(yaml.safe_dump(small(repo_params), sort_keys=False))
    run([str(BIN / "python"), "-m", "medtailor.workflow.dvc_stages", str(folder)], folder.parent)
    subprocess.run(["git", "commit", "-qam", "small dataset"], cwd=folder, env=GIT_ENV, check=True)
    run([str(BIN / "snakemake"), "--cores", "2"], folder)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.strip()
    return PipelineRun(
        folder=folder,
        commit=commit,
        metrics=stable_metrics(folder),
        split_csv=(folder / "data" / "split" / "split.csv").read_bytes(),
        candidates=pd.read_parquet(folder / "data" / "detect" / "candidates.parquet"),
    )


def set_param(project: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
