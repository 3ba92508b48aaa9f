"""The (1+1) evolution strategy: nevergrad's ``DiscreteBSOOnePlusOne`` over the genes.

Each gene is an ``ng.p.TransitionChoice`` (one dimension per gene; ``ng.p.Choice`` would
add one per value and mutations that may leave the value unchanged). The search runs in
generations of ``workers`` candidates; the first candidate is the space's reference
network (``optimizer.suggest``).

Nothing of nevergrad is pickled (its state grows by about 100 KB per tell): the history
(one record per candidate: generation, genotype, canonical key, score) is the state, and
``replay`` rebuilds the optimiser by asking and telling it again with the same seed. A
replay that asks something other than what the history recorded fails loudly (other
settings, or another nevergrad version).

nevergrad mutates each gene with probability max(1, d - t d / B) / d at tell t of a budget
B (d genes), so the first half of a budget is close to random search; the history records
the fraction of genes each candidate changed from the best genotype so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # spaces imports torch; the plan and the history need none of it
    from medtailor.search.spaces import ElasticSpace

# The loss told for a candidate over the parameter or MAC limit (scores lie in [0, 1]).
INFEASIBLE_LOSS = 1.0


class HistoryMismatch(RuntimeError):
    """Replaying the history asked other candidates than it recorded."""


@dataclass(frozen=True)
class SearchPlan:
    budget: int
    workers: int
    seed: int

    @property
    def generations(self) -> int:
        return math.ceil(self.budget / self.workers)

    def size(self, generation: int) -> int:
        """Candidates of ``generation`` (the last one may be smaller)."""
        return min(self.workers, self.budget - generation * self.workers)


def create_optimizer(space: ElasticSpace, plan: SearchPlan) -> Any:
    import nevergrad as ng

    parametrization = ng.p.Instrumentation(*[ng.p.TransitionChoice(g.choices) for g in space.genes])
    parametrization.random_state = np.random.RandomState(plan.seed)
    optimizer = ng.optimizers.DiscreteBSOOnePlusOne(
        parametrization=parametrization, budget=plan.budget, num_workers=plan.workers
    )
    optimizer.suggest(*space.reference_genotype())
    return optimizer


def loss_of(record: dict[str, Any]) -> float:
    """nevergrad minimises: the negated score; infeasible candidates get the worst loss."""
    if not record.get("feasible", True):
        return INFEASIBLE_LOSS
    score = record.get("score")
    return -float(score) if score is not None and np.isfinite(score) else 0.0


def best_so_far(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The record with the lowest loss (the first one on ties, as the (1+1) keeps its parent)."""
    best = None
    for record in history:
        if best is None or loss_of(record) < loss_of(best):
            best = record
    return best


def mutated_fraction(genotype: Sequence[int], parent: Sequence[int]) -> float:
    changed = sum(a != b for a, b in zip(genotype, parent, strict=True))
    return changed / len(genotype)


def replay(space: ElasticSpace, plan: SearchPlan, history: Sequence[dict[str, Any]]) -> Any:
    """The optimiser after the generations recorded in ``history`` (complete ones only)."""
    optimizer = create_optimizer(space, plan)
    by_generation: dict[int, list[dict[str, Any]]] = {}
    for record in history:
        by_generation.setdefault(int(record["generation"]), []).append(record)
    for generation in range(len(by_generation)):
        records = sorted(by_generation.get(generation, []), key=lambda r: r["index"])
        if len(records) != plan.size(generation):
            raise HistoryMismatch(
                f"generation {generation} has {len(records)} of {plan.size(generation)} records"
            )
        asked = [optimizer.ask() for _ in records]
        for candidate, record in zip(asked, records, strict=True):
            if list(candidate.args) != list(record["genotype"]):
                raise HistoryMismatch(
                    f"generation {generation}, candidate {record['index']}: replay asked "
                    f"{list(candidate.args)}, the history has {record['genotype']} (another "
                    "seed, budget, workers, space or nevergrad version wrote it)"
                )
        for candidate, record in zip(asked, records, strict=True):
            optimizer.tell(candidate, loss_of(record))
    return optimizer


def ask_generation(
    space: ElasticSpace, plan: SearchPlan, history: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The candidates of the next generation: genotype, canonical form and key, and the
    fraction of genes changed from the best genotype so far."""
    generation = len({int(r["generation"]) for r in history})
    if generation >= plan.generations:
        raise ValueError(f"the budget of {plan.budget} candidates is spent")
    optimizer = replay(space, plan, history)
    # The parent is the best so far; before any score, the reference network.
    best = best_so_far(history)
    parent = best["genotype"] if best else list(space.reference_genotype())
    asked = []
    for index in range(plan.size(generation)):
        genotype = [int(v) for v in optimizer.ask().args]
        suggested = generation == 0 and index == 0  # the reference itself, not a mutation
        asked.append(
            {
                "generation": generation,
                "index": index,
                "genotype": genotype,
                "canonical": list(space.canonical(genotype)),
                "key": space.key(genotype),
                "mutated_fraction": None if suggested else mutated_fraction(genotype, parent),
            }
        )
    return asked
