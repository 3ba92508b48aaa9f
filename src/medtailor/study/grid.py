"""The grid (the RadImageNet transfer study): every combination of the levels of a set of
factors (any train entry or recipe key: heads, backbones, learning rate, unfrozen depth,
head filters, hidden ratio, init), each a short training run.

Analysis: test AUC (the mean over classes for multi-class and multi-label stores) with a
logit-t patient-bootstrap CI per configuration; box plots of AUC per factor; one linear
model of the main effects of every varied factor, whose error is each configuration's own
variation plus the test-set sampling covariance of the AUCs (patient bootstrap), with
t and F tests on the residual degrees of freedom, reported as the study reports it: per
level, the estimate against the reference level, its CI and p-value, and the factor's
overall p; and the comparisons of the two best configurations (clustered DeLong, and test
sensitivity and specificity at a matched operating point).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.comparisons import comparison_table
from medtailor.study.analysis import (
    auc_columns,
    paired_auc_covariance,
    write_study_report,
)
from medtailor.study.registry import StudyRun, register_study


def level_label(value: Any) -> str:
    """A factor level as the tables show it (a head as its type and options)."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def grid_levels(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Configuration name -> {factor: level value}: every combination, named by the level
    indices (``model0-head1-learning_rate0``) so names stay short and stable."""
    factors = cfg["factors"]
    found = {}
    for indices in itertools.product(*(range(len(levels)) for levels in factors.values())):
        name = "-".join(f"{factor}{k}" for factor, k in zip(factors, indices, strict=True))
        found[name] = {
            factor: factors[factor][k] for factor, k in zip(factors, indices, strict=True)
        }
    return found


# A factor's test needs this many configurations at each of its levels, and the grid at
# least one residual degree of freedom; below that the report says so instead of a p-value.
MIN_CONFIGURATIONS_PER_LEVEL = 2


def factor_effects_table(
    table: pd.DataFrame,
    factors: list[str],
    covariance: np.ndarray,
    level: float,
    response: str = "test_auc",
) -> pd.DataFrame:
    """Effect of each level of every varied factor on ``response`` (against its first level
    in sorted order), from one linear model of the main effects of all factors.

    Each configuration's AUC carries two errors: the configuration's own (training noise,
    interactions), with an unknown variance s2, and its test-set sampling error, whose
    covariance across configurations (the same test patients) is ``covariance`` (patient
    bootstrap, ``paired_auc_covariance``). s2 is estimated from the residuals net of the
    sampling part (at least 0), the estimates' covariance is H (covariance + s2 I) H', and
    every test is a t (one level) or F (the whole factor) on the residual degrees of
    freedom. With exact AUCs this is the ordinary least-squares test; the sampling part
    keeps a grid whose residuals happen to be small from looking exact. With few
    configurations the residual degrees of freedom are few, and a normal reference (the
    Wald z of a mixed model) would give p-values far too small. In a balanced grid the
    estimates equal those of a mixed model with the other factors as random intercepts.
    Below ``MIN_CONFIGURATIONS_PER_LEVEL`` per level, or with no residual degree of
    freedom, a factor's rows say why there is no test.
    """
    from scipy import stats

    data = table[[response, *factors]].reset_index(drop=True)
    keep = data[response].notna().to_numpy()
    data, covariance = data[keep], np.asarray(covariance, float)[np.ix_(keep, keep)]
    columns, names = [np.ones(len(data))], ["Intercept"]
    references = {}
    for factor in factors:
        levels = sorted(data[factor].unique())
        references[factor] = levels[0]
        for value in levels[1:]:
            columns.append((data[factor] == value).to_numpy(float))
            names.append((factor, value))
    design = np.column_stack(columns)
    y = data[response].to_numpy(float)
    residual_df = len(y) - np.linalg.matrix_rank(design)
    hat = np.linalg.pinv(design)  # (p, n): the OLS estimates are hat @ y
    estimates = hat @ y
    residual_maker = np.eye(len(y)) - design @ hat
    rss = float(y @ residual_maker @ y)
    sampling = hat @ covariance @ hat.T
    own_variance = (
        max(0.0, (rss - float(np.trace(residual_maker @ covariance))) / residual_df)
        if residual_df > 0
        else float("nan")
    )
    gram = hat @ hat.T
    rows = []
    for factor in factors:
        counts = data[factor].value_counts()
        reason = None
        if residual_df < 1:
            reason = f"no residual degree of freedom ({len(y)} configurations)"
        elif counts.min() < MIN_CONFIGURATIONS_PER_LEVEL:
            reason = (
                f"needs {MIN_CONFIGURATIONS_PER_LEVEL} configurations per level "
                f"(level {counts.idxmin()!r} has {counts.min()})"
            )
        rows.append(
            {"factor": factor, "level": references[factor], "estimate": 0.0, "reference": True}
        )
        indices = [k for k, name in enumerate(names) if name != "Intercept" and name[0] == factor]
        if reason is not None:
            rows += [
                {
                    "factor": factor,
                    "level": names[k][1],
                    "estimate": float(estimates[k]),
                    "reference": False,
                    "undefined": reason,
                }
                for k in indices
            ]
            continue
        block = sampling[np.ix_(indices, indices)] + own_variance * gram[np.ix_(indices, indices)]
        df = residual_df
        for position, k in enumerate(indices):
            spread = np.sqrt(float(block[position, position]))
            t_value = float(estimates[k]) / spread if spread > 0 else float("nan")
            half = float(stats.t.ppf(0.5 + level / 2, df)) * spread
            rows.append(
                {
                    "factor": factor,
                    "level": names[k][1],
                    "estimate": float(estimates[k]),
                    "ci_low": float(estimates[k]) - half,
                    "ci_high": float(estimates[k]) + half,
                    "p_value": float(2 * stats.t.sf(abs(t_value), df)),
                    "df": df,
                    "reference": False,
                }
            )
        chosen = estimates[indices]
        f_value = float(chosen @ np.linalg.pinv(block) @ chosen) / len(indices)
        for row in rows:
            if row["factor"] == factor:
                row["factor_p"] = float(stats.f.sf(f_value, len(indices), residual_df))
    return pd.DataFrame(rows)


def analyse_grid(run: StudyRun) -> dict[str, Any]:
    from medtailor.evaluate.whole_image import compare_whole_image_models

    cfg, seed = run.cfg, run.seed
    levels = grid_levels(run.params["studies"]["grid"])
    factors = list(run.params["studies"]["grid"]["factors"])
    scored = run.scored()
    frames = {name: result.frame for name, result in scored.items()}
    table = pd.DataFrame(
        [
            {
                "configuration": name,
                **{f: level_label(levels[name][f]) for f in factors},
                **auc_columns(result.test),
            }
            for name, result in scored.items()
        ]
    )
    varied = [f for f in factors if table[f].nunique() > 1]
    covariance = paired_auc_covariance(frames, int(cfg["bootstrap_replicates"]), seed)
    effects_table = (
        factor_effects_table(table, varied, covariance, float(cfg["confidence_level"]))
        if varied
        else pd.DataFrame()
    )
    ranked = table.dropna(subset=["test_auc"]).sort_values("test_auc", ascending=False)
    best = ranked["configuration"].head(2).tolist()
    comparisons = []
    if len(best) == 2:
        comparisons = compare_whole_image_models({n: frames[n] for n in best}, cfg, seed)
    effects_table.to_csv(run.out_dir / "factor_effects.csv", index=False)
    figure = grid_boxplots(table, varied, run.out_dir)
    summary = {
        "table": table.to_dict("records"),
        "factor_effects": effects_table.to_dict("records"),
        "best": best,
        "comparisons": comparisons,
        "left_out": {n: e["missing"] for n, e in run.left_out.items()},
        "figures": [figure] if figure else [],
    }
    lines = grid_report(table, effects_table, comparisons, summary, factors, cfg)
    return write_study_report(run.out_dir, table, summary, lines)


def grid_boxplots(table: pd.DataFrame, factors: list[str], out_dir: Path) -> str | None:
    from medtailor.figures import pyplot, save_figure

    if not factors:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.4), squeeze=False)
    for ax, factor in zip(axes[0], factors, strict=True):
        groups = [(lvl, part["test_auc"].dropna()) for lvl, part in table.groupby(factor)]
        ax.boxplot([values for _, values in groups])
        ax.set_xticks(range(1, len(groups) + 1), [str(lvl) for lvl, _ in groups], rotation=30)
        ax.set_title(factor)
    axes[0][0].set_ylabel("test AUC")
    save_figure(fig, out_dir / "figures" / "auc_by_factor.png")
    return "figures/auc_by_factor.png"


def grid_report(
    table: pd.DataFrame,
    effects: pd.DataFrame,
    comparisons: list[dict],
    summary: dict,
    factors: list[str],
    cfg: dict,
) -> list[str]:
    level = round(100 * float(cfg["confidence_level"]))
    lines = [
        "# Study: grid of transfer-learning factors",
        "",
        f"Test AUC with {level}% patient-bootstrap CIs ({cfg['bootstrap_replicates']} "
        "replicates; unit: the patient).",
        "",
        "| configuration | " + " | ".join(factors) + " | test AUC |",
        "|---|" + "---|" * len(factors) + "---|",
    ]
    for row in table.sort_values("test_auc", ascending=False).itertuples(index=False):
        values = row._asdict()
        auc = values["test_auc"]
        cell = (
            "undefined"
            if auc is None or pd.isna(auc)
            else f"{auc:.3f} [{values['test_auc_ci_low']:.3f}, {values['test_auc_ci_high']:.3f}]"
        )
        levels = " | ".join(str(values[f]) for f in factors)
        lines.append(f"| {values['configuration']} | {levels} | {cell} |")
    for name, what in summary["left_out"].items():
        lines.append(f"| {name} | " + " | " * len(factors) + f"not run: needs {what} |")
    lines += [
        "",
        "## Factor effects",
        "",
        "One linear model of test AUC on the main effects of every varied factor; each "
        "configuration's error is its own variation (estimated from the residuals) plus its "
        "test-set sampling error, correlated across configurations scored on the same "
        "patients (patient-bootstrap covariance). Each level's estimate is its difference "
        f"from the reference level (first in sorted order), with a {level}% CI and a t-test; "
        "the factor's p is the F test of all its levels, both on the residual degrees of "
        "freedom, so a grid of few configurations gives wide intervals. A factor "
        f"with fewer than {MIN_CONFIGURATIONS_PER_LEVEL} configurations per level, or a grid "
        "with no residual degree of freedom, gets no test.",
        "",
        "| factor | level | estimate | CI | p | df | factor p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in effects.to_dict("records"):
        if row.get("reference"):
            lines.append(f"| {row['factor']} | {row['level']} (reference) | 0 | | | | |")
        elif isinstance(row.get("undefined"), str):
            lines.append(
                f"| {row['factor']} | {row['level']} | {row['estimate']:.4f} | "
                f"no test: {row['undefined']} | | | |"
            )
        else:
            lines.append(
                f"| {row['factor']} | {row['level']} | {row['estimate']:.4f} | "
                f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] | {row['p_value']:.3g} | "
                f"{int(row['df'])} | {row['factor_p']:.3g} |"
            )
    if comparisons:
        lines += [
            "",
            f"## The two best configurations ({' vs '.join(summary['best'])}), test split",
            "",
            *comparison_table(comparisons, cfg),
        ]
    lines += [""] + [f"![AUC by factor]({f})" for f in summary["figures"]]
    return lines


@register_study("grid", analyse=analyse_grid)
def grid_configurations(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every combination of the factors' levels; a factor is any model entry or recipe key."""
    return {name: dict(levels) for name, levels in grid_levels(cfg).items()}
