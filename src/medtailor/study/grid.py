"""The grid (the RadImageNet transfer study): every combination of the levels of a set of
factors (any train entry or recipe key: heads, backbones, learning rate, unfrozen depth,
head filters, hidden ratio, init), each a short training run.

Analysis: test AUC (the mean over classes for multi-class and multi-label stores) with a
patient-bootstrap CI per configuration; box plots of AUC per factor; for each factor a
linear mixed-effects model (statsmodels ``MixedLM``) of AUC with that factor fixed and
every other factor a random effect (crossed variance components), reported as the study
reports it: per level, the estimate against the reference level, its CI and p-value; and
the clustered DeLong and McNemar tests between the two best configurations.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.study.analysis import auc_columns, score_configurations, write_study_report
from medtailor.study.registry import register_study


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


def mixed_effects_table(
    frame: pd.DataFrame, factor: str, others: list[str], response: str = "test_auc"
) -> pd.DataFrame:
    """Fixed effect of each level of ``factor`` (against its first level) on ``response``,
    with the ``others`` as crossed random intercepts (REML): estimate, CI, p per level."""
    import statsmodels.formula.api as smf

    data = frame[[response, factor, *others]].dropna()
    reference = sorted(data[factor].unique())[0]
    formula = f"{response} ~ C({factor}, Treatment(reference={reference!r}))"
    vc = {other: f"0 + C({other})" for other in others if data[other].nunique() > 1}
    model = smf.mixedlm(formula, data, groups=np.ones(len(data)), vc_formula=vc or None)
    with warnings.catch_warnings():  # small grids: boundary fits are reported, not raised
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True)
    interval = fit.conf_int()
    rows = [{"factor": factor, "level": reference, "estimate": 0.0, "reference": True}]
    for term in fit.fe_params.index:
        if term == "Intercept":
            continue
        level = term.split("[T.", 1)[1].rstrip("]")
        rows.append(
            {
                "factor": factor,
                "level": level,
                "estimate": float(fit.fe_params[term]),
                "ci_low": float(interval.loc[term, 0]),
                "ci_high": float(interval.loc[term, 1]),
                "p_value": float(fit.pvalues[term]),
                "reference": False,
                "converged": bool(fit.converged),
            }
        )
    return pd.DataFrame(rows)


def analyse_grid(
    folders: dict[str, Path],
    store_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
    left_out: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from medtailor.evaluate.whole_image import (
        compare_whole_image_models,
        evaluate_whole_image_model,
    )

    cfg, seed = params["evaluate"], int(params["seed"])
    levels = grid_levels(params["studies"]["grid"])
    factors = list(params["studies"]["grid"]["factors"])
    scored = score_configurations(folders, store_dir, params)
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
    effects = []
    for factor in varied:
        try:
            effects.append(mixed_effects_table(table, factor, [f for f in varied if f != factor]))
        except (ValueError, np.linalg.LinAlgError) as exc:
            effects.append(pd.DataFrame([{"factor": factor, "undefined": str(exc)}]))
    effects_table = pd.concat(effects, ignore_index=True) if effects else pd.DataFrame()
    ranked = table.dropna(subset=["test_auc"]).sort_values("test_auc", ascending=False)
    best = ranked["configuration"].head(2).tolist()
    comparisons = []
    if len(best) == 2:
        results = {n: evaluate_whole_image_model(n, frames[n], cfg, seed) for n in best}
        comparisons = compare_whole_image_models({n: frames[n] for n in best}, results, cfg, seed)
    effects_table.to_csv(out_dir / "mixed_effects.csv", index=False)
    figure = grid_boxplots(table, varied, out_dir)
    summary = {
        "table": table.to_dict("records"),
        "mixed_effects": effects_table.to_dict("records"),
        "best": best,
        "comparisons": comparisons,
        "left_out": {n: e["missing"] for n, e in (left_out or {}).items()},
        "figures": [figure] if figure else [],
    }
    lines = grid_report(table, effects_table, comparisons, summary, factors, cfg)
    return write_study_report(out_dir, table, summary, lines)


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
        "## Mixed-effects models",
        "",
        "Per factor, a linear mixed-effects model of test AUC (statsmodels MixedLM, REML) "
        "with the factor fixed and every other varied factor a crossed random intercept; "
        "each level's estimate is its difference from the reference level (first in sorted "
        "order), with a Wald CI and p-value.",
        "",
        "| factor | level | estimate | CI | p |",
        "|---|---|---|---|---|",
    ]
    for row in effects.to_dict("records"):
        if isinstance(row.get("undefined"), str):
            lines.append(f"| {row['factor']} | | model failed: {row['undefined']} | | |")
        elif row.get("reference"):
            lines.append(f"| {row['factor']} | {row['level']} (reference) | 0 | | |")
        else:
            lines.append(
                f"| {row['factor']} | {row['level']} | {row['estimate']:.4f} | "
                f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] | {row['p_value']:.3g} |"
            )
    if comparisons:
        lines += [
            "",
            f"## The two best configurations ({' vs '.join(summary['best'])}), test split",
            "",
            "| class | AUC a - b | DeLong p | McNemar p |",
            "|---|---|---|---|",
        ]
        for row in comparisons:
            if "undefined" in row:
                lines.append(f"| {row['target']} | {row['undefined']} | | |")
                continue
            mcnemar = row.get("mcnemar_p")
            lines.append(
                f"| {row['target']} | {row['difference']:.3f} | {row['delong_p']:.3g} | "
                f"{'' if mcnemar is None else f'{mcnemar:.3g}'} |"
            )
    lines += [""] + [f"![AUC by factor]({f})" for f in summary["figures"]]
    return lines


@register_study("grid", analyse=analyse_grid)
def grid_configurations(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every combination of the factors' levels; a factor is any model entry or recipe key."""
    return {name: dict(levels) for name, levels in grid_levels(cfg).items()}
