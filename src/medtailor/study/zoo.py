"""The architecture zoo (CheXtransfer): architectures x {imagenet, scratch} x truncations.

Analysis: test AUC (the mean over classes for multi-class and multi-label stores) with a
patient-bootstrap CI, parameters and MACs from each checkpoint, the ImageNet top-1 of
the architecture's pre-trained weight (``imagenet``), the pre-training boost (AUC of the
ImageNet-initialised model minus its from-scratch twin, paired patient-bootstrap CI),
Spearman correlations across configurations (ImageNet top-1 and parameters vs AUC, for
pre-trained and scratch models separately; boost vs parameters) with p-values and
bootstrap CIs, the table and its figures.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.study.analysis import (
    auc_columns,
    auc_vs_parameters_figure,
    with_interval,
    write_study_report,
)
from medtailor.study.imagenet import SOURCE
from medtailor.study.registry import StudyRun, register_study


def analyse_zoo(run: StudyRun) -> dict[str, Any]:
    from medtailor.evaluate.whole_image import mean_auc_difference_with_ci
    from medtailor.study.analysis import spearman_with_ci
    from medtailor.study.imagenet import imagenet_top1, pretrained_weight

    cfg, seed = run.cfg, run.seed
    replicates, level = int(cfg["bootstrap_replicates"]), float(cfg["confidence_level"])
    scored = run.scored()
    rows = []
    for name, result in scored.items():
        facts = result.facts
        rows.append(
            {
                "configuration": name,
                "architecture": facts["architecture"],
                "init": facts["init"],
                "truncate": int(facts["config"]["truncate"]),
                "parameters": facts["parameters"],
                "macs": facts["macs"],
                "imagenet_weight": pretrained_weight(facts["architecture"]),
                "imagenet_top1": imagenet_top1(facts["architecture"]),
                **auc_columns(result.test),
                "status": "trained",
            }
        )
    for name, entry in run.left_out.items():
        rows.append(
            {
                "configuration": name,
                "architecture": entry["model"],
                "init": entry["init"],
                "truncate": int(entry["truncate"]),
                "imagenet_weight": pretrained_weight(entry["model"]),
                "imagenet_top1": imagenet_top1(entry["model"]),
                "status": f"not run: needs {entry['missing']}",
            }
        )
    table = pd.DataFrame(rows)
    boosts = []
    trained = table[table["status"] == "trained"]
    for (architecture, truncate), group in trained.groupby(["architecture", "truncate"]):
        inits = group.set_index("init")["configuration"]
        if "imagenet" in inits and "scratch" in inits:
            boost = mean_auc_difference_with_ci(
                scored[inits["imagenet"]].frame,
                scored[inits["scratch"]].frame,
                "test",
                replicates,
                level,
                seed,
            )
            boosts.append(
                {
                    "architecture": architecture,
                    "truncate": truncate,
                    "pretraining_boost": boost["difference"],
                    "pretraining_boost_ci_low": boost["difference_ci"][0],
                    "pretraining_boost_ci_high": boost["difference_ci"][1],
                }
            )
    boost_table = pd.DataFrame(
        boosts,
        columns=[
            "architecture",
            "truncate",
            "pretraining_boost",
            "pretraining_boost_ci_low",
            "pretraining_boost_ci_high",
        ],
    )
    table = table.merge(boost_table, on=["architecture", "truncate"], how="left")
    table.loc[
        table["init"] != "imagenet",
        ["pretraining_boost", "pretraining_boost_ci_low", "pretraining_boost_ci_high"],
    ] = np.nan
    correlations = {}
    for init in ("imagenet", "scratch"):
        part = table[(table["init"] == init) & (table["status"] == "trained")]
        for x in ("imagenet_top1", "parameters"):
            correlations[f"{x}_vs_auc_{init}"] = spearman_with_ci(
                part[x], part["test_auc"], replicates, level, seed
            )
    truncation = truncation_effects(trained, scored, replicates, level, seed)
    with_boost = table.dropna(subset=["pretraining_boost"])
    correlations["boost_vs_parameters"] = spearman_with_ci(
        with_boost["parameters"], with_boost["pretraining_boost"], replicates, level, seed
    )
    figures = zoo_figures(table, run.out_dir)
    summary = {
        "table": table.to_dict("records"),
        "truncation": truncation.to_dict("records"),
        "correlations": correlations,
        "figures": figures,
    }
    flat = write_study_report(
        run.out_dir, table, summary, zoo_report(table, truncation, correlations, figures, cfg)
    )
    for row in truncation.itertuples():
        flat[f"{row.configuration}_truncation_effect"] = float(row.auc_difference)
    for row in table[table["status"] == "trained"].itertuples():
        if row.init == "imagenet" and not pd.isna(row.pretraining_boost):
            flat[f"{row.configuration}_boost"] = float(row.pretraining_boost)
    return flat


def zoo_figures(table: pd.DataFrame, out_dir: Path) -> list[str]:
    from medtailor.figures import log_parameter_axis, pyplot, save_figure

    plt = pyplot()
    made = []
    table = table[table["status"] == "trained"]
    made.append(auc_vs_parameters_figure(table, out_dir, annotate=True))
    known = table.dropna(subset=["imagenet_top1"])
    if len(known):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for init, part in known.groupby("init"):
            with_interval(ax, part["imagenet_top1"], part, "test_auc", label=init)
        ax.set_xlabel("ImageNet top-1 of the architecture's weights (%, timm)")
        ax.set_ylabel("test AUC")
        ax.legend()
        save_figure(fig, out_dir / "figures" / "auc_vs_imagenet.png")
        made.append("figures/auc_vs_imagenet.png")
    boosted = table.dropna(subset=["pretraining_boost"])
    if len(boosted):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        with_interval(ax, boosted["parameters"] / 1e6, boosted, "pretraining_boost")
        ax.axhline(0, color="grey", lw=0.5)
        log_parameter_axis(ax, boosted["parameters"] / 1e6)
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel("AUC(ImageNet) - AUC(scratch)")
        save_figure(fig, out_dir / "figures" / "boost_vs_parameters.png")
        made.append("figures/boost_vs_parameters.png")
    return made


def truncation_effects(
    trained: pd.DataFrame, scored: dict, replicates: int, level: float, seed: int
) -> pd.DataFrame:
    """Per truncated configuration: its test AUC minus that of the whole network of the same
    architecture and init (paired patient-bootstrap CI), and its share of the parameters:
    CheXtransfer's "truncated networks keep most of the AUC with fewer parameters"."""
    from medtailor.evaluate.whole_image import mean_auc_difference_with_ci

    rows = []
    for (_, _), group in trained.groupby(["architecture", "init"]):
        by_depth = group.set_index("truncate")
        if 0 not in by_depth.index:
            continue
        whole = by_depth.loc[0]
        for truncate, row in by_depth.drop(index=0).iterrows():
            difference = mean_auc_difference_with_ci(
                scored[row["configuration"]].frame,
                scored[whole["configuration"]].frame,
                "test",
                replicates,
                level,
                seed,
            )
            rows.append(
                {
                    "configuration": row["configuration"],
                    "whole": whole["configuration"],
                    "truncate": int(truncate),
                    "parameter_share": row["parameters"] / whole["parameters"],
                    "auc_difference": difference["difference"],
                    "auc_difference_ci_low": difference["difference_ci"][0],
                    "auc_difference_ci_high": difference["difference_ci"][1],
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "configuration",
            "whole",
            "truncate",
            "parameter_share",
            "auc_difference",
            "auc_difference_ci_low",
            "auc_difference_ci_high",
        ],
    )


def _cell(value: Any, low: Any = None, high: Any = None) -> str:
    if value is None or pd.isna(value):
        return ""
    interval = "" if low is None or pd.isna(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}{interval}"


def zoo_report(
    table: pd.DataFrame,
    truncation: pd.DataFrame,
    correlations: dict,
    figures: list[str],
    cfg: dict,
) -> list[str]:
    level = round(100 * float(cfg["confidence_level"]))
    lines = [
        "# Study: architecture zoo",
        "",
        f"Test AUC with {level}% patient-bootstrap CIs ({cfg['bootstrap_replicates']} "
        "replicates; unit: the patient). The boost is AUC(ImageNet) - AUC(scratch) of the same "
        "architecture and truncation, with a paired patient-bootstrap CI.",
        "",
        f"ImageNet top-1 is timm's published result for the weight an ImageNet init loads "
        f"(shown for scratch models too: it describes the architecture), from {SOURCE}.",
        "",
        "| configuration | architecture | init | truncate | parameters (M) | MACs (G) | "
        "ImageNet top-1 | test AUC | boost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.sort_values(["architecture", "truncate", "init"]).itertuples():
        if row.status != "trained":
            lines.append(
                f"| {row.configuration} | {row.architecture} | {row.init} | {row.truncate} | "
                f"| | | {row.status} | |"
            )
            continue
        lines.append(
            f"| {row.configuration} | {row.architecture} | {row.init} | {row.truncate} | "
            f"{row.parameters / 1e6:.2f} | {row.macs / 1e9:.3f} | "
            f"{'not in the table' if pd.isna(row.imagenet_top1) else f'{row.imagenet_top1:.1f}'} | "
            f"{_cell(row.test_auc, row.test_auc_ci_low, row.test_auc_ci_high)} | "
            f"{_cell(row.pretraining_boost, row.pretraining_boost_ci_low, row.pretraining_boost_ci_high)} |"
        )
    if len(truncation):
        lines += [
            "",
            "## Truncation",
            "",
            "Test AUC of each truncated network minus that of the whole network of the same "
            f"architecture and init ({level}% paired patient-bootstrap CI), and its share of "
            "the whole network's parameters.",
            "",
            "| configuration | whole network | parameters kept | AUC difference |",
            "|---|---|---|---|",
            *(
                f"| {row.configuration} | {row.whole} | {row.parameter_share:.0%} | "
                f"{_cell(row.auc_difference, row.auc_difference_ci_low, row.auc_difference_ci_high)} |"
                for row in truncation.itertuples()
            ),
        ]
    lines += [
        "",
        "## Spearman correlations across configurations",
        "",
        f"rho with scipy's p-value and a {level}% bootstrap CI over configurations.",
        "",
        "| x vs y | n | rho | p | CI |",
        "|---|---|---|---|---|",
    ]
    for key, value in correlations.items():
        if "undefined" in value:
            lines.append(f"| {key} | {value['n']} | {value['undefined']} | | |")
        else:
            low, high = value["rho_ci"]
            lines.append(
                f"| {key} | {value['n']} | {value['rho']:.3f} | {value['p_value']:.3g} | "
                f"[{low:.3f}, {high:.3f}] |"
            )
    lines += [""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return lines


def init_label(init: str) -> str:
    """An init as a name part: ``file:<path>`` by the file's stem, ``transfuse:2`` as
    ``transfuse2`` (names become folders and Snakemake wildcards)."""
    scheme, _, argument = str(init).partition(":")
    if scheme == "file":
        return "file-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(argument).stem)
    return scheme + argument


@register_study("zoo", analyse=analyse_zoo)
def zoo_configurations(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``<architecture>_<init>`` (``_trunc<k>`` when k > 0 final stages are cut; the init
    as ``init_label`` writes it) for every architecture x init x truncation of the block."""
    found = {}
    for architecture in cfg["architectures"]:
        for init in cfg["inits"]:
            for truncate in cfg["truncate"]:
                name = f"{architecture}_{init_label(init)}" + (
                    f"_trunc{truncate}" if truncate else ""
                )
                found[name] = {"model": architecture, "init": init, "truncate": int(truncate)}
    return found
