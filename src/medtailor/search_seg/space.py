"""The C2FNAS search space: topologies (levels per cell) and operations (one per cell).

A topology is the tuple of resolution levels after each of ``cells`` cells, starting from
level 0 after the input stem: every cell keeps the level, goes one down (down-sampling) or
one up (up-sampling). The U-shape prior allows exactly ``downsamplings`` of each and ends
back at level 0:

- ``"u"`` (default, the study's): every down-sampling comes before every up-sampling, so a
  topology is where the 2 x downsamplings resolution changes sit among the cells:
  C(12, 6) = 924 topologies for 12 cells and 3 down-samplings;
- ``"loose"``: downs and ups interleave freely within levels 0..downsamplings: 4,620.

The fine search then picks one of :data:`OPERATIONS` per cell: 3^12 = 531,441 assignments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULES = ("u", "loose")
# The operations a cell may hold: 3x3x3 (3D), 3x3x1 then 1x1x3 (pseudo-3D), 3x3x1 (2D).
OPERATIONS: tuple[str, ...] = ("3d", "p3d", "2d")
Topology = tuple[int, ...]


def enumerate_topologies(
    cells: int = 12, downsamplings: int = 3, rule: str = "u"
) -> list[Topology]:
    """Every topology the rule allows, in lexicographic order of the level codes."""
    if rule not in RULES:
        raise ValueError(f"unknown topology rule {rule!r}; choose from {RULES}")
    found: list[Topology] = []

    def extend(levels: list[int], downs: int, ups: int) -> None:
        level = levels[-1] if levels else 0
        left = cells - len(levels)
        if left == 0:
            if downs == ups == downsamplings:
                found.append(tuple(levels))
            return
        # Enough cells must remain for the up-samplings still owed.
        for step in (-1, 0, 1):
            n_down, n_up = downs + (step == 1), ups + (step == -1)
            if n_down > downsamplings or n_up > downsamplings:
                continue
            if not 0 <= level + step <= downsamplings:
                continue
            if rule == "u" and step == 1 and ups > 0:
                continue
            if (downsamplings - n_down) + (downsamplings - n_up) > left - 1:
                continue
            extend([*levels, level + step], n_down, n_up)

    extend([], 0, 0)
    return sorted(found)


def operation_count(cells: int = 12) -> int:
    return len(OPERATIONS) ** cells


def random_assignments(count: int, cells: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """``count`` distinct operation assignments drawn uniformly (fewer if the space is smaller)."""
    count = min(count, operation_count(cells))
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < count:
        seen[tuple(OPERATIONS[i] for i in rng.integers(len(OPERATIONS), size=cells))] = None
    return list(seen)


def cluster_topologies(topologies: Sequence[Topology], k: int, seed: int) -> np.ndarray:
    """K-means cluster of every topology's level code (the coarse search's guide)."""
    from sklearn.cluster import KMeans

    codes = np.asarray(topologies, dtype=float)
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(codes)


def sample_path(choices: Sequence[Sequence[str]], rng: np.random.Generator) -> list[str]:
    """One operation per cell, uniformly among the cell's choices (single-path sampling)."""
    return [str(cell[rng.integers(len(cell))]) for cell in choices]
