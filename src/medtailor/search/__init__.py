"""``medtailor search-*``: tailor an architecture to the patches (the fracture NAS method).

A pre-trained supernet generates the weights of every candidate (``search.spaces``,
``search.supernet``), each candidate is fine-tuned briefly by the train stage's own loop
and scored by its validation AUFROC (the evaluation stage's implementation), and a (1+1)
evolution strategy (``search.evolution``) proposes the next ones.

The budget is known, so the work is a fixed chain of generations, each three steps:

- ``search-ask --generation g``: replays the history of generations < g and writes the
  W candidates of generation g (``g<g>/asked.json``);
- ``search-candidate --generation g --index i``: trains and scores candidate i
  (``g<g>/candidate_<i>.json``). A canonical genotype is trained once: its folder
  ``<state>/<key>/`` (outside every declared output, like the train stage's state) keeps
  the trained model and its score with the fingerprint of what the score depends on
  (``generations.train_once``: a changed recipe, seed, patch store, split or FROC setting
  retrains it), and a killed job resumes its training there;
- ``search-tell --generation g``: appends the generation's scores to the history
  (``g<g>/history.json``).

Snakemake runs these as separate jobs (candidates in parallel, on GPUs under Slurm);
``medtailor search`` (DVC) runs the same steps in one process over the same files, so an
interrupted search resumes in either and gives the same history.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from medtailor.generations import (
    fingerprint,
    generation_dir,
    log_candidate_metrics,
    read_asked,
    read_candidates,
    read_history,
    run_generations,
    train_once,
    write_candidate,
    write_json,
)
from medtailor.search.evolution import SearchPlan, ask_generation, best_so_far
from medtailor.tracking import child_run, file_hash, log_step_metrics

log = logging.getLogger(__name__)


def search_plan(params: dict[str, Any]) -> SearchPlan:
    cfg = params["search"]
    return SearchPlan(int(cfg["budget"]), int(cfg["workers"]), int(params["seed"]))


def candidate_entry(params: dict[str, Any], genotype: list[int | None], epochs_key: str) -> dict:
    """The train-stage configuration of a candidate: the train recipe, the search's
    overrides (``search.recipe`` while searching, ``search.final_recipe`` for finalists),
    the space as the model and the genotype."""
    cfg = params["search"]
    recipe = {**copy.deepcopy(params["train"]), **copy.deepcopy(cfg[epochs_key])}
    return {
        **recipe,
        "model": cfg["space"],
        "genotype": list(genotype),
        "init": cfg["init"],
        "head": {"type": "linear"},
        "unfreeze": "all",
        "truncate": 0,
    }


def within_limits(info: dict[str, Any], cfg: dict[str, Any]) -> bool:
    limits = (("parameters", cfg["max_parameters"]), ("macs", cfg["max_macs"]))
    return all(limit is None or info[key] <= limit for key, limit in limits)


def run_ask(search_dir: Path, generation: int, params: dict[str, Any]) -> dict[str, Any]:
    """Write the candidates of ``generation`` with their size (random weights: cheap)."""
    from medtailor.search.spaces import create_space
    from medtailor.train import model_info

    space, plan = create_space(params["search"]["space"]), search_plan(params)
    history = read_history(search_dir, generation)
    asked = ask_generation(space, plan, history)
    for candidate in asked:
        entry = candidate_entry(params, candidate["canonical"], "recipe")
        info = model_info({**entry, "init": "scratch"})
        candidate.update(
            {
                "parameters": info["parameters"],
                "macs": info["macs"],
                "input_size": info["input_size"],
                "feasible": within_limits(info, params["search"]),
            }
        )
    write_json(generation_dir(search_dir, generation) / "asked.json", asked)
    fractions = [c["mutated_fraction"] for c in asked if c["mutated_fraction"] is not None]
    return {
        "generation": generation,
        "candidates": len(asked),
        "mutated_fraction": sum(fractions) / len(fractions) if fractions else float("nan"),
    }


class CandidateScorer:
    """Scores a trained candidate: validation AUFROC of its re-scored candidates."""

    def __init__(self, store_dir: Path, resample_dir: Path, split_csv: Path, params: dict):
        from medtailor.evaluate import detection_inputs
        from medtailor.patches.store import PatchStore
        from medtailor.split import manifest_with_split
        from medtailor.tables import read_boxes

        self.store_dir, self.params = store_dir, params
        manifest = manifest_with_split(resample_dir, split_csv)
        truths = read_boxes(resample_dir / "boxes.parquet")
        store = PatchStore(store_dir)
        self.cfg = params["evaluate"]["froc"]
        self.detection = detection_inputs(
            manifest, truths, store.index, params["train"]["kind"], self.cfg, split="val"
        )
        # Everything a score depends on besides the candidate's own training: the patches,
        # the split, the truth boxes and the FROC settings.
        self.fingerprint = fingerprint(
            store=store.fingerprint(),
            split=file_hash(split_csv),
            boxes=file_hash(resample_dir / "boxes.parquet"),
            froc=self.cfg,
            kind=params["train"]["kind"],
        )

    def score(self, predictions: pd.DataFrame) -> float | None:
        from medtailor.evaluate.detection import aufroc_of

        val = predictions[predictions["split"] == "val"][["patch_id", "prob"]]
        candidates = self.detection["candidates"].merge(val, on="patch_id", how="inner")
        return aufroc_of(
            candidates, self.detection["lesions"], self.detection["images"], "prob", self.cfg
        )


def train_candidate(
    key: str,
    entry: dict[str, Any],
    scorer: CandidateScorer,
    state_root: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    """Train one canonical genotype once per fingerprint (its training configuration, the
    seed and the scorer's inputs), in ``state_root/<key>/``, and score it."""
    from medtailor.train.loop import train_model

    folder = state_root / key
    seed = int(params["seed"])

    def train() -> dict[str, Any]:
        summary = train_model(
            key,
            entry,
            scorer.store_dir,
            folder / "model",
            folder / "state",
            seed,
            sink,
        )
        predictions = pd.read_parquet(folder / "model" / "predictions.parquet")
        return {
            "score": scorer.score(predictions),
            "best_val_auc": summary["best_val_auc"],
            "images_per_second": summary["images_per_second"],
        }

    return train_once(folder, fingerprint(entry=entry, seed=seed, scorer=scorer.fingerprint), train)


def run_candidate(
    search_dir: Path,
    generation: int,
    index: int,
    scorer: CandidateScorer,
    state_root: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Train and score candidate ``index`` of ``generation``; write its record."""
    started = time.perf_counter()
    asked = read_asked(search_dir, generation)
    record = dict(asked[index])
    history = read_history(search_dir, generation)
    earlier = next((r for r in history if r["key"] == record["key"]), None)
    # The same network earlier in this generation: its own job trains it, the tell copies
    # its score (two jobs never train one network at once).
    twin = next((c["index"] for c in asked[:index] if c["key"] == record["key"]), None)
    with child_run(
        f"candidate:{record['key']}",
        {"medtailor.candidate": record["key"], "medtailor.generation": record["generation"]},
        {
            "genotype": json.dumps(record["genotype"]),
            "canonical": json.dumps(record["canonical"]),
            "generation": record["generation"],
            "index": record["index"],
        },
    ) as run:
        if not record["feasible"]:
            record.update(score=None, status="infeasible")
        elif earlier is not None and earlier.get("status") != "infeasible":
            record.update(score=earlier["score"], status="seen")
        elif twin is not None:
            record.update(score=None, status="twin", twin=twin)
        else:
            sink = log_step_metrics if run is not None else None
            entry = candidate_entry(params, record["canonical"], "recipe")
            result = train_candidate(record["key"], entry, scorer, state_root, params, sink)
            record.update(
                score=result["score"],
                status="trained" if result["trained_now"] else "cached",
                best_val_auc=result["best_val_auc"],
                train_seconds=result["train_seconds"],
            )
        record["seconds"] = time.perf_counter() - started
        log_candidate_metrics(run, record)
    return write_candidate(search_dir, generation, index, record)


def run_tell(search_dir: Path, generation: int, params: dict[str, Any]) -> dict[str, Any]:
    """Append the scored candidates of ``generation`` to the history."""
    plan = search_plan(params)
    folder = generation_dir(search_dir, generation)
    history = read_history(search_dir, generation)
    records = read_candidates(search_dir, generation, plan.size(generation))
    for record in records:
        if record["status"] == "twin":
            record["score"] = records[record["twin"]]["score"]
    history = history + records
    write_json(folder / "history.json", history)
    best = best_so_far(history)
    return {
        "generation": generation,
        "candidates": len(history),
        "best_score": best["score"] if best and best["score"] is not None else float("nan"),
        "best_key": best["key"] if best else "",
    }


def run_search(
    search_dir: Path,
    store_dir: Path,
    resample_dir: Path,
    split_csv: Path,
    state_root: Path,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The whole search in one process (DVC's stage): the same steps over the same files
    as the Snakemake jobs, skipping what is already there."""
    plan = search_plan(params)
    scorer = CandidateScorer(store_dir, resample_dir, split_csv, params)
    run_generations(
        search_dir,
        plan.generations,
        plan.size,
        lambda g: run_ask(search_dir, g, params),
        lambda g, i: run_candidate(search_dir, g, i, scorer, state_root, params),
        lambda g: run_tell(search_dir, g, params),
        "search",
    )
    return search_result(search_dir, params)


def final_history(search_dir: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    return read_history(search_dir, search_plan(params).generations)


def search_result(search_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    history = final_history(search_dir, params)
    best = best_so_far(history)
    trained = sum(r["status"] == "trained" for r in history)
    return {
        "candidates": len(history),
        "trained": trained,
        "distinct_networks": len({r["key"] for r in history}),
        "best_score": best["score"] if best and best["score"] is not None else float("nan"),
        "reference_score": history[0]["score"] if history else float("nan"),
    }
