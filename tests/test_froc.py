"""FROC, AUFROC and LUNA16 on hand-built cases whose curve is worked out on paper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtailor.evaluate.detection import candidate_hits, froc_summary, recall_by_candidates
from medtailor.evaluate.froc import (
    aufroc,
    best_recall_at,
    build_froc_data,
    froc_curve,
    luna16_score,
)
from medtailor.evaluate.stats import cluster_weights

IMAGES = pd.DataFrame(
    {
        "image_id": ["I1", "I2", "I3", "I4"],
        "study_id": ["S1", "S1", "S2", "S3"],
        "shape": [[100, 100]] * 4,
    }
)
# Lesion L1 is boxed on both images of study S1; L2 on the image of S2; S3 has no lesion.
TRUTHS = pd.DataFrame(
    {
        "image_id": ["I1", "I2", "I3"],
        "box_id": ["b1", "b2", "b3"],
        "lesion_id": ["L1", "L1", "L2"],
        "x0": [10.0, 50.0, 20.0],
        "y0": [10.0, 50.0, 20.0],
        "x1": [20.0, 60.0, 40.0],
        "y1": [20.0, 60.0, 40.0],
        "study_id": ["S1", "S1", "S2"],
    }
)


def candidate(image, x0, y0, x1, y1, score):
    return {
        "image_id": image,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "z0": np.nan,
        "z1": np.nan,
        "score": score,
    }


def curve(candidates: pd.DataFrame, in_between: str = "false_positive"):
    scored = candidate_hits(
        candidates, TRUTHS, IMAGES.set_index("image_id")["shape"], 0.5, 0.2, in_between
    )
    scored = scored.merge(IMAGES[["image_id", "study_id"]], on="image_id")
    lesions = TRUTHS.groupby("lesion_id", as_index=False)["study_id"].first()
    return froc_curve(build_froc_data(scored, lesions, IMAGES[["image_id", "study_id"]])), scored


HAND_BUILT = pd.DataFrame(
    [
        candidate("I3", 20, 20, 40, 30, 0.95),  # IoU 0.5 with b3: in between, hits nothing
        candidate("I1", 10, 10, 20, 20, 0.9),  # hits L1
        candidate("I2", 50, 50, 60, 60, 0.8),  # hits L1 again: the lesion counts once
        candidate("I4", 0, 0, 10, 10, 0.7),  # false positive on the lesion-free study
        candidate("I3", 21, 21, 40, 40, 0.6),  # hits L2
    ]
)


def test_hand_built_curve_counts_an_in_between_candidate_as_a_false_positive():
    """The default rule, the same as the validation/test patch labels: a candidate that hits
    no lesion is a false positive (and a negative for AUC), whatever its overlap."""
    (fppi, recall), scored = curve(HAND_BUILT)
    assert list(scored.sort_values("score")["false_positive"]) == [False, True, False, False, True]
    # Thresholds 0.95, 0.9, 0.8, 0.7, 0.6; recall averages the studies S1 and S2; 4 images.
    np.testing.assert_allclose(fppi, [0.25, 0.25, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 0.5, 1.0])
    # The step curve is 0 below 0.25 FPPI, 0.5 up to 0.5 FPPI, then 1.
    assert aufroc(fppi, recall, 0.02, 0.5) == pytest.approx((0.0 * 0.23 + 0.5 * 0.25) / 0.48)
    assert luna16_score(fppi, recall) == pytest.approx((0.0 + 0.5 + 5 * 1.0) / 7)


def test_hand_built_curve_with_in_between_candidates_ignored():
    (fppi, recall), scored = curve(HAND_BUILT, "ignored")
    assert list(scored.sort_values("score")["false_positive"]) == [False, True, False, False, False]
    np.testing.assert_allclose(fppi, [0, 0, 0, 0.25, 0.25])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 0.5, 1.0])
    # The step curve is 0.5 below 0.25 FPPI and 1 from 0.25 on; the bounds fall between points.
    assert aufroc(fppi, recall, 0.02, 0.5) == pytest.approx((0.5 * 0.23 + 1.0 * 0.25) / 0.48)
    assert aufroc(fppi, recall, 0.3, 0.5) == pytest.approx(1.0)
    assert luna16_score(fppi, recall) == pytest.approx((0.5 + 6 * 1.0) / 7)


def froc_inputs(studies_per_patient: int):
    """Ten patients; patient k has ``studies_per_patient`` identical copies of one study with
    one image, a lesion in the first six patients, and two scored candidates."""
    rng = np.random.default_rng(3)
    images, candidates, lesions = [], [], []
    for patient in range(10):
        found, false_score = rng.random() < 0.7, rng.random()
        for copy in range(studies_per_patient):
            study, image = f"S{patient}-{copy}", f"I{patient}-{copy}"
            images.append({"image_id": image, "study_id": study, "patient_id": f"P{patient}"})
            has_lesion = patient < 6
            if has_lesion:
                lesions.append({"lesion_id": f"L{patient}-{copy}", "study_id": study})
            hits = [f"L{patient}-{copy}"] if has_lesion and found else []
            candidates.append(
                {
                    "study_id": study,
                    "s": 0.3 + 0.7 * found,
                    "hits": hits,
                    "false_positive": not hits,
                }
            )
            candidates.append(
                {"study_id": study, "s": false_score, "hits": [], "false_positive": True}
            )
    return pd.DataFrame(candidates), pd.DataFrame(lesions), pd.DataFrame(images)


def test_froc_interval_resamples_patients_and_counts_undefined_replicates():
    cfg = {"aufroc_fppi": [0.02, 2.0]}
    one = froc_summary(*froc_inputs(1), "s", cfg, 300, 0.9, 5)[0]
    # Two identical studies per patient: a patient bootstrap draws them together, so the
    # interval is the same as with one study per patient (a study bootstrap would narrow it).
    two = froc_summary(*froc_inputs(2), "s", cfg, 300, 0.9, 5)[0]
    assert two["aufroc"] == pytest.approx(one["aufroc"])
    assert two["aufroc_ci"] == pytest.approx(one["aufroc_ci"])
    # Replicates that draw none of the six lesion patients have no recall: counted, not hidden.
    draws = cluster_weights(np.arange(10), 300, np.random.default_rng(5))
    assert one["aufroc_ci_undefined"] == int((draws[:, :6].sum(axis=1) == 0).sum())
    _, _, images = froc_inputs(1)
    rare = froc_inputs(1)
    rare_lesions = rare[1].iloc[:1]
    rare_candidates = rare[0].assign(hits=[h if h[:1] == ["L0-0"] else [] for h in rare[0]["hits"]])
    summary = froc_summary(rare_candidates, rare_lesions, images, "s", cfg, 300, 0.9, 5)[0]
    assert summary["aufroc_ci_undefined"] == int((draws[:, 0] == 0).sum()) > 0


def test_recall_is_averaged_over_studies_not_lesions():
    truths = pd.concat(
        [
            TRUTHS,
            pd.DataFrame(
                [
                    {
                        "image_id": "I1",
                        "box_id": "b4",
                        "lesion_id": "L3",
                        "x0": 70.0,
                        "y0": 70.0,
                        "x1": 90.0,
                        "y1": 90.0,
                        "study_id": "S1",
                    }
                ]
            ),
        ]
    )
    candidates = pd.DataFrame(
        [candidate("I1", 10, 10, 20, 20, 0.9), candidate("I3", 20, 20, 40, 40, 0.8)]
    )
    scored = candidate_hits(
        candidates, truths, IMAGES.set_index("image_id")["shape"], 0.5, 0.2, "ignored"
    )
    scored = scored.merge(IMAGES[["image_id", "study_id"]], on="image_id")
    lesions = truths.groupby("lesion_id", as_index=False)["study_id"].first()
    _, recall = froc_curve(build_froc_data(scored, lesions, IMAGES[["image_id", "study_id"]]))
    # S1 finds one of its two lesions (0.5), S2 its only one (1.0): recall 0.75, not 2/3.
    assert recall[-1] == pytest.approx(0.75)
    assert recall[0] == pytest.approx(0.25)


def test_images_without_lesions_only_add_to_the_image_count():
    candidates = pd.DataFrame(
        [candidate("I1", 10, 10, 20, 20, 0.9), candidate("I4", 50, 50, 70, 70, 0.5)]
    )
    (fppi, recall), _ = curve(candidates)
    np.testing.assert_allclose(fppi, [0, 0.25])  # one false positive over four images
    np.testing.assert_allclose(recall, [0.5, 0.5])


def test_step_function_takes_the_best_recall_within_the_budget():
    fppi, recall = np.array([0.0, 0.1, 0.4]), np.array([0.2, 0.6, 0.5])
    np.testing.assert_allclose(
        best_recall_at(fppi, recall, [0.0, 0.05, 0.1, 1.0]), [0.2, 0.2, 0.6, 0.6]
    )
    with pytest.raises(ValueError):
        aufroc(fppi, recall, 0.5, 0.1)


def test_froc_figure_axis_is_logarithmic_with_readable_operating_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtailor.evaluate.report import froc_axis

    fig, ax = plt.subplots()
    ax.step([0.01, 0.3, 5.0], [0.2, 0.6, 0.9])
    froc_axis(ax, 0.02)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.get_xscale() == "log"
    assert labels[-7:] == ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    assert all("10^" not in label and "times" not in label for label in labels)
    assert ax.get_xlim()[0] <= 0.01
    plt.close(fig)


def test_recall_by_candidates_counts_a_lesion_from_the_rank_of_its_best_hit():
    candidates = pd.DataFrame(
        {
            "image_id": ["a", "a", "a", "b", "b"],
            "score": [90.0, 80.0, 70.0, 60.0, 50.0],
            # In image a the best candidate misses, the second finds L1, the third L2;
            # in image b the second candidate finds L3. L4 is never found.
            "hits": [[], ["L1"], ["L2", "L1"], [], ["L3"]],
        }
    )
    lesions = pd.DataFrame({"lesion_id": ["L1", "L2", "L3", "L4"]})
    table = recall_by_candidates(candidates, lesions, 4)
    assert table["candidates_per_image"].tolist() == [1, 2, 3, 4]
    assert table["recall"].tolist() == [0.0, 0.5, 0.75, 0.75]
    # No candidate at all: nothing found; no lesion: undefined, not zero.
    assert recall_by_candidates(candidates.iloc[:0], lesions, 2)["recall"].tolist() == [0, 0]
    assert recall_by_candidates(candidates, lesions.iloc[:0], 2)["recall"].isna().all()
