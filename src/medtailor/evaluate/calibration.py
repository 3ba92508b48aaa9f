"""Calibration of the evaluation's statistics on simulated clustered studies.

Patches of one patient are correlated: they share the patient's anatomy and the models'
reaction to it. ``simulate_clustered_pair`` draws cases of that shape for two models of
equal skill (a per-patient effect shared by both models and one of each model's own);
``simulate_study`` draws a validation and a test split of them as the evaluate stage
reads them (prediction frames). Then:

- ``comparison_rates`` runs ``compare_models`` (the stage's own code) on each study and
  counts how often each reported comparison rejects at alpha (a calibrated test: about
  alpha), how often the interval of ``auc_with_ci`` covers the true AUC, and, for
  contrast, the tests the stage does not use (patch-level DeLong, McNemar at each model's
  own Youden threshold) and the plain percentile interval;
- ``grid_rates`` draws grids of configurations scored on one test set with a factor
  without effect and counts how often ``factor_effects_table`` calls it significant.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from medtailor.evaluate.stats import delong_test, mcnemar_test, youden_threshold

# The simulation's defaults: a score is separation * label + shared + own + noise.
SIMULATION = {"shared_effect": 1.0, "model_effect": 0.8, "noise": 0.5, "separation": 1.0}


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
    shared_effect: float = SIMULATION["shared_effect"],
    model_effect: float = SIMULATION["model_effect"],
    noise: float = SIMULATION["noise"],
    separation: float = SIMULATION["separation"],
) -> ClusteredPair:
    """One split: ``patients`` x ``per_patient`` patches; 40% of patients have lesions and
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


def true_auc(
    separation: float = SIMULATION["separation"],
    shared_effect: float = SIMULATION["shared_effect"],
    model_effect: float = SIMULATION["model_effect"],
    noise: float = SIMULATION["noise"],
) -> float:
    """The population AUC of a simulated model: a positive and a negative patch of two
    different patients differ by ``separation`` plus a normal of twice the score variance."""
    spread = np.sqrt(2 * (shared_effect**2 + model_effect**2 + noise**2))
    return float(stats.norm.cdf(separation / spread))


def prediction_frame(
    name: str, split: str, data: ClusteredPair, scores: np.ndarray
) -> pd.DataFrame:
    """A split of simulated cases as ``load_predictions`` returns them for one model."""
    # Integer ids (validation and test apart): the stage's code takes any hashable id.
    offset = {"val": 0, "test": 1_000_000}[split]
    return pd.DataFrame(
        {
            "patch_id": offset + np.arange(len(data.labels)),
            "model": name,
            "split": split,
            "target": "positive",
            "label": data.labels.astype(int),
            "prob": 1 / (1 + np.exp(-scores)),
            "patient_id": offset + data.patients,
        }
    )


def simulate_study(
    rng: np.random.Generator, patients: int = 60, **simulation: float
) -> dict[str, pd.DataFrame]:
    """Two equal-skill models' predictions on a validation and a test split of ``patients``
    patients each: the frames ``compare_models`` reads."""
    val = simulate_clustered_pair(rng, patients=patients, **simulation)
    test = simulate_clustered_pair(rng, patients=patients, **simulation)
    return {
        name: pd.concat(
            [
                prediction_frame(name, "val", val, getattr(val, f"scores_{side}")),
                prediction_frame(name, "test", test, getattr(test, f"scores_{side}")),
            ],
            ignore_index=True,
        )
        for name, side in (("a", "a"), ("b", "b"))
    }


def comparison_rates(
    studies: int,
    seed: int,
    operating_point: dict[str, Any],
    replicates: int = 1000,
    patients: int = 60,
    alpha: float = 0.05,
    level: float = 0.95,
    **simulation: float,
) -> dict[str, Any]:
    """Over ``studies`` simulated studies of equal-skill models: the share in which each
    comparison ``compare_models`` reports (at ``operating_point``, as
    ``evaluate.operating_point``) rejects at ``alpha``, the coverage of ``auc_with_ci``'s
    interval, and the same for the tests and interval the stage does not use."""
    from medtailor.evaluate.classification import auc_with_ci, evaluable
    from medtailor.evaluate.comparisons import compare_models
    from medtailor.evaluate.stats import bootstrap_metric, weighted_auc

    cfg = {
        "bootstrap_replicates": replicates,
        "confidence_level": level,
        "operating_point": operating_point,
    }
    truth = true_auc(**simulation)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    evaluated = 0

    def count(key: str, hit: bool) -> None:
        counts[key] = counts.get(key, 0) + int(hit)

    for study in tqdm(range(studies), desc="simulated studies", unit="study", leave=False):
        frames = simulate_study(rng, patients, **simulation)
        test = evaluable(frames["a"][frames["a"]["split"] == "test"])
        labels = test["label"].to_numpy() == 1
        if labels.all() or not labels.any():
            continue
        evaluated += 1
        row = compare_models(frames, cfg, seed + study)[0]
        count("delong_patient", row["delong_p"] < alpha)
        decisions = row.get("operating_point") or {}
        for rate in ("sensitivity", "specificity"):
            count(f"{rate}_matched", decisions.get(f"{rate}_p", 1.0) < alpha)
        interval = auc_with_ci(test, replicates, level, seed + study)["auc_ci"]
        count("auc_interval_covers", interval[0] <= truth <= interval[1])
        probs = test["prob"].to_numpy()
        percentile = bootstrap_metric(
            lambda w, p=probs, y=labels: weighted_auc(y, p, w),
            test["patient_id"].to_numpy(),
            replicates,
            level,
            seed + study,
        )
        count("percentile_interval_covers", percentile.low <= truth <= percentile.high)
        # What the stage does not do: patch-level DeLong, McNemar at each own threshold.
        other = frames["b"][frames["b"]["split"] == "test"]["prob"].to_numpy()
        count("delong_patch", delong_test(labels, probs, other).p_value < alpha)
        own = []
        for name in ("a", "b"):
            val = frames[name][frames[name]["split"] == "val"]
            threshold = youden_threshold(val["label"].to_numpy() == 1, val["prob"].to_numpy())
            own.append(
                frames[name][frames[name]["split"] == "test"]["prob"].to_numpy() >= threshold
            )
        mcnemar = mcnemar_test(labels, own[0], own[1], clusters=test["patient_id"].to_numpy())
        count("mcnemar_own_youden", mcnemar["p_value"] < alpha)
    rates = {key: value / evaluated for key, value in sorted(counts.items())}
    return {**rates, "studies": evaluated, "patients": patients, "true_auc": truth}


def simulate_grid(
    rng: np.random.Generator,
    levels: int,
    effects: dict[str, float],
    configuration_noise: float,
    patients: int = 60,
    per_patient: int = 12,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A grid of 2^``levels`` configurations (factors f0, f1, ...; level 1 adds
    ``effects[f]`` to the separation) scored on one simulated test set, each with its own
    training noise on the separation: the table and the prediction frames of a grid study."""
    data = simulate_clustered_pair(rng, patients=patients, per_patient=per_patient)
    patient = data.patients
    shared = data.scores_a - data.labels  # one patient structure for every configuration
    factors = [f"f{k}" for k in range(levels)]
    table, frames = [], {}
    for combination in itertools.product((0, 1), repeat=levels):
        name = "-".join(f"{f}{v}" for f, v in zip(factors, combination, strict=True))
        separation = (
            SIMULATION["separation"]
            + sum(effects.get(f, 0.0) * v for f, v in zip(factors, combination, strict=True))
            + rng.normal(0, configuration_noise)
        )
        own = rng.normal(0, 0.5, patient.max() + 1)[patient] + rng.normal(0, 0.3, len(patient))
        scores = separation * data.labels + shared + own
        frames[name] = prediction_frame(name, "test", data, scores)
        table.append({"configuration": name, **dict(zip(factors, combination, strict=True))})
    return pd.DataFrame(table), frames


def grid_rates(
    studies: int,
    seed: int,
    levels: int,
    replicates: int = 1000,
    configuration_noise: float = 0.1,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Share of simulated grids in which the factor without effect (f0) is called
    significant by ``factor_effects_table`` (the other factors have effects)."""
    from medtailor.evaluate.whole_image import mean_auc_metric
    from medtailor.study.analysis import paired_auc_covariance
    from medtailor.study.grid import factor_effects_table

    rng = np.random.default_rng(seed)
    effects = {f"f{k}": 0.3 for k in range(1, levels)}
    rejected = evaluated = 0
    for study in tqdm(range(studies), desc=f"simulated 2^{levels} grids", leave=False):
        table, frames = simulate_grid(rng, levels, effects, configuration_noise)
        aucs = []
        for frame in frames.values():
            metric, patients, _ = mean_auc_metric(frame, "test")
            aucs.append(float(metric(np.ones((1, len(patients))))[0]))
        table["test_auc"] = aucs
        covariance = paired_auc_covariance(frames, replicates, seed + study)
        factors = [f"f{k}" for k in range(levels)]
        effects_table = factor_effects_table(table, factors, covariance, 0.95)
        null = effects_table[(effects_table["factor"] == "f0") & ~effects_table["reference"]]
        if "p_value" not in null or null["p_value"].isna().all():
            continue
        evaluated += 1
        rejected += int(null["p_value"].iloc[0] < alpha)
    return {"null_factor_rejected": rejected / evaluated, "grids": evaluated, "levels": levels}
