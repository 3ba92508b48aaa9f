"""Transfusion (Raghu et al. 2019): does ImageNet pre-training help through features or
through weight scaling, and which layers does fine-tuning change?

Configurations: each large ``architecture`` with ImageNet weights, from scratch, with
Mean-Var initialisation (``mean_var``: random weights with each pre-trained tensor's mean
and variance) and with weight transfusion up to each stage k (``transfuse:k``:
pre-trained stem and stages 1..k, random above); each small model (the CBR family, which
has no pre-trained weights) from scratch.

Analysis: the table (test AUC with patient-bootstrap CIs, parameters, MACs, epochs to
reach ``target_auc`` on validation); convergence curves (validation AUC per epoch) of
ImageNet vs Mean-Var vs random initialisation; epochs to the target against the
transfused depth k; and, per layer group, the linear CKA between the representation of
validation images before fine-tuning (the initial weights) and after it, for the
ImageNet and random initialisations, with its per-layer plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtailor.study.analysis import (
    auc_columns,
    auc_vs_parameters_figure,
    write_study_report,
)
from medtailor.study.registry import StudyRun, register_study
from medtailor.study.zoo import init_label

CKA_INITS = ("imagenet", "scratch")


def epochs_to_target(history: pd.DataFrame, target: float) -> int | None:
    """The first epoch whose validation AUC reaches ``target`` (None: never)."""
    reached = history.loc[history["val_auc"] >= target, "epoch"]
    return int(reached.iloc[0]) if len(reached) else None


def layer_outputs(model: torch.nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    """The output of each layer group of the classifier's backbone (stem, then stages),
    flattened per image, in eval mode."""
    from medtailor.train.backbones import layer_groups

    backbone = model.backbone
    modules = dict(backbone.named_modules())
    outputs: list[np.ndarray] = []
    hooks = [
        modules[group[-1]].register_forward_hook(
            lambda _m, _i, out: outputs.append(out.detach().flatten(1).cpu().numpy())
        )
        for group in layer_groups(backbone)
        if group and group[-1] in modules
    ]
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def cka_before_after(
    entry: dict[str, Any], checkpoint: Path, images: torch.Tensor, seed: int, num_classes: int
) -> list[float]:
    """Per layer group, linear CKA between the initial network (rebuilt as training built
    it: same seed, same init) and the fine-tuned one."""
    from medtailor.study.analysis import linear_cka
    from medtailor.train.architecture import build_classifier, load_classifier

    torch.manual_seed(seed)
    before = build_classifier(entry, num_classes)
    after, _ = load_classifier(checkpoint)
    return [
        linear_cka(a, b)
        for a, b in zip(layer_outputs(before, images), layer_outputs(after, images), strict=True)
    ]


def analyse_transfusion(run: StudyRun) -> dict[str, Any]:
    from medtailor.patches.store import PatchStore
    from medtailor.study import study_configurations
    from medtailor.targets import output_count
    from medtailor.train.data import PatchDataset

    cfg, seed = run.cfg, run.seed
    study = run.params["studies"]["transfusion"]
    entries = study_configurations(run.params, "transfusion")
    store = PatchStore(run.store_dir)
    num_classes = output_count(store.task())
    rows, curves, cka_rows = [], [], []
    for name, result in run.scored().items():
        entry, facts, folder = entries[name], result.facts, run.folders[name]
        history = pd.read_csv(folder / "history.csv")
        init = str(entry["init"])
        rows.append(
            {
                "configuration": name,
                "architecture": entry["model"],
                "init": init,
                "transfused_stages": int(init.split(":")[1])
                if init.startswith("transfuse:")
                else None,
                "parameters": facts["parameters"],
                "macs": facts["macs"],
                **auc_columns(result.test),
                "epochs_to_target": epochs_to_target(history, float(study["target_auc"])),
                "status": "trained",
            }
        )
        curves.append(history[["epoch", "val_auc"]].assign(configuration=name, init=init))
        if init in CKA_INITS and entry["model"] in study["architectures"]:
            dataset = PatchDataset(
                store, "val", int(entry["input_size"]), int(entry["input_channels"]), False
            )
            count = min(len(dataset), int(study["cka_images"]))
            images = torch.stack([dataset[i][0] for i in range(count)])
            values = cka_before_after(entry, folder / "best.pt", images, seed, num_classes)
            cka_rows += [
                {"configuration": name, "init": init, "layer": k, "cka": v}
                for k, v in enumerate(values)
            ]
    for name, entry in run.left_out.items():
        rows.append(
            {
                "configuration": name,
                "architecture": entry["model"],
                "init": str(entry["init"]),
                "status": f"not run: needs {entry['missing']}",
            }
        )
    table = pd.DataFrame(rows)
    cka = pd.DataFrame(cka_rows, columns=["configuration", "init", "layer", "cka"])
    history = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    cka.to_csv(run.out_dir / "cka.csv", index=False)
    history.to_csv(run.out_dir / "convergence.csv", index=False)
    figures = transfusion_figures(table, history, cka, float(study["target_auc"]), run.out_dir)
    summary = {"table": table.to_dict("records"), "cka": cka.to_dict("records"), "figures": figures}
    lines = transfusion_report(table, cka, figures, study, cfg)
    return write_study_report(run.out_dir, table, summary, lines)


def transfusion_figures(
    table: pd.DataFrame, history: pd.DataFrame, cka: pd.DataFrame, target: float, out_dir: Path
) -> list[str]:
    from medtailor.figures import pyplot, save_figure

    plt = pyplot()
    made = []
    compared = (
        history[history["init"].isin(["imagenet", "scratch", "mean_var"])]
        if len(history)
        else history
    )
    if len(compared):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name, part in compared.groupby("configuration"):
            ax.plot(part["epoch"], part["val_auc"], marker="o", label=name)
        ax.axhline(target, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation AUC")
        ax.legend(fontsize="small")
        save_figure(fig, out_dir / "figures" / "convergence.png")
        made.append("figures/convergence.png")
    transfused = (
        table.dropna(subset=["transfused_stages"]) if "transfused_stages" in table else table
    )
    if len(transfused):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for architecture, part in transfused.groupby("architecture"):
            reached = part.dropna(subset=["epochs_to_target"]).sort_values("transfused_stages")
            ax.plot(
                reached["transfused_stages"],
                reached["epochs_to_target"],
                marker="o",
                label=architecture,
            )
        ax.set_xlabel("stages transfused from ImageNet (k)")
        ax.set_ylabel(f"epochs to validation AUC {target:g}")
        ax.legend(fontsize="small")
        save_figure(fig, out_dir / "figures" / "transfusion.png")
        made.append("figures/transfusion.png")
    if len(cka):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name, part in cka.groupby("configuration"):
            ax.plot(part["layer"], part["cka"], marker="o", label=name)
        ax.set_xlabel("layer group (0 = stem)")
        ax.set_ylabel("CKA(before, after fine-tuning)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize="small")
        save_figure(fig, out_dir / "figures" / "cka.png")
        made.append("figures/cka.png")
    trained = table[table["status"] == "trained"]
    if len(trained):
        made.append(auc_vs_parameters_figure(trained, out_dir, annotate=False))
    return made


def transfusion_report(
    table: pd.DataFrame, cka: pd.DataFrame, figures: list[str], study: dict, cfg: dict
) -> list[str]:
    level = round(100 * float(cfg["confidence_level"]))
    lines = [
        "# Study: Transfusion",
        "",
        f"Test AUC with {level}% patient-bootstrap CIs (unit: the patient); epochs to reach "
        f"validation AUC {study['target_auc']} (the first epoch at or above it).",
        "",
        "| configuration | architecture | init | parameters (M) | MACs (G) | test AUC | epochs to target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        if row["status"] != "trained":
            lines.append(
                f"| {row['configuration']} | {row['architecture']} | {row['init']} | | | {row['status']} | |"
            )
            continue
        reached = row["epochs_to_target"]
        lines.append(
            f"| {row['configuration']} | {row['architecture']} | {row['init']} | "
            f"{row['parameters'] / 1e6:.2f} | {row['macs'] / 1e9:.3f} | "
            f"{row['test_auc']:.3f} [{row['test_auc_ci_low']:.3f}, {row['test_auc_ci_high']:.3f}] | "
            f"{'not reached' if reached is None or pd.isna(reached) else int(reached)} |"
        )
    if len(cka):
        layers = sorted(cka["layer"].unique())
        lines += [
            "",
            "## Representation similarity before and after fine-tuning (linear CKA)",
            "",
            f"On {study['cka_images']} validation images at most; 1 means the layer's "
            "representation did not change.",
            "",
            "| configuration | " + " | ".join(f"layer {k}" for k in layers) + " |",
            "|---|" + "---|" * len(layers),
        ]
        for name, part in cka.groupby("configuration"):
            values = part.set_index("layer")["cka"]
            lines.append(
                f"| {name} | " + " | ".join(f"{values.get(k, np.nan):.3f}" for k in layers) + " |"
            )
    lines += [""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return lines


@register_study("transfusion", analyse=analyse_transfusion)
def transfusion_configurations(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Large architectures x {imagenet, scratch, mean_var, transfuse:k}; small models from
    scratch."""
    truncate = int(cfg.get("entry", {}).get("truncate", 0))
    found = {}
    for architecture in cfg["architectures"]:
        inits = ["imagenet", "scratch", "mean_var"]
        inits += [f"transfuse:{k}" for k in cfg["transfuse_stages"]]
        for init in inits:
            found[f"{architecture}_{init_label(init)}"] = {
                "model": architecture,
                "init": init,
                "truncate": truncate,
            }
    for small in cfg["small_models"]:
        found[f"{small}_scratch"] = {"model": small, "init": "scratch", "truncate": truncate}
    return found
