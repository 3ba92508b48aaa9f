"""Figures and the Markdown report of the evaluation stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtailor.patches.store import PatchStore


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gradcam_for_model(
    name: str,
    folder: Path,
    frame: pd.DataFrame,
    store: PatchStore,
    params: dict,
    threshold: float,
    out_dir: Path,
) -> Path:
    from medtailor.evaluate.gradcam import gradcam_figure, pick_cases, stack_patches
    from medtailor.train import model_entry
    from medtailor.train.architecture import build_classifier

    entry = model_entry(params, name)
    model = build_classifier({**entry, "init": "scratch"})
    model.load_state_dict(
        torch.load(folder / "best.pt", map_location="cpu", weights_only=True)["model"]
    )
    val = frame[frame["split"] == "val"].merge(store.index[["patch_id", "row"]], on="patch_id")
    cases = pick_cases(
        val, threshold, int(params["evaluate"]["gradcam_per_outcome"]), int(params["seed"])
    )
    images = stack_patches(
        store.array("radiograph", "val"), cases["row"].to_numpy(), int(entry["input_size"])
    )
    path = out_dir / "figures" / f"gradcam_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return gradcam_figure(
        model, images, cases, threshold, path, f"Grad-CAM, {name} (validation patches)"
    )


def _number(value: Any, spec: str = ".3g") -> str:
    return "undefined" if value is None else format(value, spec)


def _interval(value: Any, ci: Any) -> str:
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


def _figures(
    summary: dict, table: pd.DataFrame, roc: pd.DataFrame, froc: pd.DataFrame, out: Path, cfg: dict
) -> dict[str, str]:
    plt = _plt()
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    made = {}

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, part in roc.groupby("model"):
        ax.plot(part["fpr"], part["tpr"], label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, test split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "roc.png", dpi=120)
    made["roc"] = "figures/roc.png"

    low, high = cfg["froc"]["aufroc_fppi"]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for name, part in froc.groupby("model"):
        order = np.argsort(part["fppi"].to_numpy(), kind="stable")
        f, r = (
            part["fppi"].to_numpy()[order],
            np.maximum.accumulate(part["recall"].to_numpy()[order]),
        )
        ax.step(f, r, where="post", label=name, ls="--" if name == "detector" else "-")
    ax.axvspan(low, high, color="grey", alpha=0.12, label="AUFROC range")
    ax.set(
        xscale="symlog",
        xlabel="false positives per image",
        ylabel="study-wise recall",
        title="FROC, test split",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "froc.png", dpi=120)
    made["froc"] = "figures/froc.png"

    if len(table) and table["parameters"].notna().any():
        fig, ax = plt.subplots(figsize=(4.8, 4.0))
        for row in table.itertuples():
            if row.parameters and row.test_auc is not None:
                ax.scatter(row.parameters / 1e6, row.test_auc)
                ax.annotate(row.model, (row.parameters / 1e6, row.test_auc), fontsize=7)
        ax.set(
            xscale="log",
            xlabel="parameters (millions)",
            ylabel="test AUC",
            title="AUC vs parameters",
        )
        fig.tight_layout()
        fig.savefig(figures / "auc_vs_parameters.png", dpi=120)
        made["auc_vs_parameters"] = "figures/auc_vs_parameters.png"

    boost = (
        table.dropna(subset=["pretraining_boost"])
        if "pretraining_boost" in table
        else table.iloc[:0]
    )
    if len(boost):
        fig, ax = plt.subplots(figsize=(4.8, 3.6))
        ax.bar(boost["architecture"], boost["pretraining_boost"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set(ylabel="test AUC: ImageNet - scratch", title="Pre-training boost")
        fig.tight_layout()
        fig.savefig(figures / "pretraining_boost.png", dpi=120)
        made["pretraining_boost"] = "figures/pretraining_boost.png"
    plt.close("all")
    return made


def write_report(
    summary: dict, table: pd.DataFrame, frames: dict, froc: pd.DataFrame, out: Path, params: dict
) -> Path:
    from medtailor.evaluate import roc_table

    cfg = params["evaluate"]
    level = round(100 * float(cfg["confidence_level"]))
    figures = _figures(summary, table, roc_table(frames), froc, out, cfg)
    low, high = cfg["froc"]["aufroc_fppi"]
    lines = [
        "# medtailor evaluation report",
        "",
        f"Intervals are {level}% percentile bootstrap intervals over "
        f"{cfg['bootstrap_replicates']} replicates, resampling patients (classification) or "
        f"studies (FROC), not patches. Thresholds are chosen on the validation split "
        f"(Youden's J) and applied to the test split. AUFROC is the area under the study-wise "
        f"FROC step curve between {low} and {high} false positives per image, divided by "
        f"{high - low:g} (so 1 is perfect); candidates are the detector's, re-scored by each "
        "classifier.",
        "",
        "## Models",
        "",
        "| model | architecture | init | test AUC | test AUFROC | sensitivity | specificity | parameters | MACs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["models"].items():
        op = r["test_operating_point"]
        lines.append(
            f"| {name} | {r.get('architecture')} | {r.get('init')} | {_interval(r['test'].get('auc'), r['test'].get('auc_ci'))} | "
            f"{_interval(r['test_froc'].get('aufroc'), r['test_froc'].get('aufroc_ci'))} | "
            f"{_interval(op.get('sensitivity'), op.get('sensitivity_ci'))} | "
            f"{_interval(op.get('specificity'), op.get('specificity_ci'))} | "
            f"{(r.get('parameters') or 0) / 1e6:.2f} M | {(r.get('macs') or 0) / 1e9:.3f} G |"
        )
    det = summary["detector_froc"]
    lines += [
        "",
        f"The detector's own scores give AUFROC {_interval(det.get('aufroc'), det.get('aufroc_ci'))} and LUNA16 "
        f"score {det.get('luna16') if det.get('luna16') is None else round(det['luna16'], 3)} on "
        f"{det['lesions']} test lesions in {det['studies_with_lesions']} studies ({det['images']} images).",
        "",
        "## Pairwise comparisons (test split)",
        "",
        "| a | b | AUC difference | DeLong z | DeLong p (Holm) | bootstrap CI of difference | McNemar p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        if "undefined" in c:
            lines.append(f"| {c['a']} | {c['b']} | undefined: {c['undefined']} | | | | |")
            continue
        low, high = c["bootstrap_difference_ci"]
        lines.append(
            f"| {c['a']} | {c['b']} | {_interval(c['difference'], c['delong_ci'])} | {_number(c['delong_z'], '.2f')} | "
            f"{_number(c['delong_p'])} ({_number(c.get('delong_p_holm'))}) | "
            f"{_number(low, '.3f')}–{_number(high, '.3f')} | "
            f"{_number(c.get('mcnemar_p'))} ({_number(c.get('mcnemar_p_holm'))}) |"
        )
    lines += ["", "## Correlations across models (Spearman)", ""]
    for c in summary["correlations"]:
        if "undefined" in c:
            lines.append(f"- {c['y']} vs {c['x']}: undefined ({c['undefined']})")
        else:
            lines.append(
                f"- {c['y']} vs {c['x']}: rho = {c['rho']:.2f}, p = {c['p_value']:.3g} (n = {c['n']})"
            )
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        lines.append(f"![{title}]({path})")
    for name, r in summary["models"].items():
        if r.get("gradcam"):
            lines.append(f"![Grad-CAM {name}](figures/{Path(r['gradcam']).name})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
