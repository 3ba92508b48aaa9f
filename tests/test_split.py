from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from medtailor.split import SplitError, assign_splits, identification_check


def patients(n: int, lesion_share: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"patient_id": [f"P{i:04d}" for i in range(n)], "has_lesion": rng.random(n) < lesion_share}
    )


def test_split_is_deterministic_proportional_and_independent_of_row_order():
    table = patients(3000, 0.3)
    first = assign_splits(table, [0.6, 0.2, 0.2], key="k7")
    again = assign_splits(table.sample(frac=1, random_state=3), [0.6, 0.2, 0.2], key="k7")
    pd.testing.assert_frame_equal(first, again)
    assert first["patient_id"].is_unique
    for _, stratum in first.groupby("has_lesion"):
        shares = stratum["split"].value_counts(normalize=True)
        assert shares["train"] == pytest.approx(0.6, abs=0.04)
        assert shares["val"] == pytest.approx(0.2, abs=0.04)
    other_seed = assign_splits(table, [0.6, 0.2, 0.2], key="k8")
    assert not first["split"].equals(other_seed["split"])


def test_adding_or_removing_patients_moves_no_other_patient():
    table = patients(200, 0.3)
    before = assign_splits(table, [0.6, 0.2, 0.2], key="k7").set_index("patient_id")["split"]
    grown = pd.concat([table, pd.DataFrame({"patient_id": ["NEW1", "NEW2"], "has_lesion": True})])
    after = assign_splits(grown, [0.6, 0.2, 0.2], key="k7").set_index("patient_id")["split"]
    pd.testing.assert_series_equal(after.loc[before.index], before)
    shrunk = assign_splits(table.iloc[50:], [0.6, 0.2, 0.2], key="k7").set_index("patient_id")
    pd.testing.assert_series_equal(shrunk["split"], before.loc[shrunk.index])


def identified(sources: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(len(sources))], "patient_id_source": sources}
    )


def test_patients_known_only_by_study_or_file_are_flagged_or_refused(caplog):
    caplog.set_level(logging.WARNING)
    count, warnings = identification_check(identified(["PatientID"] * 3 + ["study"]), False)
    assert (
        count == 1
        and "1 of 4 patients were identified only by their study or file" in (warnings[0])
    )
    assert "WARNING" in caplog.text
    majority = identified(["PatientID", "file", "study"])
    with pytest.raises(SplitError, match=r"split\.allow_unidentified_patients: true"):
        identification_check(majority, False)
    assert identification_check(majority, True)[0] == 2
