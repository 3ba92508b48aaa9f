"""What both architecture searches share: a search as a fixed chain of generations of files.

The OFA search (``search``) and the C2FNAS coarse search (``search_seg``) each run
generations of three steps over a folder: *ask* writes ``g<g>/asked.json``, one
*candidate* job per network writes ``g<g>/candidate_<i>.json``, *tell* appends them to
``g<g>/history.json``. Snakemake runs the steps as separate jobs, DVC's one-process stage
runs ``run_generations`` over the same files, so an interrupted search resumes in either.

A network is trained once, in its own folder outside every declared output
(``train_once``): its result is kept with the **fingerprint** of everything the result
depends on (the training configuration, the seed, the data's content and the scoring
settings), and a later call returns it only while the fingerprint is the same; any
change to those retrains it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtailor.config import params_hash
from medtailor.imageio import atomic_output


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


def read_asked(search_dir: Path, generation: int) -> list[dict[str, Any]]:
    return json.loads((generation_dir(search_dir, generation) / "asked.json").read_text())


def read_candidates(search_dir: Path, generation: int, size: int) -> list[dict[str, Any]]:
    """The ``size`` candidate records of ``generation``, refusing a missing one."""
    folder = generation_dir(search_dir, generation)
    records = []
    for index in range(size):
        path = folder / f"candidate_{index}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: candidate {index} of generation {generation}")
        records.append(json.loads(path.read_text()))
    return records


def write_candidate(search_dir: Path, generation: int, index: int, record: dict) -> dict:
    """Write a candidate's record; return the job's summary (its DVC/Snakemake metrics)."""
    write_json(generation_dir(search_dir, generation) / f"candidate_{index}.json", record)
    return {
        "generation": generation,
        "index": index,
        "score": record["score"],
        "trained": int(record["status"] == "trained"),
    }


def fingerprint(**parts: Any) -> str:
    """The identity of a trained result: a hash of everything it depends on."""
    return params_hash(parts)


def train_once(folder: Path, key: str, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``train`` (which trains in ``folder``) once per fingerprint ``key``: its result
    is kept in ``folder/score.json`` with ``key``, and a later call with the same key
    returns it without training (``trained_now`` says which happened). A result of another
    key (a changed recipe, seed, data or scoring setting) is retrained, never returned;
    the training loop's own resume state is keyed likewise, so it starts afresh too."""
    done = folder / "score.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("fingerprint") == key:
            return {**kept, "trained_now": False}
    started = time.perf_counter()
    result = {**train(), "train_seconds": time.perf_counter() - started, "fingerprint": key}
    write_json(done, result)
    return {**result, "trained_now": True}


def log_candidate_metrics(run: Any, record: dict[str, Any]) -> None:
    """A candidate's score, size and time onto its MLflow child run (when there is one)."""
    if run is None:
        return
    import mlflow

    mlflow.log_metrics(
        {
            k: float(record[k])
            for k in ("score", "parameters", "macs", "seconds")
            if record.get(k) is not None
        }
    )


def run_generations(
    search_dir: Path,
    generations: int,
    size: Callable[[int], int],
    ask: Callable[[int], Any],
    candidate: Callable[[int, int], Any],
    tell: Callable[[int], Any],
    description: str,
) -> None:
    """Every generation in one process (DVC's stage), skipping what the files say is done:
    the same steps over the same files as the Snakemake jobs."""
    from tqdm import tqdm

    for generation in tqdm(range(generations), desc=description, unit="generation"):
        folder = generation_dir(search_dir, generation)
        if (folder / "history.json").is_file():
            continue
        if not (folder / "asked.json").is_file():
            ask(generation)
        for index in range(size(generation)):
            if not (folder / f"candidate_{index}.json").is_file():
                candidate(generation, index)
        tell(generation)
