"""Calibration of the model comparisons on simulated clustered data.

Patches of one patient are correlated: they share the patient's anatomy and the models'
reaction to it. ``simulate_clustered_pair`` draws a test set of that shape for two models of
equal skill (a per-patient effect shared by both models and one of each model's own), so a
calibrated test rejects "equal AUC" (or "equal accuracy") at its nominal rate alpha;
``rejection_rates`` measures that rate for the patient-clustered tests the report uses and
for the patch-level tests that treat every patch as independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtailor.evaluate.stats import delong_test, mcnemar_test


@dataclass(frozen=True)
class ClusteredPair:
    labels: np.ndarray  # (cases,) bool
    scores_a: np.ndarray
    scores_b: np.ndarray
    patients: np.ndarray  # (cases,) cluster id


def simulate_clustered_pair(
    rng: np.random.Generator,
    patients: int = 60,
    per_patient: int = 12,
    shared_effect: float = 1.0,
    model_effect: float = 0.8,
    noise: float = 0.5,
    separation: float = 1.0,
) -> ClusteredPair:
    """One test set: ``patients`` x ``per_patient`` patches; 40% of patients have lesions and
    give most positives. Both models score ``separation * label`` plus the same noise
    structure, so their AUCs are equal in the population."""
    patient = np.repeat(np.arange(patients), per_patient)
    lesion_patient = rng.random(patients) < 0.4
    labels = rng.random(len(patient)) < np.where(lesion_patient, 0.35, 0.03)[patient]
    shared = rng.normal(0, shared_effect, patients)[patient]

    def scores() -> np.ndarray:
        own = rng.normal(0, model_effect, patients)[patient]
        return separation * labels + shared + own + rng.normal(0, noise, len(patient))

    return ClusteredPair(labels, scores(), scores(), patient)


def rejection_rates(
    datasets: int, seed: int, alpha: float = 0.05, **simulation: float
) -> dict[str, float]:
    """Share of ``datasets`` simulated equal-skill test sets in which each test rejects at
    ``alpha``: DeLong and McNemar, clustered by patient and at the patch level."""
    rng = np.random.default_rng(seed)
    rejected = {"delong_patient": 0, "delong_patch": 0, "mcnemar_patient": 0, "mcnemar_patch": 0}
    evaluated = 0
    for _ in range(datasets):
        data = simulate_clustered_pair(rng, **simulation)
        if data.labels.all() or not data.labels.any():
            continue
        evaluated += 1
        # A fixed threshold halfway between the classes' score means, the same for both.
        threshold = 0.5 * float(simulation.get("separation", 1.0))
        predicted_a, predicted_b = data.scores_a >= threshold, data.scores_b >= threshold
        for unit, clusters in (("patient", data.patients), ("patch", None)):
            delong = delong_test(data.labels, data.scores_a, data.scores_b, clusters=clusters)
            rejected[f"delong_{unit}"] += bool(delong.p_value < alpha)
            mcnemar = mcnemar_test(data.labels, predicted_a, predicted_b, clusters=clusters)
            rejected[f"mcnemar_{unit}"] += bool(mcnemar["p_value"] < alpha)
    return {**{k: v / evaluated for k, v in rejected.items()}, "datasets": evaluated}
