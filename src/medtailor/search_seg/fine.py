"""The fine search on the coarse search's best topology, its figures, and the final network.

The supernet holds every operation in every cell and trains one uniformly sampled path per
step (the path of step s of epoch e is drawn from (seed, e, s), so a resumed run samples
the same paths); validation and predictions use the all-3D path, the coarse search's own
network. Operation assignments are then drawn at random and scored with the supernet's
last weights by sliding-window validation Dice; the best one is retrained from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtailor.figures import pyplot, save_figure
from medtailor.generations import write_json
from medtailor.imageio import atomic_output
from medtailor.search_seg import candidate_entry, coarse_history, final_names, topology_space
from medtailor.search_seg.coarse import best_record, cluster_proportions
from medtailor.search_seg.space import OPERATIONS, random_assignments, sample_path

REFERENCE_OPERATION = "3d"


def single_path_sampler(seed: int):
    """The train_seg step hook of the supernet: a uniform path per step, the all-3D path
    for validation and predictions."""

    def sample(model: torch.nn.Module, epoch: int, step: int | None) -> None:
        if step is None:
            model.set_path([REFERENCE_OPERATION] * len(model.cells))
        else:
            model.set_path(sample_path(model.choices, np.random.default_rng([seed, epoch, step])))

    return sample


def history_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(history)
    table.insert(0, "order", range(len(table)))
    table["levels"] = table["levels"].map(lambda levels: "-".join(map(str, levels)))
    table["best_so_far"] = table["score"].cummax()
    return table


def run_fine_search(
    search_dir: Path,
    resample_dir: Path,
    split_csv: Path,
    state_root: Path,
    out_dir: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    from tqdm import tqdm

    from medtailor.runtime import distributed_context
    from medtailor.train_seg.data import segmentation_rows
    from medtailor.train_seg.loop import (
        mean_foreground_dice,
        split_samples,
        train_segmentation,
        validation_dice,
    )
    from medtailor.train_seg.models import SegInput, create_seg_model

    cfg, seed = params["search_seg"], int(params["seed"])
    history = coarse_history(search_dir, params)
    best = best_record(history)
    if best is None:
        raise RuntimeError(f"{search_dir}: no coarse candidate has a finite validation Dice")
    cells = len(best["levels"])
    entry = candidate_entry(params, best["levels"], [list(OPERATIONS)] * cells, "supernet_recipe")
    folder = state_root / "supernet" / best["key"]
    supernet = train_segmentation(
        "supernet",
        entry,
        resample_dir,
        split_csv,
        None,
        folder / "model",
        folder / "state",
        seed,
        sink,
        on_step=single_path_sampler(seed),
    )

    saved = torch.load(folder / "model" / "best.pt", map_location="cpu", weights_only=True)
    model = create_seg_model(saved["entry"], SegInput(**saved["data"]))
    # The last weights, not the best reference path's: every path trained until the end.
    last = torch.load(folder / "state" / "last.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(last["model"])
    _, _, device = distributed_context()
    model = model.to(device)
    val = split_samples(resample_dir, segmentation_rows(resample_dir, split_csv), entry, "val")
    rng = np.random.default_rng([seed, cells])
    assignments = random_assignments(int(cfg["assignments"]), cells, rng)
    reference = (REFERENCE_OPERATION,) * cells
    if reference not in assignments:
        assignments.append(reference)  # what the coarse search trained, for comparison
    rows = []
    for assignment in tqdm(assignments, desc="fine search", unit="assignment"):
        model.set_path(assignment)
        score = mean_foreground_dice(validation_dice(model, val, entry, device))
        rows.append({"operations": "-".join(assignment), "score": score})
    scores = pd.DataFrame(rows)
    chosen = int(scores["score"].fillna(-1.0).to_numpy().argmax())
    selection = {
        "levels": best["levels"],
        "topology_key": best["key"],
        "coarse_score": best["score"],
        "operations": list(assignments[chosen]),
        "supernet_score": float(scores.loc[chosen, "score"]),
        "reference_supernet_score": float(
            scores.loc[scores["operations"] == "-".join(reference), "score"].iloc[0]
        ),
        "assignments_scored": len(assignments),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "selection.json", selection)
    with atomic_output(out_dir / "fine_scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    table = history_table(history)
    with atomic_output(out_dir / "history.csv") as tmp:
        table.to_csv(tmp, index=False)
    _, labels = topology_space(params)
    figures = search_figures(table, int(labels.max()) + 1, selection, scores, out_dir)
    return {
        "coarse_candidates": len(history),
        "best_coarse_score": best["score"],
        "supernet_epochs": supernet["epochs"],
        "assignments_scored": len(assignments),
        "best_supernet_score": selection["supernet_score"],
        "reference_supernet_score": selection["reference_supernet_score"],
        "figures": [str(p) for p in figures],
    }


def search_figures(
    table: pd.DataFrame,
    clusters: int,
    selection: dict[str, Any],
    scores: pd.DataFrame,
    out_dir: Path,
) -> list[Path]:
    """Cluster proportions along the coarse search (the study's Figure 4), the coarse
    scores, the fine search's score distribution and the selected network drawn."""
    plt = pyplot()
    figures = out_dir / "figures"
    paths = []

    shares = cluster_proportions(table.to_dict("records"), clusters)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.stackplot(
        np.arange(1, len(shares) + 1),
        shares.T,
        labels=[f"cluster {c}" for c in range(clusters)],
    )
    ax.set_xlabel("networks evaluated")
    ax.set_ylabel("share of evaluated networks")
    ax.set_ylim(0, 1)
    ax.set_title("Coarse search: where the evaluated topologies come from")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    paths.append(save_figure(fig, figures / "coarse_clusters.png"))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].scatter(table["order"] + 1, table["score"], c=table["cluster"], cmap="tab10", s=16)
    axes[0].step(table["order"] + 1, table["best_so_far"], where="post", color="k")
    axes[0].set_xlabel("coarse candidate")
    axes[0].set_ylabel("validation mean Dice")
    axes[0].set_title("Coarse search (colour: cluster)")
    axes[1].hist(scores["score"].dropna(), bins=min(30, max(5, len(scores) // 5)))
    axes[1].axvline(selection["reference_supernet_score"], color="C1", label="all 3D")
    axes[1].axvline(selection["supernet_score"], color="C2", label="selected")
    axes[1].set_xlabel("validation mean Dice (supernet weights)")
    axes[1].set_ylabel("assignments")
    axes[1].set_title("Fine search")
    axes[1].legend(fontsize=8)
    paths.append(save_figure(fig, figures / "search_scores.png"))

    paths.append(draw_network(selection["levels"], selection["operations"], figures))
    return paths


def draw_network(levels: list[int], operations: list[str], figures: Path) -> Path:
    """The selected network: one box per cell at its level, coloured by operation."""
    plt = pyplot()
    colours = {"3d": "C0", "p3d": "C1", "2d": "C2"}
    nodes = [0, *levels]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(nodes)), 3.2))
    ax.plot(range(len(nodes)), nodes, color="grey", zorder=1)
    ax.scatter([0], [0], marker="s", s=160, color="k", zorder=2, label="stem")
    for cell, (level, op) in enumerate(zip(levels, operations, strict=True), start=1):
        ax.scatter([cell], [level], marker="s", s=160, color=colours[op], zorder=2)
    for op, colour in colours.items():
        ax.scatter([], [], marker="s", color=colour, label=op)
    ax.set_ylim(max(nodes) + 0.6, -0.6)  # deeper levels lower, as a U is drawn
    ax.set_xlabel("cell")
    ax.set_ylabel("level (resolution / 2^(level+1))")
    ax.set_title("Selected network: " + "-".join(map(str, levels)))
    ax.legend(fontsize=8, ncol=4, loc="lower center")
    return save_figure(fig, figures / "selected_network.png")


def run_search_seg_final(
    name: str,
    fine_dir: Path,
    resample_dir: Path,
    split_csv: Path,
    ingest_dir: Path | None,
    out_dir: Path,
    state_dir: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    """Train the selected network from scratch (at the scale its name says)."""
    from medtailor.train_seg.loop import train_segmentation

    names = final_names(params)
    if name not in names:
        raise ValueError(f"unknown final segmentation model {name!r}; params give {names}")
    scale = float(params["search_seg"]["scales"][names.index(name)])
    selection = json.loads((fine_dir / "selection.json").read_text())
    entry = candidate_entry(
        params, selection["levels"], selection["operations"], "final_recipe", scale
    )
    summary = train_segmentation(
        name,
        entry,
        resample_dir,
        split_csv,
        ingest_dir,
        out_dir,
        state_dir,
        int(params["seed"]),
        sink,
    )
    return {**summary, "scale": scale}
