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


def class_folder_set(folder, n_images: int, seed: int = 0):
    """A resample folder of ``n_images`` one-image patients in three unequal classes (as a
    class-folder ultrasound set with ``ingest.patient_from: file``)."""
    from medtailor.tables import MANIFEST_COLUMNS

    rng = np.random.default_rng(seed)
    labels = rng.choice(["benign", "malignant", "normal"], size=n_images, p=[0.56, 0.27, 0.17])
    ids = [f"img{i:04d}" for i in range(n_images)]
    manifest = pd.DataFrame({column: "" for column in MANIFEST_COLUMNS}, index=range(n_images))
    manifest["image_id"], manifest["patient_id"] = ids, [f"pat{i:04d}" for i in range(n_images)]
    manifest["patient_id_source"] = "file"
    folder.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(folder / "manifest.parquet")
    pd.DataFrame(columns=["image_id"]).to_parquet(folder / "boxes.parquet")
    pd.DataFrame({"image_id": ids, "label": labels}).to_parquet(folder / "classes.parquet")
    return pd.DataFrame({"patient_id": manifest["patient_id"], "label": labels})


def test_split_stratifies_classes_and_a_kept_split_moves_nobody(tmp_path):
    from medtailor.split import read_split, run_split

    params = {
        "split": {
            "fractions": [0.6, 0.2, 0.2],
            "key": "k7",
            "stratify": True,
            "keep": None,
            "allow_unidentified_patients": True,
        }
    }
    labels = class_folder_set(tmp_path / "first", 700)
    summary = run_split(tmp_path / "first", tmp_path / "first.csv", params)
    first = read_split(tmp_path / "first.csv").merge(labels)
    for label, rows in first.groupby("label"):
        shares = rows["split"].value_counts(normalize=True)
        for name, asked in zip(("train", "val", "test"), (0.6, 0.2, 0.2), strict=True):
            assert abs(shares[name] - asked) <= 0.05, (label, name, shares[name])
        assert summary["images_per_class"]["test"][label] == (rows["split"] == "test").sum()
    assert summary["strata"]["normal"]["test"] == summary["images_per_class"]["test"]["normal"]

    # 70 more images arrive: with the first split kept, no earlier patient moves and the
    # new ones keep every class near its fractions.
    grown = class_folder_set(tmp_path / "grown", 770)
    assert grown.iloc[:700].equals(labels)
    params["split"]["keep"] = str(tmp_path / "first.csv")
    summary = run_split(tmp_path / "grown", tmp_path / "grown.csv", params)
    after = read_split(tmp_path / "grown.csv").merge(grown)
    kept = after.set_index("patient_id").loc[first["patient_id"], "split"]
    assert (kept.to_numpy() == first["split"].to_numpy()).all()
    assert summary["kept_patients"] == 700
    for _, rows in after.groupby("label"):
        assert abs((rows["split"] == "test").mean() - 0.2) <= 0.05
