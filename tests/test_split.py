from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtailor.split import allocate, assign_splits


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 10, 101])
def test_allocation_is_exact_and_close_to_the_fractions(n):
    counts = allocate(n, [0.6, 0.2, 0.2])
    assert sum(counts) == n
    assert all(abs(c - f * n) < 1 for c, f in zip(counts, [0.6, 0.2, 0.2], strict=True))


def patients(n: int, lesion_share: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"patient_id": [f"P{i:04d}" for i in range(n)], "has_lesion": rng.random(n) < lesion_share}
    )


def test_split_is_stratified_deterministic_and_independent_of_row_order():
    table = patients(200, 0.3)
    first = assign_splits(table, [0.6, 0.2, 0.2], seed=7)
    again = assign_splits(table.sample(frac=1, random_state=3), [0.6, 0.2, 0.2], seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert first["patient_id"].is_unique
    for _, stratum in first.groupby("has_lesion"):
        shares = stratum["split"].value_counts(normalize=True)
        assert shares["train"] == pytest.approx(0.6, abs=0.02)
        assert shares["val"] == pytest.approx(0.2, abs=0.02)
    other_seed = assign_splits(table, [0.6, 0.2, 0.2], seed=8)
    assert not first["split"].equals(other_seed["split"])
