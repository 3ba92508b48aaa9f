"""Statistics against references: pROC (DeLong), brute force, scikit-learn, statsmodels, MONAI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import DiceMetric
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from medtailor.evaluate.segmentation import dice_per_case
from medtailor.evaluate.stats import (
    cluster_weights,
    delong_covariance,
    delong_test,
    holm,
    mcnemar_test,
    percentile_interval,
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
    p_values = [0.01, 0.04, 0.03, 0.2]
    np.testing.assert_allclose(holm(p_values), multipletests(p_values, method="holm")[1])


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


def test_delong_is_undefined_not_wrong_with_a_single_positive():
    labels = np.array([1, 0, 0, 0], bool)
    result = delong_test(labels, np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.1, 0.2]))
    assert result.auc_a == 1.0 and np.isnan(result.z) and np.isnan(result.p_value)
