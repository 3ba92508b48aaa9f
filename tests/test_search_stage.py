"""The search stage end to end: real candidates fine-tuned from the Lite0 supernet."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, REPO, run
from .test_search_seg import tiny_seg_search


def tiny_search(params: dict, budget: int = 4) -> dict:
    params = copy.deepcopy(params)
    params["search"].update(
        {
            "enabled": True,
            "space": "lite0_elastic",
            "budget": budget,
            "workers": 2,
            "recipe": {"epochs": 1, "input_size": 32, "bn_recalibration_batches": 2},
            "final_recipe": {"epochs": 1, "input_size": 32},
            "finalists": 1,
        }
    )
    return params


def comparable(history: list[dict]) -> list[tuple]:
    return [(r["generation"], r["index"], r["key"], r["genotype"], r["score"]) for r in history]


@pytest.mark.slow
def test_a_search_killed_mid_generation_resumes_to_the_same_history_without_retraining(
    detection_run, tmp_path, monkeypatch
):
    from medtailor.search import final_history, run_search
    from medtailor.search.spaces import create_space
    from medtailor.train import loop

    params = tiny_search(detection_run["params"])
    # Two epochs, so the kill below lands in the middle of a candidate's training and its
    # resume has an epoch left to repeat exactly.
    params["search"]["recipe"]["epochs"] = 2
    root = detection_run["root"]
    inputs = (root / "patches", root / "resample", detection_run["split_csv"])

    summary = run_search(tmp_path / "a" / "search", *inputs, tmp_path / "a" / "state", params)
    straight = final_history(tmp_path / "a" / "search", params)
    assert len(straight) == 4 and summary["candidates"] == 4
    assert straight[0]["genotype"] == list(create_space("lite0_elastic").reference_genotype())
    assert all(r["score"] is not None and 0 <= r["score"] <= 1 for r in straight)

    # Kill the search inside the last candidate's training (after its first epoch's
    # checkpoint), then rerun it.
    real = loop.train_model
    trained: list[str] = []

    def killed_in_the_fourth(name, entry, store, out, state, seed, sink=None):
        trained.append(name)
        if len(trained) < 4:
            return real(name, entry, store, out, state, seed, sink)

        def kill(metrics, step):
            raise KeyboardInterrupt("killed")

        return real(name, entry, store, out, state, seed, kill)

    monkeypatch.setattr(loop, "train_model", killed_in_the_fourth)
    search_dir, state = tmp_path / "b" / "search", tmp_path / "b" / "state"
    with pytest.raises(KeyboardInterrupt):
        run_search(search_dir, *inputs, state, params)
    assert (search_dir / "g001" / "candidate_0.json").is_file()
    assert not (search_dir / "g001" / "candidate_1.json").exists()
    assert (state / trained[-1] / "state" / "last.pt").is_file()

    again: list[str] = []

    def counted(name, *args, **kwargs):
        again.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loop, "train_model", counted)
    run_search(search_dir, *inputs, state, params)
    resumed = final_history(search_dir, params)
    assert comparable(resumed) == comparable(straight)
    assert again == [trained[-1]]  # only the killed candidate, no finished one
    # The killed candidate resumed at its second epoch and ended where the uninterrupted
    # search's training of it ended: the same history and the same weights.
    import pandas as pd
    import torch

    killed = trained[-1]
    straight_model = tmp_path / "a" / "state" / killed / "model"
    resumed_model = state / killed / "model"
    pd.testing.assert_frame_equal(
        pd.read_csv(resumed_model / "history.csv").drop(columns="images_per_second"),
        pd.read_csv(straight_model / "history.csv").drop(columns="images_per_second"),
    )
    weights = torch.load(resumed_model / "best.pt", weights_only=True)["model"]
    reference = torch.load(straight_model / "best.pt", weights_only=True)["model"]
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(weights[name], tensor), name


@pytest.mark.slow
def test_the_search_runs_under_snakemake_into_the_report(project_with_patches: Path):
    """The unrolled search (ask, candidates, tell per generation), its finalists and the
    reference, evaluated with the study's table and figures; a candidate's record lost and
    rebuilt does not train its network again."""
    project = project_with_patches
    from medtailor.workflow.dvc_stages import write_dvc_yaml

    params = tiny_search(yaml.safe_load((project / "params.yaml").read_text()))
    # One listed model beside the search's own keeps the run short; the table needs no more.
    params["models"] = {
        "lite0_imagenet": {**params["models"]["lite0_imagenet"], "recipe": {"input_size": 32}}
    }
    # The segmentation search runs in the same workflow (its rules, CLI and report section).
    params = tiny_seg_search(params, budget=3)
    params["search_seg"]["scales"] = [1.0]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_dvc_yaml(project / "dvc.yaml", project)
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2"], project)

    history = json.loads((project / "data" / "search" / "g001" / "history.json").read_text())
    assert len(history) == 4
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert "## Architecture search" in report and "Table 1 (" in report
    for name in ("nas_top1", "nas_reference", "nas_reference_scratch", "nas_winner_scratch"):
        assert (project / "data" / "models" / name / "best.pt").is_file()
        assert f"| {name} |" in report
    for figure in ("search_scores.png", "search_size.png", "search_mutation.png"):
        assert (project / "data" / "evaluate" / "figures" / figure).is_file()
        assert f"figures/{figure}" in report
    assert "search winner" in report

    seg_history = json.loads((project / "data/search_seg/g001/history.json").read_text())
    assert len(seg_history) == 3 and {r["status"] for r in seg_history} == {"trained"}
    assert (project / "data/seg_models/c2fnas_searched/best.pt").is_file()
    assert "## Segmentation search (C2FNAS)" in report
    assert "| c2fnas_searched (c2fnas) | lesion |" in report
    for figure in ("coarse_clusters.png", "selected_network.png"):
        assert f"figures/{figure}" in report

    # Every candidate of both searches (4 + 3) is a child MLflow run with its score.
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'medtailor.candidate'"
        ).fetchall()
        parents = db.execute(
            "SELECT COUNT(*) FROM tags WHERE key = 'mlflow.parentRunId' AND run_uuid IN "
            f"({','.join(repr(r[0]) for r in rows)})"
        ).fetchone()[0]
        scores = db.execute(
            "SELECT COUNT(*) FROM latest_metrics WHERE key = 'score' AND run_uuid IN "
            f"({','.join(repr(r[0]) for r in rows)})"
        ).fetchone()[0]
    assert len(rows) == 7 and parents == 7 and scores == 7

    # A candidate job killed before it wrote its record (so nothing after it ran either):
    # Snakemake reruns it, and it finds its network trained instead of training it again.
    (project / "data" / "search" / "g001" / "candidate_1.json").unlink()
    (project / "data" / "search" / "g001" / "history.json").unlink()
    shutil.rmtree(project / "data" / "search_summary")
    run([snakemake, "--cores", "2", "data/search_summary"], project)
    rebuilt = json.loads((project / "data" / "search" / "g001" / "candidate_1.json").read_text())
    assert rebuilt["status"] in ("cached", "seen", "twin", "infeasible")
    metrics = json.loads((project / "metrics" / "search" / "g001_candidate_1.json").read_text())
    assert metrics["trained"] == 0
    told = json.loads((project / "data" / "search" / "g001" / "history.json").read_text())
    assert comparable(told) == comparable(history)


def test_a_search_of_300_generations_plans_without_a_recursion_error(tmp_path, repo_params):
    """Snakemake builds the DAG recursively: past about 200 generations Python's default
    recursion limit is exceeded unless the Snakefile raises it."""
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    params = tiny_search(repo_params, budget=3000)
    params["search"]["workers"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([str(BIN / "snakemake"), "-n"], tmp_path).stdout
    assert re.search(r"^search_candidate\s+3000$", out, re.M), out[-2000:]


def fake_classifier_training(calls: list[str]):
    """A stand-in for the train loop that records each call and writes predictions (random
    probabilities for every val and test patch), so the cache around it runs for real."""
    import numpy as np
    import pandas as pd

    from medtailor.patches.store import PatchStore

    def train_model(name, entry, store_dir, out_dir, state_dir, seed, sink=None):
        calls.append(name)
        index = PatchStore(store_dir).index
        chosen = index[index["split"].isin(["val", "test"])]
        out_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "patch_id": chosen["patch_id"],
                "split": chosen["split"],
                "prob": np.random.default_rng(seed).random(len(chosen)),
            }
        ).to_parquet(out_dir / "predictions.parquet")
        return {"best_val_auc": 0.5, "images_per_second": 1.0}

    return train_model


@pytest.mark.slow
def test_a_candidate_trains_again_when_anything_its_score_depends_on_changes(
    detection_run, tmp_path, monkeypatch
):
    """The trained-once cache is keyed by a fingerprint of the training configuration, the
    seed, the patch store, the split, the truth boxes and the FROC settings: an unchanged
    rerun trains nothing, a change to any of them trains the candidate again (a 2-epoch
    score is never returned for a 3-epoch recipe)."""
    from medtailor.generations import generation_dir
    from medtailor.search import CandidateScorer, run_ask, run_candidate
    from medtailor.train import loop

    calls: list[str] = []
    monkeypatch.setattr(loop, "train_model", fake_classifier_training(calls))
    root, base = detection_run["root"], tiny_search(detection_run["params"])
    search_dir, state = tmp_path / "search", tmp_path / "state"
    run_ask(search_dir, 0, base)

    def trained(params, store=root / "patches", split=detection_run["split_csv"]) -> int:
        (generation_dir(search_dir, 0) / "candidate_0.json").unlink(missing_ok=True)
        scorer = CandidateScorer(store, root / "resample", split, params)
        return run_candidate(search_dir, 0, 0, scorer, state, params)["trained"]

    assert trained(base) == 1 and trained(base) == 0 and len(calls) == 1
    epochs = copy.deepcopy(base)
    epochs["search"]["recipe"]["epochs"] = 2
    seed = {**copy.deepcopy(base), "seed": base["seed"] + 1}
    froc = copy.deepcopy(base)
    froc["evaluate"]["froc"]["hit_iou"] = 0.4
    for changed in (epochs, seed, froc):
        assert trained(changed) == 1 and trained(changed) == 0
    # Other patches (the store's content hash) and another split file.
    store = tmp_path / "patches"
    shutil.copytree(root / "patches", store)
    (store / "fingerprint.json").write_text(json.dumps({"sha256": "0" * 64}))
    assert trained(base, store=store) == 1 and trained(base, store=store) == 0
    split = tmp_path / "split.csv"
    lines = detection_run["split_csv"].read_text().splitlines()
    split.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert trained(base, split=split) == 1 and trained(base, split=split) == 0
    assert len(calls) == 6
