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
  the trained model and its score, and a killed job resumes its training there;
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from medtailor.imageio import atomic_output
from medtailor.search.evolution import SearchPlan, ask_generation, best_so_far
from medtailor.search.spaces import create_space
from medtailor.tracking import child_run, log_step_metrics

log = logging.getLogger(__name__)


def search_plan(params: dict[str, Any]) -> SearchPlan:
    cfg = params["search"]
    return SearchPlan(int(cfg["budget"]), int(cfg["workers"]), int(params["seed"]))


def generation_dir(search_dir: Path, generation: int) -> Path:
    return search_dir / f"g{generation:03d}"


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")
    return path


def read_history(search_dir: Path, generation: int) -> list[dict[str, Any]]:
    """The history before ``generation`` (what the tell of generation - 1 wrote)."""
    if generation == 0:
        return []
    path = generation_dir(search_dir, generation - 1) / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: generation {generation - 1} has not been told yet")
    return json.loads(path.read_text())


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
        index = PatchStore(store_dir).index
        self.cfg = params["evaluate"]["froc"]
        self.detection = detection_inputs(
            manifest, truths, index, params["train"]["kind"], self.cfg, split="val"
        )

    def score(self, predictions: pd.DataFrame) -> float | None:
        from medtailor.evaluate.detection import aufroc_of

        val = predictions[predictions["split"] == "val"][["patch_id", "prob"]]
        candidates = self.detection["candidates"].merge(val, on="patch_id", how="inner")
        return aufroc_of(
            candidates, self.detection["lesions"], self.detection["images"], "prob", self.cfg
        )


def train_once(folder: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``train`` (which trains in ``folder``) once: its result is kept in
    ``folder/score.json`` and a later call returns it without training (``trained_now``
    says which happened). Both searches train each network this way."""
    done = folder / "score.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "trained_now": False}
    started = time.perf_counter()
    result = {**train(), "train_seconds": time.perf_counter() - started}
    write_json(done, result)
    return {**result, "trained_now": True}


def train_candidate(
    key: str,
    entry: dict[str, Any],
    scorer: CandidateScorer,
    state_root: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    """Train one canonical genotype once, in ``state_root/<key>/``, and score it."""
    from medtailor.train.loop import train_model

    folder = state_root / key

    def train() -> dict[str, Any]:
        summary = train_model(
            key,
            entry,
            scorer.store_dir,
            folder / "model",
            folder / "state",
            int(params["seed"]),
            sink,
        )
        predictions = pd.read_parquet(folder / "model" / "predictions.parquet")
        return {
            "score": scorer.score(predictions),
            "best_val_auc": summary["best_val_auc"],
            "images_per_second": summary["images_per_second"],
        }

    return train_once(folder, train)


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
    asked = json.loads((generation_dir(search_dir, generation) / "asked.json").read_text())
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
        if run is not None:
            import mlflow

            mlflow.log_metrics(
                {
                    k: float(record[k])
                    for k in ("score", "parameters", "macs", "seconds")
                    if record.get(k) is not None
                }
            )
    write_json(generation_dir(search_dir, generation) / f"candidate_{index}.json", record)
    return {
        "generation": generation,
        "index": index,
        "score": record["score"],
        "trained": int(record["status"] == "trained"),
    }


def run_tell(search_dir: Path, generation: int, params: dict[str, Any]) -> dict[str, Any]:
    """Append the scored candidates of ``generation`` to the history."""
    plan = search_plan(params)
    folder = generation_dir(search_dir, generation)
    history = read_history(search_dir, generation)
    records = []
    for index in range(plan.size(generation)):
        path = folder / f"candidate_{index}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: candidate {index} of generation {generation}")
        records.append(json.loads(path.read_text()))
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
    from tqdm import tqdm

    plan = search_plan(params)
    scorer = CandidateScorer(store_dir, resample_dir, split_csv, params)
    for generation in tqdm(range(plan.generations), desc="search", unit="generation"):
        folder = generation_dir(search_dir, generation)
        if (folder / "history.json").is_file():
            continue
        if not (folder / "asked.json").is_file():
            run_ask(search_dir, generation, params)
        for index in range(plan.size(generation)):
            if not (folder / f"candidate_{index}.json").is_file():
                run_candidate(search_dir, generation, index, scorer, state_root, params)
        run_tell(search_dir, generation, params)
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
