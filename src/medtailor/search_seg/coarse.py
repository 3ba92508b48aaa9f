"""The coarse topology search (C2FNAS, Algorithm 1), as pure functions of its history.

The topologies are clustered once (K-means on their level codes, seeded). The search
starts with ``initial_per_cluster`` random topologies of every cluster; after that, each
new candidate comes from sampling one trained network per cluster, ranking the clusters
by those sampled scores and drawing an untrained topology from the best cluster, or, with
probability ``explore``, from a random one. A cluster with nothing left to train gives way
to the next in the ranking.

Candidates run in generations: the initial ones, then ``workers`` at a time, so as many
candidates train at once as there are workers. Every draw is a function of the seed, the
generation and the history, so a killed search asks the same candidates again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CoarsePlan:
    budget: int
    workers: int
    initial: int  # candidates of generation 0 (initial_per_cluster x clusters)
    seed: int

    @property
    def generations(self) -> int:
        return 1 + max(0, math.ceil((self.budget - self.initial) / self.workers))

    def size(self, generation: int) -> int:
        if generation == 0:
            return min(self.initial, self.budget)
        return min(self.workers, self.budget - self.initial - (generation - 1) * self.workers)


def topology_key(levels: Sequence[int]) -> str:
    return "L" + "".join(str(int(level)) for level in levels)


def scored(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in history if r.get("score") is not None and np.isfinite(r["score"])]


def rank_clusters(
    history: Sequence[dict[str, Any]], clusters: int, rng: np.random.Generator
) -> list[int]:
    """Clusters best first by one sampled trained score each; unscored clusters last."""
    sampled: dict[int, float] = {}
    for cluster in range(clusters):
        scores = [r["score"] for r in scored(history) if r["cluster"] == cluster]
        if scores:
            sampled[cluster] = float(scores[rng.integers(len(scores))])
    ranked = sorted(sampled, key=lambda c: (-sampled[c], c))
    return ranked + [c for c in range(clusters) if c not in sampled]


def ask_coarse(
    topologies: Sequence[tuple[int, ...]],
    labels: np.ndarray,
    history: Sequence[dict[str, Any]],
    plan: CoarsePlan,
    generation: int,
    initial_per_cluster: int,
    explore: float,
) -> list[dict[str, Any]]:
    """The candidates of ``generation``: one record per topology to train."""
    rng = np.random.default_rng([plan.seed, generation])
    clusters = int(labels.max()) + 1
    taken = {topology_key(r["levels"]) for r in history}
    untrained = [
        [i for i in np.flatnonzero(labels == c) if topology_key(topologies[i]) not in taken]
        for c in range(clusters)
    ]
    picks: list[tuple[int, int, str]] = []  # (topology index, cluster, why)

    def draw(cluster: int, why: str) -> bool:
        pool = [i for i in untrained[cluster] if i not in {p[0] for p in picks}]
        if not pool:
            return False
        picks.append((int(pool[rng.integers(len(pool))]), cluster, why))
        return True

    if generation == 0:
        for cluster in range(clusters):
            for _ in range(initial_per_cluster):
                draw(cluster, "initial")
        picks = picks[: plan.size(0)]
    else:
        for _ in range(plan.size(generation)):
            ranked = rank_clusters(history, clusters, rng)
            if rng.random() < explore:
                ranked = [int(rng.integers(clusters)), *ranked]
                why = "explore"
            else:
                why = "best cluster"
            if not any(
                draw(cluster, why if n == 0 else "next cluster") for n, cluster in enumerate(ranked)
            ):
                break  # the whole space is trained
    return [
        {
            "generation": generation,
            "index": n,
            "levels": list(topologies[i]),
            "key": topology_key(topologies[i]),
            "cluster": cluster,
            "why": why,
        }
        for n, (i, cluster, why) in enumerate(picks)
    ]


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best-scoring trained topology (the earliest on ties)."""
    candidates = scored(history)
    return max(candidates, key=lambda r: r["score"]) if candidates else None


def cluster_proportions(history: Sequence[dict[str, Any]], clusters: int) -> np.ndarray:
    """Row n: the share of each cluster among the first n + 1 evaluated networks (the
    study's Figure 4: how the search concentrates on the promising clusters)."""
    counts = np.zeros(clusters)
    rows = []
    for record in history:
        counts[record["cluster"]] += 1
        rows.append(counts / counts.sum())
    return np.array(rows)
