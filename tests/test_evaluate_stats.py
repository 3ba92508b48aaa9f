"""Statistics against references: pROC (DeLong), brute force, scikit-learn, statsmodels, MONAI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import DiceMetric
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar

from medtailor.dice import dice_per_case
from medtailor.evaluate.calibration import comparison_rates, grid_rates
from medtailor.evaluate.stats import (
    PairedCases,
    cluster_weights,
    delong_covariance,
    delong_test,
    holm,
    logit_t_interval,
    matched_decision_tests,
    matched_thresholds,
    mcnemar_test,
    percentile_interval,
    rates_at,
    weighted_auc,
)

from .conftest import SHARED

ASAH = SHARED / "reference" / "aSAH.csv"


@pytest.mark.skipif(not ASAH.is_file(), reason="../shared/reference/aSAH.csv absent")
def test_delong_reproduces_proc_on_asah():
    data = pd.read_csv(ASAH)
    poor = (data["outcome"] == "Poor").to_numpy()
    auc, cov = delong_covariance(poor, np.vstack([data["wfns"], data["s100b"], data["ndka"]]))
    np.testing.assert_allclose(
        auc, [0.823678861788618, 0.731368563685637, 0.611957994579946], rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(
        np.diag(cov),
        [0.00146991470882363, 0.00266868245717244, 0.0031908105493913],
        rtol=0,
        atol=1e-9,
    )
    test = delong_test(poor, data["wfns"], data["s100b"])
    assert test.z == pytest.approx(2.20898359144091, abs=1e-9)
    assert test.p_value == pytest.approx(0.0271757822291882, abs=1e-9)
    assert (test.ci_low, test.ci_high) == pytest.approx((0.01040618, 0.17421442), abs=1e-8)
    other = delong_test(poor, data["wfns"], data["ndka"])
    assert (other.z, other.p_value) == pytest.approx(
        (2.79777591868904, 0.00514557970691098), abs=1e-9
    )
    last = delong_test(poor, data["ndka"], data["s100b"])
    assert (last.z, last.p_value) == pytest.approx((-1.39077002573558, 0.164295175223054), abs=1e-9)


def brute_force_delong(labels, scores):
    """The O(m n) definition: Mann-Whitney kernel, structural components, covariance."""
    positives, negatives = scores[:, labels], scores[:, ~labels]
    kernel = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (
        positives[:, :, None] == negatives[:, None, :]
    )
    auc = kernel.mean(axis=(1, 2))
    v10, v01 = kernel.mean(axis=2), kernel.mean(axis=1)
    cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    return auc, cov


def test_fast_delong_matches_the_brute_force_definition_with_ties():
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.3
    scores = np.vstack([np.round(labels * 0.8 + rng.normal(0, 1, 300), 1) for _ in range(3)])
    auc, cov = delong_covariance(labels, scores)
    expected_auc, expected_cov = brute_force_delong(labels, scores)
    np.testing.assert_allclose(auc, expected_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, rtol=0, atol=1e-12)
    for k in range(3):
        assert auc[k] == pytest.approx(roc_auc_score(labels, scores[k]), abs=1e-12)


def test_weighted_auc_agrees_with_sklearn_and_with_duplicated_rows():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.4
    scores = np.round(rng.normal(labels * 0.7, 1), 1)
    assert weighted_auc(labels, scores, np.ones((1, 500)))[0] == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
    weights = rng.integers(0, 3, 500)
    repeated = np.repeat(np.arange(500), weights)
    assert weighted_auc(labels, scores, weights[None])[0] == pytest.approx(
        roc_auc_score(labels[repeated], scores[repeated]), abs=1e-12
    )


def test_mcnemar_and_holm_agree_with_statsmodels():
    rng = np.random.default_rng(1)
    labels = rng.random(400) < 0.5
    a = np.where(rng.random(400) < 0.8, labels, ~labels)
    b = np.where(rng.random(400) < 0.7, labels, ~labels)
    ours = mcnemar_test(labels, a, b)
    right_a, right_b = a == labels, b == labels
    table = (
        pd.crosstab(right_a, right_b).reindex(index=[True, False], columns=[True, False]).to_numpy()
    )
    reference = mcnemar(table, exact=False, correction=True)
    assert ours["p_value"] == pytest.approx(reference.pvalue, abs=1e-12) and not ours["exact"]
    small = mcnemar_test(labels[:30], a[:30], b[:30])
    assert small["exact"]


def test_holm_adjusts_by_hand_worked_ranks():
    # Sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.2; then the running
    # maximum keeps 0.09 for 0.04; capped at 1.
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_dice_agrees_with_monai_and_with_the_definition():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, (2, 12, 12, 8))
    prediction = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 3, truth.shape))
    prediction[1][prediction[1] == 2] = 0  # class 2 absent from one prediction
    ours = dice_per_case(list(prediction), list(truth), classes=[1, 2])
    for case in range(2):
        for column, value in enumerate([1, 2]):
            a, b = prediction[case] == value, truth[case] == value
            assert ours[case, column] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))

    def one_hot(x):
        return torch.nn.functional.one_hot(torch.as_tensor(x), 3).permute(0, 4, 1, 2, 3).float()

    metric = DiceMetric(include_background=False, reduction="none")
    monai = metric(one_hot(prediction), one_hot(truth)).numpy()
    np.testing.assert_allclose(ours, monai, atol=1e-6)


def simulate(n_patients: int, per_patient: int, rng: np.random.Generator):
    """Patches of one patient share a random effect, and lesion patients contribute most
    positives: patches of a patient are correlated, as candidates of one study are."""
    effect = rng.normal(0, 1.0, n_patients)
    lesion_patient = rng.random(n_patients) < 0.4
    patient = np.repeat(np.arange(n_patients), per_patient)
    labels = rng.random(n_patients * per_patient) < np.where(lesion_patient, 0.6, 0.05)[patient]
    scores = labels + effect[patient] + rng.normal(0, 0.5, n_patients * per_patient)
    return labels, scores, patient


def test_patient_bootstrap_covers_at_its_nominal_rate_and_patch_bootstrap_does_not():
    population = simulate(100_000, 12, np.random.default_rng(1))
    true_auc = weighted_auc(population[0], population[1], np.ones((1, len(population[0]))))[0]
    rng = np.random.default_rng(2)
    covered = {"patient": 0, "patch": 0}
    datasets = 400
    for _ in range(datasets):
        labels, scores, patient = simulate(100, 12, rng)
        for name, clusters in (("patient", patient), ("patch", np.arange(len(labels)))):
            low, high = percentile_interval(
                weighted_auc(labels, scores, cluster_weights(clusters, 200, rng)), 0.90
            )
            covered[name] += low <= true_auc <= high
    patient_rate, patch_rate = covered["patient"] / datasets, covered["patch"] / datasets
    assert 0.86 <= patient_rate <= 0.94, patient_rate
    assert patch_rate < patient_rate - 0.03 and patch_rate < 0.86, patch_rate


def brute_force_obuchowski(labels, scores, clusters):
    """Obuchowski (1997) written out: per-case kernel sums, per-cluster loops."""
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    m_total, n_total = len(positives), len(negatives)
    ids = sorted(set(clusters))
    k = scores.shape[0]
    auc = np.zeros(k)
    x = np.zeros((k, len(ids)))
    y = np.zeros((k, len(ids)))
    m, n = np.zeros(len(ids)), np.zeros(len(ids))
    for r in range(k):
        psi = lambda a, b, r=r: (scores[r, a] > scores[r, b]) + 0.5 * (scores[r, a] == scores[r, b])  # noqa: E731
        auc[r] = np.mean([[psi(i, j) for j in negatives] for i in positives])
        for c, cid in enumerate(ids):
            own_pos = [i for i in positives if clusters[i] == cid]
            own_neg = [j for j in negatives if clusters[j] == cid]
            m[c], n[c] = len(own_pos), len(own_neg)
            x[r, c] = sum(np.mean([psi(i, j) for j in negatives]) for i in own_pos)
            y[r, c] = sum(np.mean([psi(i, j) for i in positives]) for j in own_neg)
    i10, i01, total = int((m > 0).sum()), int((n > 0).sum()), len(ids)
    cov = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            xa, xb = x[a] - m * auc[a], x[b] - m * auc[b]
            ya, yb = y[a] - n * auc[a], y[b] - n * auc[b]
            s10 = i10 / ((i10 - 1) * m_total) * np.sum(xa * xb)
            s01 = i01 / ((i01 - 1) * n_total) * np.sum(ya * yb)
            s11_ab = total / (total - 1) * np.sum(xa * yb)
            s11_ba = total / (total - 1) * np.sum(xb * ya)
            cov[a, b] = s10 / m_total + s01 / n_total + (s11_ab + s11_ba) / (m_total * n_total)
    return auc, cov


def test_clustered_delong_matches_obuchowskis_formula_written_out():
    rng = np.random.default_rng(8)
    labels, _, patients = simulate(25, 6, rng)
    scores = np.vstack([np.round(labels + rng.normal(0, 1, len(labels)), 1) for _ in range(2)])
    auc, cov = delong_covariance(labels, scores, patients)
    expected_auc, expected_cov = brute_force_obuchowski(labels, scores, patients)
    np.testing.assert_allclose(auc, expected_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, rtol=0, atol=1e-12)
    # Patches of a patient are correlated here: the clustered variance is the larger one.
    assert cov[0, 0] > delong_covariance(labels, scores)[1][0, 0]


def test_clustered_delong_with_one_case_per_patient_is_delong():
    rng = np.random.default_rng(9)
    labels = rng.random(200) < 0.3
    scores = np.vstack([np.round(labels + rng.normal(0, 1, 200), 1) for _ in range(3)])
    shuffled_ids = rng.permutation(200).astype(str)
    _, plain = delong_covariance(labels, scores)
    _, clustered = delong_covariance(labels, scores, shuffled_ids)
    np.testing.assert_allclose(clustered, plain, rtol=1e-12, atol=1e-15)
    if ASAH.is_file():
        data = pd.read_csv(ASAH)
        poor = (data["outcome"] == "Poor").to_numpy()
        test = delong_test(
            poor, data["wfns"], data["s100b"], clusters=np.arange(len(data)).astype(str)
        )
        assert test.z == pytest.approx(2.20898359144091, abs=1e-9)
        # pROC's normal p is 0.0272; the clustered test refers z to a Student t on the
        # patients of the rarer class - 1 (41 poor outcomes), the small-sample reference.
        assert test.p_value == pytest.approx(2 * scipy_stats.t.sf(2.20898359144091, 40))
        assert 0.0272 < test.p_value < 0.034


def test_clustered_mcnemar_is_durkalskis_statistic_and_reduces_to_mcnemar():
    labels = np.ones(9, bool)
    # Cluster A: a right twice where b is wrong; B: b right once; C: both right; D: a right 3x.
    a = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1], bool)
    b = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1], bool)
    clusters = np.array(["A", "A", "B", "C", "C", "D", "D", "D", "D"])
    result = mcnemar_test(labels, a, b, clusters)
    # Per-cluster b_k - c_k: 2, -1, 0, 3: X2 = (2 - 1 + 0 + 3)^2 / (4 + 1 + 0 + 9) = 16 / 14.
    assert result["statistic"] == pytest.approx(16 / 14)
    assert result["p_value"] == pytest.approx(0.28505, abs=1e-5)  # 2 * norm.sf(sqrt(16 / 14))
    rng = np.random.default_rng(1)
    labels = rng.random(400) < 0.5
    a = np.where(rng.random(400) < 0.8, labels, ~labels)
    b = np.where(rng.random(400) < 0.7, labels, ~labels)
    single = mcnemar_test(labels, a, b, clusters=np.arange(400))
    table = pd.crosstab(a == labels, b == labels).reindex(
        index=[True, False], columns=[True, False]
    )
    reference = mcnemar(table.to_numpy(), exact=False, correction=False)
    assert single["statistic"] == pytest.approx(reference.statistic, rel=1e-12)
    assert single["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)


def test_the_reported_comparisons_hold_their_size_and_the_auc_interval_its_level(repo_params):
    """The fast version of bench/calibration.py, on the stage's own code path
    (``compare_models`` at params.yaml's matched operating point, ``auc_with_ci``): 200
    simulated studies of two equally good models
    (validation and test, 60 patients x 12 correlated patches each). Every reported test
    rejects near 5%, the AUC interval covers near 95%; what the stage no longer does (a
    patch-level DeLong, McNemar at each model's own Youden threshold) rejects far more."""
    point = repo_params["evaluate"]["operating_point"]
    rates = comparison_rates(200, 11, point, replicates=200)
    assert rates["studies"] >= 195
    for test in ("delong_patient", "sensitivity_matched", "specificity_matched"):
        assert 0.02 <= rates[test] <= 0.09, (test, rates)
    assert 0.91 <= rates["auc_interval_covers"] <= 0.99, rates
    assert rates["delong_patch"] > 0.12 and rates["mcnemar_own_youden"] > 0.12, rates


def test_the_grid_calls_a_factor_without_effect_significant_at_most_at_its_level():
    for levels in (2, 3):
        rates = grid_rates(200, seed=20 + levels, levels=levels, replicates=100)
        assert rates["grids"] >= 195 and rates["null_factor_rejected"] <= 0.09, rates


def brute_force_threshold(labels, scores, match, value):
    """The matched threshold by trying every candidate threshold."""
    candidates = np.unique(np.r_[scores, np.nextafter(scores, np.inf)])
    chosen = labels if match == "sensitivity" else ~labels
    rate = [
        np.mean(scores[chosen] >= t) if match == "sensitivity" else np.mean(scores[chosen] < t)
        for t in candidates
    ]
    keep = candidates[np.asarray(rate) >= value - 1e-12]
    return keep.max() if match == "sensitivity" else keep.min()


@pytest.mark.parametrize("match", ["sensitivity", "specificity"])
def test_the_matched_threshold_is_the_one_trying_every_threshold_finds(match):
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.3
    scores = np.round(labels + rng.normal(0, 1, 300), 1)  # with ties
    for value in (0.5, 0.8, 0.9, 0.95):
        ours = matched_thresholds(labels, scores, np.ones((1, 300)), match, value)[0]
        assert ours == brute_force_threshold(labels, scores, match, value)
        rates = rates_at(labels, scores, np.ones((1, 300)), np.array([ours]))
        assert rates[match][0] >= value
    # A patient drawn twice counts twice: the same as duplicating its rows.
    weights = rng.integers(0, 3, 300)
    doubled = matched_thresholds(
        np.repeat(labels, weights),
        np.repeat(scores, weights),
        np.ones((1, weights.sum())),
        match,
        0.8,
    )
    assert matched_thresholds(labels, scores, weights[None], match, 0.8)[0] == doubled[0]
    with pytest.raises(ValueError, match="cannot match 'accuracy'"):
        matched_thresholds(labels, scores, np.ones((1, 300)), "accuracy", 0.8)


def test_matched_decisions_say_which_model_is_more_specific_at_equal_sensitivity():
    """Model a separates better: at matched validation sensitivity its test specificity is
    higher, significantly, while the two sensitivities stay close."""
    rng = np.random.default_rng(6)

    def split(patients):
        patient = np.repeat(np.arange(patients), 10)
        labels = rng.random(len(patient)) < 0.3
        shared = rng.normal(0, 0.5, patients)[patient]
        a = 2.5 * labels + shared + rng.normal(0, 1, len(patient))
        b = 0.8 * labels + shared + rng.normal(0, 1, len(patient))
        return PairedCases(labels, np.vstack([a, b]), patient)

    result = matched_decision_tests(split(80), split(80), "sensitivity", 0.9, 500, 0.95, 1)
    assert result["specificity_difference"] > 0.2 and result["specificity_p"] < 0.001
    low, high = result["specificity_difference_ci"]
    assert 0 < low < result["specificity_difference"] < high
    assert abs(result["sensitivity_difference"]) < 0.1 and result["sensitivity_p"] > 0.01
    assert result["threshold_a"] != result["threshold_b"]


def test_the_logit_t_interval_is_wider_than_the_percentile_one_with_few_patients():
    rng = np.random.default_rng(3)
    samples = 1 / (1 + np.exp(-rng.normal(np.log(4), 0.3, 1000)))  # around 0.8
    low, high = logit_t_interval(0.8, samples, df=9, level=0.95)
    p_low, p_high = percentile_interval(samples, 0.95)
    assert low < p_low and high > p_high and 0 < low < 0.8 < high < 1
    # Many patients: the t is a normal, and the interval close to the percentile one.
    low, high = logit_t_interval(0.8, samples, df=10_000, level=0.95)
    assert low == pytest.approx(p_low, abs=0.015) and high == pytest.approx(p_high, abs=0.015)
    assert np.isnan(logit_t_interval(0.8, samples, df=0, level=0.95)[0])
    # A perfect AUC has no logit: the percentile interval stands in.
    assert logit_t_interval(1.0, np.ones(100), 5, 0.95) == (1.0, 1.0)


def test_delong_is_undefined_not_wrong_with_a_single_positive():
    labels = np.array([1, 0, 0, 0], bool)
    result = delong_test(labels, np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.1, 0.2]))
    assert result.auc_a == 1.0 and np.isnan(result.z) and np.isnan(result.p_value)


def test_auc_interval_resamples_patients_not_patches():
    """Every patch copied five times within its patient: a patient bootstrap draws the same
    patients with the same seed, so the interval is unchanged; a patch bootstrap would see
    five times as many independent cases and give a narrower one."""
    from medtailor.evaluate.classification import auc_with_ci

    rng = np.random.default_rng(12)
    labels, scores, patients = simulate(30, 3, rng)
    frame = pd.DataFrame(
        {"label": labels.astype(int), "prob": 1 / (1 + np.exp(-scores)), "patient_id": patients}
    )
    copied = pd.concat([frame] * 5, ignore_index=True)
    once, five = auc_with_ci(frame, 300, 0.9, 3), auc_with_ci(copied, 300, 0.9, 3)
    assert five["auc"] == pytest.approx(once["auc"])
    assert five["auc_ci"] == pytest.approx(once["auc_ci"], abs=1e-12)
    patch_level = auc_with_ci(copied.assign(patient_id=np.arange(len(copied))), 300, 0.9, 3)
    assert patch_level["auc_ci"][1] - patch_level["auc_ci"][0] < 0.7 * (
        once["auc_ci"][1] - once["auc_ci"][0]
    )


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_gradcam_is_high_where_the_lesion_evidence_is(method: str):
    """A hand-built two-class network whose lesion logit is the mean of a convolution's
    output over the lower-right quarter: the map must peak at the bright spot there and be
    0 on the empty background, not the reverse (MONAI's default normaliser maps the
    maximum to 0)."""
    from medtailor.evaluate.gradcam import gradcam_maps

    class QuarterEvidence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            torch.nn.init.constant_(self.features.weight, 1 / 9)

        def forward(self, x):
            evidence = torch.relu(self.features(x))[:, 0, 16:, 16:].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(evidence), evidence], dim=1)

    images = torch.zeros(2, 1, 32, 32)
    images[0, 0, 22:25, 26:29] = 1.0
    images[1, 0, 18:21, 19:22] = 1.0
    maps = gradcam_maps(QuarterEvidence(), images, 32, method)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    for heat, centre in zip(maps, [(23, 27), (19, 20)], strict=True):
        assert np.unravel_index(np.argmax(heat), heat.shape) == centre
        assert heat[centre] == 1.0 and heat[8, 8] == 0.0  # the empty background


def test_layercam_matches_its_definition_computed_with_autograd():
    """LayerCAM (Jiang et al. 2021) of the lesion evidence y at the target activations A:
    ReLU(sum_c ReLU(dy/dA_c) * A_c), upsampled bilinearly to the input and scaled to
    [0, 1] per image. Computed here with torch.autograd on a random network, independently
    of MONAI's hooks; Grad-CAM's channel-mean weights give a different map."""
    from medtailor.evaluate.gradcam import gradcam_maps

    torch.manual_seed(0)

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 6, 3, stride=2, padding=1)
            self.target = torch.nn.Conv2d(6, 8, 3, padding=1)
            self.head = torch.nn.Linear(8, 2)

        def features(self, x):
            return self.target(torch.relu(self.stem(x)))

        def forward(self, x):
            return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))

    model = Small().eval()
    images = torch.rand(3, 1, 24, 24)
    activations = model.features(images)
    logits = model.head(torch.relu(activations).mean(dim=(2, 3)))
    (gradients,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), activations)
    expected = torch.relu((torch.relu(gradients) * activations).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(expected, size=(24, 24), mode="bilinear")
    low = expected.amin(dim=(1, 2, 3), keepdim=True)
    high = expected.amax(dim=(1, 2, 3), keepdim=True)
    expected = ((expected - low) / (high - low))[:, 0].detach().numpy()

    np.testing.assert_allclose(gradcam_maps(model, images, 24, "layercam"), expected, atol=1e-5)
    assert np.abs(gradcam_maps(model, images, 24, "gradcam") - expected).max() > 0.1
    with pytest.raises(ValueError, match="cam_method 'scorecam'"):
        gradcam_maps(model, images, 24, "scorecam")


def test_pointing_game_scores_the_maximum_pixel_against_its_box():
    from medtailor.evaluate.gradcam import box_share, pointing_game

    maps = np.zeros((3, 8, 8))
    maps[0, 2, 5] = 1.0  # row y = 2, column x = 5: centre (5.5, 2.5)
    maps[1, 6, 1] = 1.0  # centre (1.5, 6.5)
    boxes = np.array([[4.0, 1.0, 7.0, 4.0], [4.0, 1.0, 7.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    # The third map is flat: it "points" at its first pixel, inside a box covering it.
    assert pointing_game(maps, boxes).tolist() == [True, False, True]
    # Transposed box (x and y swapped) must miss: the map is indexed (row = y, column = x).
    assert not pointing_game(maps[:1], np.array([[1.0, 4.0, 4.0, 7.0]]))[0]
    # Chance: the box's share of the patch, clipped to the patch.
    np.testing.assert_allclose(
        box_share(np.array([[4.0, 1.0, 7.0, 4.0], [-2.0, -2.0, 4.0, 8.0]]), 8), [9 / 64, 0.5]
    )


def test_a_lesion_box_lands_where_the_patch_shows_the_lesion():
    """box_in_patch maps an image box into the patch that extract_patch samples around a
    candidate: a bright square in the image fills exactly that box of the patch."""
    from medtailor.patches.crops import box_in_patch, context_region, extract_patch

    image = np.zeros((200, 120), np.float32)
    lesion = np.array([60.0, 40.0, 80.0, 50.0])  # x0, y0, x1, y1 (voxel edges)
    image[60:80, 40:50] = 1.0
    candidate = np.array([58.0, 36.0, 84.0, 52.0])
    low, high = context_region(candidate, 0.5, True)
    patch = extract_patch(image, low, high, (64, 64))
    box = box_in_patch(lesion, low, high, (64, 64))
    inside = patch[int(np.ceil(box[0])) : int(box[2]), int(np.ceil(box[1])) : int(box[3])]
    assert inside.min() > 0.5
    outside = patch.copy()
    outside[
        int(box[0]) - 2 : int(np.ceil(box[2])) + 2, int(box[1]) - 2 : int(np.ceil(box[3])) + 2
    ] = 0
    assert outside.max() < 0.05
