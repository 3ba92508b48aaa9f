"""After the search: its summary (history table, figures, finalists) and the final models.

The final models are ordinary trained configurations in ``data/models/`` that ``evaluate``
reports like any other (each checkpoint carries its space and genotype):

- ``nas_top<k>``: the k-th best network of the search (distinct canonical genotypes, by
  search score), retrained with ``search.final_recipe`` from the supernet's weights;
- ``nas_reference`` / ``nas_reference_scratch``: the space's reference network (the first
  candidate), with supernet weights and from scratch, trained the same way;
- ``nas_winner_scratch``: the winner (the finalist with the best validation AUFROC after
  retraining) from scratch, so the table separates what the architecture gives from what
  the pre-trained weights give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.figures import pyplot, save_figure
from medtailor.generations import write_json
from medtailor.search import CandidateScorer, candidate_entry, final_history
from medtailor.search.evolution import loss_of
from medtailor.search.spaces import create_space

REFERENCE, REFERENCE_SCRATCH, WINNER_SCRATCH = (
    "nas_reference",
    "nas_reference_scratch",
    "nas_winner_scratch",
)


def finalist_names(params: dict[str, Any]) -> list[str]:
    return [f"nas_top{k}" for k in range(1, int(params["search"]["finalists"]) + 1)]


def final_model_names(params: dict[str, Any]) -> list[str]:
    """Every model the search adds to ``data/models`` (empty when the search is off)."""
    if not params.get("search", {}).get("enabled"):
        return []
    return [*finalist_names(params), REFERENCE, REFERENCE_SCRATCH, WINNER_SCRATCH]


def history_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per candidate, with the best score so far (infeasible ones score nothing)."""
    table = pd.DataFrame(history)
    table["order"] = np.arange(len(table))
    losses = np.array([loss_of(r) for r in history])
    table["best_so_far"] = -np.minimum.accumulate(losses)
    table["genotype"] = table["genotype"].map(json.dumps)
    table["canonical"] = table["canonical"].map(json.dumps)
    return table


def choose_finalists(history: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The ``count`` best distinct networks (first occurrence of each key, by loss)."""
    seen: dict[str, dict[str, Any]] = {}
    for record in history:
        if record.get("feasible", True) and record.get("score") is not None:
            seen.setdefault(record["key"], record)
    ranked = sorted(seen.values(), key=lambda r: (loss_of(r), r["generation"], r["index"]))
    return ranked[:count]


def search_figures(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Score of every candidate along the search (best so far, reference line); score
    against parameters and MACs; fraction of genes mutated per generation."""
    plt = pyplot()
    figures = out_dir / "figures"
    scored = table[table["score"].notna()]
    reference = table.iloc[0]["score"] if len(table) else None

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.scatter(scored["order"] + 1, scored["score"], s=14, label="candidate")
    ax.step(table["order"] + 1, table["best_so_far"], where="post", color="C1", label="best so far")
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="C2", linestyle="--", label="reference network")
    infeasible = table[~table["feasible"]]
    if len(infeasible):
        ax.scatter(
            infeasible["order"] + 1,
            np.zeros(len(infeasible)),
            marker="x",
            color="grey",
            label="over the size limit",
        )
    ax.set_xlabel("candidate")
    ax.set_ylabel("validation AUFROC")
    ax.set_title("Search: validation score of every candidate")
    ax.legend(fontsize=8)
    paths = [save_figure(fig, figures / "search_scores.png")]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, column, unit, scale in (
        (axes[0], "parameters", "parameters (M)", 1e6),
        (axes[1], "macs", "MACs (M)", 1e6),
    ):
        ax.scatter(scored[column] / scale, scored["score"], s=14)
        if reference is not None and np.isfinite(reference):
            ax.scatter(
                [table.iloc[0][column] / scale],
                [reference],
                color="C2",
                marker="*",
                s=120,
                label="reference",
            )
            ax.legend(fontsize=8)
        ax.set_xlabel(unit)
    axes[0].set_ylabel("validation AUFROC")
    fig.suptitle("Search: size against score")
    paths.append(save_figure(fig, figures / "search_size.png"))

    rates = table.groupby("generation")["mutated_fraction"].mean()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(rates.index, rates.to_numpy(), marker="o")
    ax.set_xlabel("generation")
    ax.set_ylabel("fraction of genes mutated")
    ax.set_ylim(0, 1)
    ax.set_title("Search: mutation rate per generation (vs. best so far)")
    paths.append(save_figure(fig, figures / "search_mutation.png"))
    return paths


def run_search_summary(search_dir: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the history table, the figures and the finalists of a finished search."""
    history = final_history(search_dir, params)
    table = history_table(history)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "history.csv", index=False)
    figures = search_figures(table, out_dir)
    finalists = choose_finalists(history, int(params["search"]["finalists"]))
    space = create_space(params["search"]["space"])
    write_json(
        out_dir / "finalists.json",
        {
            "space": space.name,
            "genes": [g.name for g in space.genes],
            "reference": list(space.canonical(space.reference_genotype())),
            "finalists": [
                {
                    "name": name,
                    **{
                        k: r[k]
                        for k in (
                            "key",
                            "canonical",
                            "score",
                            "parameters",
                            "macs",
                            "generation",
                            "index",
                        )
                    },
                }
                for name, r in zip(finalist_names(params), finalists, strict=False)
            ],
        },
    )
    rates = table.groupby("generation")["mutated_fraction"].mean().dropna()
    return {
        "candidates": len(table),
        "trained": int((table["status"] == "trained").sum()),
        "distinct_networks": int(table["key"].nunique()),
        "best_score": float(table["best_so_far"].iloc[-1]),
        "reference_score": float(table.iloc[0]["score"])
        if table.iloc[0]["score"] is not None
        else float("nan"),
        "mean_mutated_fraction": float(rates.mean()) if len(rates) else float("nan"),
        "figures": [str(p) for p in figures],
    }


def final_entry(
    name: str, summary_dir: Path, models_dir: Path, scorer: CandidateScorer, params: dict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The configuration of final model ``name`` and what it is (role, source genotype)."""
    finalists = json.loads((summary_dir / "finalists.json").read_text())
    by_name = {f["name"]: f for f in finalists["finalists"]}
    if name in by_name:
        entry = candidate_entry(params, by_name[name]["canonical"], "final_recipe")
        return entry, {"role": "finalist", "search_score": by_name[name]["score"]}
    if name in (REFERENCE, REFERENCE_SCRATCH):
        entry = candidate_entry(params, finalists["reference"], "final_recipe")
        if name == REFERENCE_SCRATCH:
            entry["init"] = "scratch"
        return entry, {"role": "reference"}
    if name == WINNER_SCRATCH:
        winner, scores = choose_winner(by_name, models_dir, scorer)
        entry = candidate_entry(params, by_name[winner]["canonical"], "final_recipe")
        entry["init"] = "scratch"
        return entry, {"role": "winner_scratch", "winner": winner, "finalist_val_aufroc": scores}
    if name not in final_model_names(params):
        raise ValueError(
            f"{name!r} is not a final model of the search: {final_model_names(params)}"
        )
    raise ValueError(
        f"{name!r}: the search found fewer than {params['search']['finalists']} "
        "distinct networks with a score"
    )


def choose_winner(
    finalists: dict[str, dict[str, Any]], models_dir: Path, scorer: CandidateScorer
) -> tuple[str, dict[str, float | None]]:
    """The retrained finalist with the best validation AUFROC (ties: the better search rank)."""
    scores: dict[str, float | None] = {}
    for name in finalists:
        predictions = models_dir / name / "predictions.parquet"
        if not predictions.is_file():
            raise FileNotFoundError(f"{predictions}: finalist {name} is not trained yet")
        scores[name] = scorer.score(pd.read_parquet(predictions))
    ranked = sorted(scores, key=lambda n: -(scores[n] if scores[n] is not None else -1.0))
    return ranked[0], scores


def run_search_final(
    name: str,
    summary_dir: Path,
    models_dir: Path,
    scorer: CandidateScorer,
    state_dir: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    """Train final model ``name`` into ``models_dir/name`` (state in ``state_dir``)."""
    import torch

    from medtailor.imageio import save_torch
    from medtailor.train.loop import train_model

    entry, role = final_entry(name, summary_dir, models_dir, scorer, params)
    out_dir = models_dir / name
    summary = train_model(
        name, entry, scorer.store_dir, out_dir, state_dir, int(params["seed"]), sink
    )
    # The checkpoint says what the model is in the search (the report's Table 1 reads it).
    checkpoint = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)
    checkpoint["search"] = role
    save_torch(checkpoint, out_dir / "best.pt")
    val = scorer.score(pd.read_parquet(out_dir / "predictions.parquet"))
    flat_role = {k: v for k, v in role.items() if isinstance(v, int | float | str)}
    return {**summary, "val_aufroc": val if val is not None else float("nan"), **flat_role}
