"""The coarse-to-fine segmentation search: the cluster-guided coarse search (pure, then on the
synthetic volumes with a kill and resume), the single-path fine search and the final network."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from medtailor.search_seg.coarse import (
    CoarsePlan,
    ask_coarse,
    cluster_proportions,
    rank_clusters,
    topology_key,
)
from medtailor.search_seg.space import OPERATIONS, cluster_topologies, enumerate_topologies

TOPOLOGIES = enumerate_topologies(12, 3, "u")
LABELS = cluster_topologies(TOPOLOGIES, 8, seed=0)


def scored_history(plan: CoarsePlan, scores_by_cluster: dict[int, float]) -> list[dict]:
    """Generation 0 as asked, scored by a fixed score per cluster."""
    asked = ask_coarse(TOPOLOGIES, LABELS, [], plan, 0, 2, 0.2)
    return [{**r, "score": scores_by_cluster[r["cluster"]]} for r in asked]


def test_the_plan_starts_with_the_initial_networks_and_spends_the_budget_exactly():
    plan = CoarsePlan(budget=50, workers=4, initial=16, seed=0)
    sizes = [plan.size(g) for g in range(plan.generations)]
    assert sizes[0] == 16 and sum(sizes) == 50 and max(sizes[1:]) == 4 and min(sizes) > 0


def test_the_first_generation_draws_two_distinct_topologies_of_every_cluster_from_the_seed():
    plan = CoarsePlan(50, 4, 16, seed=3)
    asked = ask_coarse(TOPOLOGIES, LABELS, [], plan, 0, 2, 0.2)
    assert sorted(r["cluster"] for r in asked) == sorted(list(range(8)) * 2)
    assert len({r["key"] for r in asked}) == 16
    for record in asked:
        assert LABELS[TOPOLOGIES.index(tuple(record["levels"]))] == record["cluster"]
    assert asked == ask_coarse(TOPOLOGIES, LABELS, [], plan, 0, 2, 0.2)
    other = ask_coarse(TOPOLOGIES, LABELS, [], CoarsePlan(50, 4, 16, seed=4), 0, 2, 0.2)
    assert [r["key"] for r in other] != [r["key"] for r in asked]


def test_later_candidates_come_from_the_best_cluster_unless_exploring():
    plan = CoarsePlan(50, 4, 16, seed=0)
    history = scored_history(plan, {c: 0.1 for c in range(8)} | {5: 0.9})
    picks = []
    for generation in range(1, 9):
        asked = ask_coarse(TOPOLOGIES, LABELS, history, plan, generation, 2, 0.2)
        history += [{**r, "score": 0.9 if r["cluster"] == 5 else 0.1} for r in asked]
        picks += [r["cluster"] for r in asked]
    share = picks.count(5) / len(picks)
    # 80 % exploit the best cluster; exploration may land there too (1/8 of 20 %).
    assert 0.65 < share < 0.97, share
    assert len({r["key"] for r in history}) == len(history)  # nothing trained twice

    greedy = ask_coarse(TOPOLOGIES, LABELS, history, plan, 9, 2, explore=0.0)
    assert {r["cluster"] for r in greedy} == {5} and {r["why"] for r in greedy} == {"best cluster"}


def test_clusters_rank_by_one_sampled_score_each_and_an_exhausted_cluster_gives_way():
    history = [
        {"cluster": 0, "score": 0.2, "levels": [0]},
        {"cluster": 1, "score": 0.8, "levels": [1]},
        {"cluster": 1, "score": None, "levels": [2]},  # failed: not a sample
    ]
    assert rank_clusters(history, 3, np.random.default_rng(0)) == [1, 0, 2]
    topologies = [(0, 1, 0), (1, 1, 0), (0, 0, 0)]
    labels = np.array([0, 1, 1])
    history = [
        {"cluster": 1, "score": 0.9, "levels": [1, 1, 0], "key": topology_key((1, 1, 0))},
        {"cluster": 1, "score": 0.9, "levels": [0, 0, 0], "key": topology_key((0, 0, 0))},
        {"cluster": 0, "score": 0.1, "levels": [0, 0, 0], "key": "x"},
    ]
    asked = ask_coarse(topologies, labels, history, CoarsePlan(9, 2, 0, 0), 1, 1, 0.0)
    assert [r["levels"] for r in asked] == [[0, 1, 0]]  # cluster 1 is exhausted
    assert asked[0]["why"] == "next cluster"


def test_cluster_proportions_follow_the_evaluated_networks():
    shares = cluster_proportions([{"cluster": c} for c in (0, 1, 1, 2)], 3)
    np.testing.assert_allclose(shares[-1], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)


def tiny_seg_search(params: dict, budget: int = 4) -> dict:
    """6 cells and 2 down-samplings (15 topologies) on 16^3 patches, 1 epoch each."""
    params = copy.deepcopy(params)
    params["train_seg"].update({"patch_size": [16, 16, 16], "samples_per_volume": 1})
    params["search_seg"].update(
        {
            "enabled": True,
            "cells": 6,
            "downsamplings": 2,
            "clusters": 2,
            "initial_per_cluster": 1,
            "budget": budget,
            "workers": 2,
            "filters": 4,
            "recipe": {"epochs": 1, "validate_every": 1},
            "supernet_recipe": {"epochs": 2, "validate_every": 2},
            "assignments": 4,
            "final_recipe": {"epochs": 2, "validate_every": 2},
            "scales": [1.0, 0.5],
        }
    )
    return params


def comparable(history: list[dict]) -> list[tuple]:
    return [(r["generation"], r["index"], r["key"], r["cluster"], r["score"]) for r in history]


@pytest.mark.slow
def test_a_coarse_search_killed_mid_generation_resumes_without_retraining(
    seg_data, tmp_path, monkeypatch
):
    from medtailor.search_seg import coarse_history, run_coarse_search
    from medtailor.train_seg import loop

    resample_dir, split_csv, _, base = seg_data
    params = tiny_seg_search(base)

    summary = run_coarse_search(tmp_path / "a", resample_dir, split_csv, tmp_path / "sa", params)
    straight = coarse_history(tmp_path / "a", params)
    assert summary["candidates"] == summary["trained"] == 4
    assert len({r["key"] for r in straight}) == 4
    assert all(0 <= r["score"] <= 1 for r in straight)
    assert all(r["parameters"] > 0 and r["macs"] > 0 for r in straight)

    # Kill the search inside the last candidate's training (after its first epoch), rerun.
    real = loop.train_segmentation
    trained: list[str] = []

    def killed_in_the_fourth(name, *args, **kwargs):
        trained.append(name)
        if len(trained) == 4:

            def kill(metrics, step):
                raise KeyboardInterrupt("killed")

            args = (*args[:7], kill)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loop, "train_segmentation", killed_in_the_fourth)
    search_dir, state = tmp_path / "b", tmp_path / "sb"
    with pytest.raises(KeyboardInterrupt):
        run_coarse_search(search_dir, resample_dir, split_csv, state, params)
    assert (search_dir / "g001" / "candidate_0.json").is_file()
    assert not (search_dir / "g001" / "candidate_1.json").exists()
    assert (state / trained[-1] / "state" / "last.pt").is_file()

    again: list[str] = []

    def counted(name, *args, **kwargs):
        again.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loop, "train_segmentation", counted)
    run_coarse_search(search_dir, resample_dir, split_csv, state, params)
    assert comparable(coarse_history(search_dir, params)) == comparable(straight)
    assert again == [trained[-1]]  # only the killed candidate, no finished one


@pytest.mark.slow
def test_the_fine_search_picks_operations_with_the_supernet_and_the_final_network_trains(
    seg_data, tmp_path
):
    from medtailor.search_seg import final_names, run_coarse_search
    from medtailor.search_seg.fine import run_fine_search, run_search_seg_final

    resample_dir, split_csv, ingest_dir, base = seg_data
    params = tiny_seg_search(base, budget=2)
    search_dir, state, fine = tmp_path / "coarse", tmp_path / "state", tmp_path / "fine"
    run_coarse_search(search_dir, resample_dir, split_csv, state, params)
    summary = run_fine_search(search_dir, resample_dir, split_csv, state, fine, params)

    selection = json.loads((fine / "selection.json").read_text())
    history = pd.read_csv(fine / "history.csv")
    assert selection["coarse_score"] == history["score"].max()
    assert len(selection["operations"]) == 6 and set(selection["operations"]) <= set(OPERATIONS)
    scores = pd.read_csv(fine / "fine_scores.csv")
    assert len(scores) in (4, 5)  # 4 drawn, plus the all-3D reference unless drawn
    assert "-".join(["3d"] * 6) in set(scores["operations"])
    assert selection["supernet_score"] == scores["score"].max()
    assert summary["assignments_scored"] == len(scores)
    for figure in ("coarse_clusters.png", "search_scores.png", "selected_network.png"):
        assert (fine / "figures" / figure).is_file()

    assert final_names(params) == ["c2fnas_searched", "c2fnas_searched_x0.5"]
    models = tmp_path / "seg_models"
    full = run_search_seg_final(
        "c2fnas_searched", fine, resample_dir, split_csv, ingest_dir,
        models / "c2fnas_searched", tmp_path / "final_state", params,
    )  # fmt: skip
    half = run_search_seg_final(
        "c2fnas_searched_x0.5", fine, resample_dir, split_csv, None,
        models / "half", tmp_path / "half_state", params,
    )  # fmt: skip
    import torch

    saved = torch.load(models / "c2fnas_searched" / "best.pt", weights_only=True)
    assert saved["entry"]["levels"] == selection["levels"]
    assert saved["entry"]["operations"] == selection["operations"]
    assert half["parameters"] < full["parameters"] / 2  # half the filters: about a quarter
    assert (models / "c2fnas_searched" / "dice.parquet").is_file()
    assert any((models / "c2fnas_searched" / "predictions_native").iterdir())


@pytest.mark.slow
def test_a_topology_trains_again_when_its_recipe_seed_or_volumes_change(
    seg_data, tmp_path, monkeypatch
):
    """The coarse search's trained-once cache follows its fingerprint: an unchanged rerun
    trains nothing; another recipe, seed or split of the volumes trains again."""
    from medtailor.generations import generation_dir
    from medtailor.search_seg import run_coarse_ask, run_coarse_candidate
    from medtailor.train_seg import loop

    calls: list[str] = []

    def fake(name, *args, **kwargs):
        calls.append(name)
        return {"best_val_dice_mean": 0.5, "parameters": 10, "macs": 100}

    monkeypatch.setattr(loop, "train_segmentation", fake)
    resample_dir, split_csv, _, base = seg_data
    params = tiny_seg_search(base)
    search_dir, state = tmp_path / "search", tmp_path / "state"
    run_coarse_ask(search_dir, 0, params)

    def trained(params, split=split_csv) -> int:
        (generation_dir(search_dir, 0) / "candidate_0.json").unlink(missing_ok=True)
        return run_coarse_candidate(search_dir, 0, 0, resample_dir, split, state, params)["trained"]

    assert trained(params) == 1 and trained(params) == 0
    epochs = copy.deepcopy(params)
    epochs["search_seg"]["recipe"]["epochs"] = 3
    seed = {**copy.deepcopy(params), "seed": params["seed"] + 1}
    for changed in (epochs, seed):
        assert trained(changed) == 1 and trained(changed) == 0
    from medtailor.train_seg.data import segmentation_rows

    volumes = segmentation_rows(resample_dir, split_csv)
    patient = volumes.loc[volumes["split"] == "val", "patient_id"].iloc[0]
    moved = pd.read_csv(split_csv)
    moved.loc[moved["patient_id"] == patient, "split"] = "train"  # a labelled volume moves
    moved.to_csv(tmp_path / "split.csv", index=False)
    assert trained(params, tmp_path / "split.csv") == 1
    assert trained(params, tmp_path / "split.csv") == 0
    assert len(calls) == 4
