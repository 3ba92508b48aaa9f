"""The report's evidence section: counts per split and the warnings a reader must see."""

from __future__ import annotations

import pandas as pd

from medtailor.evaluate.evidence import evidence_table, evidence_warnings


def patch(split: str, patient: str, label: int, gt_id: str = "") -> dict:
    return {
        "split": split,
        "kind": "radiograph",
        "patient_id": patient,
        "label": label,
        "gt_id": gt_id,
    }


def test_evidence_counts_positives_patients_and_detector_recall_per_split():
    index = pd.DataFrame(
        [
            patch("train", "p1", 1, "b1"),
            patch("train", "p1", 1, "b1"),
            patch("train", "p2", 0),
            patch("val", "p3", 1, "b3"),
            patch("val", "p4", 0),
            patch("test", "p5", 0),
        ]
    )
    lesions = pd.DataFrame(
        {
            "box_id": ["b1", "b2", "b3", "b4", "b5"],
            "split": ["train", "train", "val", "val", "test"],
            "kind": "radiograph",
        }
    )
    # b1 and b3 have positive patches; b4 is overlapped by a candidate that is the best
    # match of another box (found all the same); b2 and b5 are missed.
    table = evidence_table(index, lesions, "radiograph", {"b1", "b3", "b4"}).set_index("split")
    assert table.loc["train", "positive_patches"] == 2
    assert table.loc["train", "patients_with_positives"] == 1
    assert table.loc["train", "detector_recall"] == 0.5  # b1 found, b2 missed
    assert table.loc["val", "detector_recall"] == 1.0
    assert table.loc["test", "positive_patches"] == 0 and table.loc["test", "detector_recall"] == 0

    warnings = evidence_warnings(
        table.reset_index(), {"min_positive_patches": 2, "min_patients_with_positives": 1}
    )
    assert any(w.startswith("val: 1 positive patch") for w in warnings)
    assert any(w.startswith("test: 0 patient(s) with a positive") for w in warnings)
    assert not any(w.startswith("train") for w in warnings)
    assert not any("found" in w for w in warnings)  # every validation lesion found
    table.loc["val", "detector_recall"] = 0.5
    warnings = evidence_warnings(
        table.reset_index(), {"min_positive_patches": 2, "min_patients_with_positives": 1}
    )
    assert any("found 50% of 2 lesions (1 missed)" in w for w in warnings)
    lenient = evidence_warnings(
        table.reset_index(), {"min_positive_patches": 0, "min_patients_with_positives": 0}
    )
    assert lenient == [w for w in warnings if "found" in w]


def test_the_boost_interval_is_imagenet_minus_scratch_whatever_the_pair_order():
    from medtailor.evaluate import paired_boost_interval

    comparisons = [{"a": "a_scratch", "b": "b_imagenet", "bootstrap_difference_ci": [-0.3, -0.1]}]
    # AUC(a_scratch) - AUC(b_imagenet) in [-0.3, -0.1]: the boost lies in [0.1, 0.3].
    assert paired_boost_interval(comparisons, "b_imagenet", "a_scratch") == [0.1, 0.3]
    comparisons[0].update(a="b_imagenet", b="a_scratch")
    assert paired_boost_interval(comparisons, "b_imagenet", "a_scratch") == [-0.3, -0.1]
    assert paired_boost_interval([], "b_imagenet", "a_scratch") is None
