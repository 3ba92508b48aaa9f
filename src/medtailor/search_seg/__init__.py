"""``medtailor search-seg-*``: the coarse-to-fine search of a 3D segmentation network (C2FNAS).

1. **Coarse** (``search_seg.coarse``): topologies of the U (``search_seg.space``) are
   clustered; candidates train from scratch with the ``train_seg`` loop under
   ``search_seg.recipe`` and score their validation mean foreground Dice. The work is
   generations, each three steps over files in ``data/search_seg/`` as in the OFA search:
   ``search-seg-ask`` writes ``g<g>/asked.json``, ``search-seg-candidate`` trains one
   (``g<g>/candidate_<i>.json``; a topology trains once per fingerprint of its recipe,
   seed and volumes, in ``<state>/<key>/``, where a killed job resumes:
   ``medtailor.generations``) and ``search-seg-tell`` appends to ``g<g>/history.json``.
2. **Fine** (``search-seg-fine``): on the best topology, a single-path supernet (three
   operations per cell, one uniformly sampled path per step) trains under
   ``search_seg.supernet_recipe``; ``search_seg.assignments`` random operation assignments
   are then scored with its weights on validation, and the best is kept
   (``data/search_seg_fine/selection.json``) with the search's table and figures.
3. **Final** (``search-seg-final``): the selected network is trained from scratch under
   ``search_seg.final_recipe`` as segmentation model ``c2fnas_searched`` (and, with
   ``search_seg.scales``, at other channel multipliers) into ``data/seg_models/``, where
   ``evaluate`` compares it with the baseline.

``medtailor search-seg`` (DVC) runs steps 1 and 2 in one process over the same files.
"""

from __future__ import annotations

import copy
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from medtailor import generations
from medtailor.search_seg.coarse import CoarsePlan, ask_coarse, best_record
from medtailor.search_seg.space import cluster_topologies, enumerate_topologies
from medtailor.tracking import child_run, log_step_metrics

FINAL_NAME = "c2fnas_searched"


def final_names(params: dict[str, Any]) -> list[str]:
    """The segmentation models the search trains: one per channel multiplier."""
    cfg = params.get("search_seg") or {}
    if not cfg.get("enabled"):
        return []
    return [
        FINAL_NAME if float(scale) == 1.0 else f"{FINAL_NAME}_x{float(scale):g}"
        for scale in cfg["scales"]
    ]


def coarse_plan(params: dict[str, Any]) -> CoarsePlan:
    cfg = params["search_seg"]
    initial = int(cfg["clusters"]) * int(cfg["initial_per_cluster"])
    return CoarsePlan(int(cfg["budget"]), int(cfg["workers"]), initial, int(params["seed"]))


@cache
def _space(cells: int, downsamplings: int, rule: str, clusters: int, seed: int):
    topologies = enumerate_topologies(cells, downsamplings, rule)
    return topologies, cluster_topologies(topologies, clusters, seed)


def topology_space(params: dict[str, Any]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every topology of the configured rule and its K-means cluster."""
    cfg = params["search_seg"]
    return _space(
        int(cfg["cells"]),
        int(cfg["downsamplings"]),
        str(cfg["rule"]),
        int(cfg["clusters"]),
        int(params["seed"]),
    )


def candidate_entry(
    params: dict[str, Any], levels: list[int], operations: Any, recipe_key: str, scale: float = 1.0
) -> dict[str, Any]:
    """The train_seg configuration of a network of the space: the train_seg recipe under
    ``search_seg.<recipe_key>``, the topology and its operations."""
    cfg = params["search_seg"]
    recipe = {**copy.deepcopy(params["train_seg"]), **copy.deepcopy(cfg[recipe_key])}
    return {
        **recipe,
        "model": "c2fnas",
        "levels": [int(level) for level in levels],
        "operations": operations,
        "filters": max(2, round(int(cfg["filters"]) * scale)),
        "max_level": int(cfg["downsamplings"]),
    }


def run_coarse_ask(search_dir: Path, generation: int, params: dict[str, Any]) -> dict[str, Any]:
    cfg = params["search_seg"]
    topologies, labels = topology_space(params)
    asked = ask_coarse(
        topologies,
        labels,
        generations.read_history(search_dir, generation),
        coarse_plan(params),
        generation,
        int(cfg["initial_per_cluster"]),
        float(cfg["explore"]),
    )
    generations.write_json(generations.generation_dir(search_dir, generation) / "asked.json", asked)
    return {
        "generation": generation,
        "candidates": len(asked),
        "clusters_drawn": len({c["cluster"] for c in asked}),
    }


def train_topology(
    key: str,
    entry: dict[str, Any],
    resample_dir: Path,
    split_csv: Path,
    state_root: Path,
    seed: int,
    sink: Any = None,
) -> dict[str, Any]:
    """Train one topology once per fingerprint (its training configuration, the seed and
    the volumes it trains and is validated on), in ``state_root/<key>/`` (a killed run
    resumes there)."""
    from medtailor.train_seg.data import data_fingerprint, segmentation_rows
    from medtailor.train_seg.loop import train_segmentation

    folder = state_root / key
    data = data_fingerprint(resample_dir, segmentation_rows(resample_dir, split_csv))

    def train() -> dict[str, Any]:
        summary = train_segmentation(
            key,
            entry,
            resample_dir,
            split_csv,
            None,
            folder / "model",
            folder / "state",
            seed,
            sink,
        )
        return {
            "score": summary["best_val_dice_mean"],
            "parameters": summary["parameters"],
            "macs": summary["macs"],
        }

    return generations.train_once(
        folder, generations.fingerprint(entry=entry, seed=seed, data=data), train
    )


def run_coarse_candidate(
    search_dir: Path,
    generation: int,
    index: int,
    resample_dir: Path,
    split_csv: Path,
    state_root: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    started = time.perf_counter()
    record = dict(generations.read_asked(search_dir, generation)[index])
    with child_run(
        f"candidate:{record['key']}",
        {"medtailor.candidate": record["key"], "medtailor.generation": generation},
        {"levels": json.dumps(record["levels"]), "cluster": record["cluster"], "index": index},
    ) as run:
        sink = log_step_metrics if run is not None else None
        entry = candidate_entry(params, record["levels"], "3d", "recipe")
        result = train_topology(
            record["key"], entry, resample_dir, split_csv, state_root, int(params["seed"]), sink
        )
        record.update(
            score=result["score"],
            parameters=result["parameters"],
            macs=result["macs"],
            train_seconds=result["train_seconds"],
            status="trained" if result["trained_now"] else "cached",
            seconds=time.perf_counter() - started,
        )
        generations.log_candidate_metrics(run, record)
    return generations.write_candidate(search_dir, generation, index, record)


def run_coarse_tell(search_dir: Path, generation: int, params: dict[str, Any]) -> dict[str, Any]:
    folder = generations.generation_dir(search_dir, generation)
    records = generations.read_candidates(
        search_dir, generation, coarse_plan(params).size(generation)
    )
    history = generations.read_history(search_dir, generation) + records
    generations.write_json(folder / "history.json", history)
    best = best_record(history)
    return {
        "generation": generation,
        "candidates": len(history),
        "best_score": best["score"] if best else float("nan"),
        "best_key": best["key"] if best else "",
    }


def coarse_history(search_dir: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    return generations.read_history(search_dir, coarse_plan(params).generations)


def run_coarse_search(
    search_dir: Path, resample_dir: Path, split_csv: Path, state_root: Path, params: dict
) -> dict[str, Any]:
    """Every generation in one process, skipping what the files say is done."""
    plan = coarse_plan(params)
    generations.run_generations(
        search_dir,
        plan.generations,
        plan.size,
        lambda g: run_coarse_ask(search_dir, g, params),
        lambda g, i: run_coarse_candidate(
            search_dir, g, i, resample_dir, split_csv, state_root, params
        ),
        lambda g: run_coarse_tell(search_dir, g, params),
        "coarse search",
    )
    history = coarse_history(search_dir, params)
    best = best_record(history)
    return {
        "candidates": len(history),
        "trained": sum(r["status"] == "trained" for r in history),
        "best_score": best["score"] if best else float("nan"),
    }
