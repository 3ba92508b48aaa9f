"""Figures and the Markdown report of the evaluation stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtailor.evaluate.comparisons import comparison_table
from medtailor.evaluate.segmentation import REPORTED_PATCH
from medtailor.figures import pyplot, save_figure
from medtailor.patches.store import PatchStore


def gradcam_for_model(
    name: str,
    model: torch.nn.Module,
    entry: dict[str, Any],
    frame: pd.DataFrame,
    store: PatchStore,
    params: dict,
    threshold: float,
    out_dir: Path,
) -> Path:
    """Activation-map figure (``evaluate.cam_method``) of ``model`` (rebuilt from its
    checkpoint; ``entry`` is the configuration the checkpoint carries) on validation
    patches of each outcome."""
    from medtailor.evaluate.gradcam import CAM_METHODS, gradcam_figure, pick_cases, stack_patches

    val = frame[frame["split"] == "val"].merge(store.index[["patch_id", "row"]], on="patch_id")
    cases = pick_cases(
        val, threshold, int(params["evaluate"]["gradcam_per_outcome"]), int(params["seed"])
    )
    images = stack_patches(
        store.array("radiograph", "val"), cases["row"].to_numpy(), int(entry["input_size"])
    )
    path = out_dir / "figures" / f"gradcam_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    method = str(params["evaluate"]["cam_method"])
    return gradcam_figure(
        model,
        images,
        cases,
        threshold,
        path,
        f"{CAM_METHODS[method][0]}, {name} (validation patches)",
        method,
    )


def gradcam_pointing_game(
    model: torch.nn.Module,
    entry: dict[str, Any],
    frame: pd.DataFrame,
    store: PatchStore,
    truths: pd.DataFrame,
    params: dict,
    threshold: float,
) -> dict[str, Any]:
    """The pointing game on the validation and test true positives: how often the maximum
    of the activation map (``evaluate.cam_method``) falls inside the lesion box the patch
    was labelled by, against chance (the mean share of the patch that box covers)."""
    from medtailor.evaluate.gradcam import box_share, gradcam_maps, pointing_game, stack_patches
    from medtailor.patches.crops import box_in_patch, context_region

    size, cfg = int(entry["input_size"]), params["patches"]
    method = str(params["evaluate"]["cam_method"])
    located = store.index[["patch_id", "row", "x0", "y0", "x1", "y1", "gt_id"]]
    gt = truths.set_index("box_id")[["x0", "y0", "x1", "y1"]]
    hits, shares = [], []
    for split in ("val", "test"):
        cases = frame[
            (frame["split"] == split) & (frame["label"] == 1) & (frame["prob"] >= threshold)
        ].merge(located, on="patch_id")
        if cases.empty:
            continue
        boxes = []
        for _, case in cases.iterrows():
            low, high = context_region(
                case[["x0", "y0", "x1", "y1"]].to_numpy(float),
                float(cfg["context"]),
                bool(cfg["square"]),
            )
            boxes.append(
                box_in_patch(gt.loc[case["gt_id"]].to_numpy(float), low, high, (size, size))
            )
        images = stack_patches(store.array("radiograph", split), cases["row"].to_numpy(), size)
        hits.append(pointing_game(gradcam_maps(model, images, size, method), np.array(boxes)))
        shares.append(box_share(np.array(boxes), size))
    if not hits:
        return {"method": method, "true_positives": 0, "hits": 0, "chance": None}
    return {
        "method": method,
        "true_positives": int(sum(len(h) for h in hits)),
        "hits": int(sum(h.sum() for h in hits)),
        "chance": float(np.concatenate(shares).mean()),
    }


def _pointing_game_lines(models: dict[str, Any]) -> list[str]:
    """Whether each model's activation maps point at the lesions, so a reader knows how far
    to trust them."""
    from medtailor.evaluate.gradcam import CAM_METHODS

    # One evaluate run uses one evaluate.cam_method; each game records it.
    method = next(r["pointing_game"]["method"] for r in models.values() if r.get("pointing_game"))
    lines = [
        f"{CAM_METHODS[method][0]} maps of the target stage (1 = strongest lesion evidence). "
        "Pointing game (unit: true-positive "
        "patch, validation and test): the map's maximum inside the lesion box the patch was "
        "labelled by, against chance (the box's mean share of the patch). A model whose maps "
        "do not beat chance clearly does not show where it finds the lesion.",
        "",
    ]
    for name, result in models.items():
        game = result.get("pointing_game")
        if not game:
            continue
        if not game["true_positives"]:
            lines.append(f"- {name}: no true positive to point at")
            continue
        lines.append(
            f"- {name}: {game['hits']} of {game['true_positives']} "
            f"({game['hits'] / game['true_positives']:.0%}; chance {game['chance']:.0%})"
        )
    return lines


def _number(value: Any, spec: str = ".3g") -> str:
    return "undefined" if value is None else format(value, spec)


def _interval(value: Any, ci: Any) -> str:
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


FPPI_TICKS = (0.125, 0.25, 0.5, 1, 2, 4, 8)


def calibrated_range_lines(models: dict[str, Any]) -> list[str]:
    """A warning for every AUC interval computed outside the range it was calibrated on."""
    from medtailor.evaluate.classification import CALIBRATED_MIN_PATIENTS

    outside = []
    for name, result in models.items():
        blocks = [(split, result.get(split) or {}) for split in ("val", "test")]
        blocks += [
            (f"{split} {target}", per_class.get(split) or {})
            for target, per_class in (result.get("classes") or {}).items()
            for split in ("val", "test")
        ]
        outside += [
            f"{name} {where} ({block['rarer_class_patients']} patients)"
            for where, block in blocks
            if block.get("below_calibrated_range")
        ]
    if not outside:
        return []
    return [
        f"**AUC intervals outside the calibrated range:** {', '.join(outside)} rest on fewer "
        f"than {CALIBRATED_MIN_PATIENTS} patients with a case of the rarer class; the "
        "interval was calibrated down to that number, below it its coverage is unknown.",
        "",
    ]


def froc_left_edge(low: float) -> float:
    """Left end of the log FPPI axis: below the AUFROC range; 0 FPPI is drawn there."""
    return min(float(low), FPPI_TICKS[0]) / 2


def froc_axis(ax: Any, low: float) -> None:
    """A log FPPI axis labelled at the LUNA16 operating points (1/8 ... 8) and reaching down
    to the AUFROC range."""
    from matplotlib.ticker import FixedLocator, NullLocator

    left = froc_left_edge(low)
    ax.set_xscale("log")
    ax.set_xlim(left, FPPI_TICKS[-1] * 1.25)
    ticks = [t for t in (0.02, 0.05) if t > left] + list(FPPI_TICKS)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(
        [f"1/{round(1 / t)}" if t < 1 and 1 / t == round(1 / t) else f"{t:g}" for t in ticks]
    )
    ax.set_ylim(0, 1.02)


def _figures(
    summary: dict, table: pd.DataFrame, roc: pd.DataFrame, froc: pd.DataFrame, out: Path, cfg: dict
) -> dict[str, str]:
    plt = pyplot()
    figures = out / "figures"
    made = {}

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, part in roc.groupby("model"):
        ax.plot(part["fpr"], part["tpr"], label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, test split")
    ax.legend(fontsize=7)
    save_figure(fig, figures / "roc.png")
    made["roc"] = "figures/roc.png"

    low, high = cfg["froc"]["aufroc_fppi"]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for name, part in froc.groupby("model"):
        order = np.argsort(part["fppi"].to_numpy(), kind="stable")
        f, r = (
            part["fppi"].to_numpy()[order],
            np.maximum.accumulate(part["recall"].to_numpy()[order]),
        )
        f = np.maximum(f, froc_left_edge(low))
        ax.step(f, r, where="post", label=name, ls="--" if name == "detector" else "-")
    ax.axvspan(low, high, color="grey", alpha=0.12, label="AUFROC range")
    froc_axis(ax, low)
    ax.set(xlabel="false positives per image", ylabel="study-wise recall", title="FROC, test split")
    ax.legend(fontsize=7)
    save_figure(fig, figures / "froc.png")
    made["froc"] = "figures/froc.png"

    sized = table.dropna(subset=["parameters", "test_auc"]) if len(table) else table
    if len(sized):
        fig, ax = plt.subplots(figsize=(4.8, 4.0))
        groups = sized.groupby("parameters", sort=True)
        if len(groups) == 1:
            # One size for every model: a scatter would stack them on one x.
            ax.text(
                0.5,
                0.5,
                f"All {len(sized)} models have {sized['parameters'].iloc[0] / 1e6:.2f} M "
                "parameters:\nAUC vs parameters says nothing here\n(see the models table).",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            ax.set_axis_off()
        else:
            for parameters, group in groups:
                ax.scatter([parameters / 1e6] * len(group), group["test_auc"])
                label = ", ".join(group["model"])
                if len(group) > 1:
                    label = f"equal size: {label}"
                ax.annotate(label, (parameters / 1e6, group["test_auc"].max()), fontsize=7)
            ax.set(xscale="log", xlabel="parameters (millions)", ylabel="test AUC")
        ax.set_title("AUC vs parameters")
        save_figure(fig, figures / "auc_vs_parameters.png")
        made["auc_vs_parameters"] = "figures/auc_vs_parameters.png"

    boost = (
        table.dropna(subset=["pretraining_boost"])
        if "pretraining_boost" in table
        else table.iloc[:0]
    )
    if len(boost):
        fig, ax = plt.subplots(figsize=(4.8, 3.6))
        values = boost["pretraining_boost"].to_numpy(float)
        intervals = [
            ci if ci is not None else (np.nan, np.nan) for ci in boost["pretraining_boost_ci"]
        ]
        low = np.array([v - ci[0] for v, ci in zip(values, intervals, strict=True)], float)
        high = np.array([ci[1] - v for v, ci in zip(values, intervals, strict=True)], float)
        ax.bar(boost["model"], values, yerr=np.vstack([low, high]), capsize=6)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(
            ylabel="test AUC: ImageNet - scratch",
            title=f"Pre-training boost ({round(100 * float(cfg['confidence_level']))}% CI, "
            "patient bootstrap of the paired difference)",
        )
        ax.title.set_fontsize(8)
        save_figure(fig, figures / "pretraining_boost.png")
        made["pretraining_boost"] = "figures/pretraining_boost.png"
    return made


def _evidence_lines(evidence: dict) -> list[str]:
    """The evidence section: warnings first, then the counts per split."""
    lines = ["## Evidence", ""]
    if evidence["warnings"]:
        lines += [
            "**The numbers below rest on little evidence:**",
            "",
            *[f"- {w}" for w in evidence["warnings"]],
            "",
        ]
    lines += [
        "| split | patients | patches | positive patches | patients with positives | lesions | detector recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in evidence["table"]:
        recall = row["detector_recall"]
        lines.append(
            f"| {row['split']} | {row['patients']} | {row['patches']} | {row['positive_patches']} | "
            f"{row['patients_with_positives']} | {row['lesions']} | "
            f"{'n/a' if recall is None else f'{recall:.0%}'} |"
        )
    return [*lines, ""]


SEARCH_ROLES = {
    "finalist": "search finalist",
    "reference": "reference network",
    "winner_scratch": "winner, from scratch",
}


def _search_lines(summary: dict, level: int, replicates: int) -> list[str]:
    """The fracture NAS study's Table 1 (every evaluated model, by test AUFROC) and the
    search's figures."""
    search = summary["search"]
    winner = next(
        (
            r["config"].get("genotype")
            for r in summary["models"].values()
            if r.get("search_role") == "winner_scratch"
        ),
        None,
    )
    lines = [
        "",
        "## Architecture search",
        "",
        f"Space {search['space']} ({search['genes']} genes); {search['candidates']} candidates, "
        f"{search['distinct_networks']} distinct networks, {search['trained']} trained; "
        f"validation AUFROC of the reference network {_number(search['reference_score'])}, "
        f"best {_number(search['best_score'])}. Finalists (search score): "
        + ", ".join(
            f"{f['name']} = {f['key']} ({_number(f['score'])})" for f in search["finalists"]
        )
        + ".",
        "",
        f"Table 1 (as in the fracture NAS study). Test AUFROC with its 90% and {level}% "
        f"patient-bootstrap intervals ({replicates} replicates), parameters and MACs of every "
        "evaluated model. The search's winner is the finalist with the best validation "
        "AUFROC after retraining.",
        "",
        f"| model | role | init | test AUFROC (90% CI) | {level}% CI | parameters | MACs |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = sorted(
        summary["models"].items(),
        key=lambda item: -(item[1]["test_froc"].get("aufroc") or -1.0),
    )
    for name, r in rows:
        role = SEARCH_ROLES.get(r.get("search_role"), "baseline")
        if r.get("search_role") == "finalist" and r["config"].get("genotype") == winner:
            role = "search winner"
        froc = r["test_froc"]
        wide = froc.get("aufroc_ci") or [None, None]
        lines.append(
            f"| {name} | {role} | {r.get('init')} | "
            f"{_interval(froc.get('aufroc'), froc.get('aufroc_ci_90'))} | "
            f"{_number(wide[0], '.3f')}–{_number(wide[1], '.3f')} | "
            f"{(r.get('parameters') or 0) / 1e6:.2f} M | {(r.get('macs') or 0) / 1e6:.1f} M |"
        )
    lines += ["", *[f"![search]({path})" for path in search["figures"]]]
    return lines


def detector_recall_figure(table: pd.DataFrame, out: Path) -> str:
    """Lesion recall against the candidates kept per image, one line per split."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for split, part in table.groupby("split", sort=False):
        lesions = int(part["lesions"].iloc[0])
        ax.step(
            part["candidates_per_image"],
            part["recall"],
            where="post",
            label=f"{split} ({lesions} lesions)",
        )
    ax.set(
        xlabel="candidates kept per image (best scores first)",
        ylabel="lesion recall",
        ylim=(0, 1.02),
        title="Detector: recall vs candidates per image",
    )
    ax.legend(fontsize=7)
    save_figure(fig, out / "figures" / "detector_recall.png")
    return "figures/detector_recall.png"


def _detector_lines(summary: dict, figure: str | None, params: dict) -> list[str]:
    froc_cfg = params["evaluate"]["froc"]
    lines = [
        "## Detector",
        "",
        f"Candidates kept by the patch stage (score above {params['patches']['min_score']}); a "
        f"lesion is found when a candidate's IoU with it exceeds {froc_cfg['hit_iou']}. The "
        "plateau of each curve bounds the recall any classifier re-scoring these candidates "
        "can reach: a low plateau means the detector, not the classifier, limits the pipeline.",
        "",
        "| split | lesions | recall, best candidate per image | best 5 | all kept | most candidates in an image |",
        "|---|---|---|---|---|---|",
    ]
    for split, row in summary.get("detector_recall", {}).items():
        lines.append(
            f"| {split} | {row['lesions']} | {_number(row['recall_at_1'])} | "
            f"{_number(row['recall_at_5'])} | {_number(row['recall_all'])} | "
            f"{row['candidates_per_image_max']} |"
        )
    if figure:
        lines += ["", f"![detector recall]({figure})"]
    return [*lines, ""]


def _segmentation_lines(segmentation: dict, level: int, replicates: int) -> list[str]:
    patch = "x".join(str(s) for s in REPORTED_PATCH)
    lines = [
        "",
        "## Segmentation (test split)",
        "",
        f"Unit: **patient**. Dice per class over the test volumes (a volume where the class is "
        f"absent from both the truth and the prediction has no Dice and is left out), with "
        f"{level}% patient-bootstrap intervals ({replicates} replicates; a patient's volumes "
        f"are drawn together). MACs are for one {patch} patch (the C2FNAS study's), whatever "
        "patch the network trained on.",
        "",
        f"| model | class | Dice | volumes | patients | parameters | MACs ({patch}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in segmentation["models"].items():
        for row in result["test"]:
            undefined = row.get("dice_ci_undefined") or 0
            note = f" ({undefined} undefined replicates)" if undefined else ""
            lines.append(
                f"| {name} ({result['model']}) | {row['class']} | "
                f"{_interval(row['dice'], row['dice_ci'])}{note} | {row['volumes']} | "
                f"{row['patients']} | {_number(result['parameters'])} | "
                f"{_number(result.get('macs_reported_patch'))} |"
            )
    if segmentation.get("comparisons"):
        lines += [
            "",
            f"Paired comparisons. Unit: **patient**. Mean Dice difference (first minus second) "
            f"over the test volumes both models segmented, its {level}% patient-bootstrap "
            "interval (a drawn patient brings both models' Dice) and the two-sided bootstrap "
            "p-value (never below 1/(replicates + 1)), Holm-adjusted over all pairs and classes.",
            "",
        ]
        few = sorted({r["patients"] for r in segmentation["comparisons"] if r["patients"] < 20})
        if few:
            lines += [
                f"**Few patients ({', '.join(map(str, few))}):** a bootstrap over fewer than "
                "about 20 patients understates the spread between patients; these intervals "
                "and p-values are indicative only.",
                "",
            ]
        lines += [
            "| first | second | class | Dice difference | p | p (Holm) | patients |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in segmentation["comparisons"]:
            lines.append(
                f"| {row['first']} | {row['second']} | {row['class']} | "
                f"{_interval(row['difference'], row['difference_ci'])} | "
                f"{_number(row['p_value'])} | {_number(row['p_holm'])} | {row['patients']} |"
            )
    if segmentation.get("figure"):
        lines += ["", f"![segmentation Dice curves]({segmentation['figure']})"]
    return [*lines, ""]


def _search_seg_lines(search: dict) -> list[str]:
    lines = [
        "",
        "## Segmentation search (C2FNAS)",
        "",
        f"Coarse search: {search['coarse_candidates']} topologies trained from scratch over "
        f"{search['clusters_visited']} clusters; the best, "
        f"{'-'.join(str(v) for v in search['levels'])} (levels per cell), scored a validation "
        f"mean Dice of {_number(search['coarse_score'])}. Fine search: "
        f"{search['assignments_scored']} operation assignments scored with the single-path "
        f"supernet's weights; the selected one, {', '.join(search['operations'])}, scored "
        f"{_number(search['supernet_score'])} (all 3D: "
        f"{_number(search['reference_supernet_score'])}). It was retrained from scratch as "
        "c2fnas_searched (the segmentation table above).",
        "",
    ]
    lines += [f"![{Path(figure).stem}]({figure})" for figure in search["figures"]]
    return [*lines, ""]


def segmentation_report(summary: dict, out: Path, params: dict) -> Path:
    """report.md of a project that segments only."""
    cfg = params["evaluate"]
    level = round(100 * float(cfg["confidence_level"]))
    lines = ["# medtailor evaluation report: 3D segmentation", ""]
    lines += _segmentation_lines(summary["segmentation"], level, int(cfg["bootstrap_replicates"]))
    if summary.get("search_seg"):
        lines += _search_seg_lines(summary["search_seg"])
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_report(
    summary: dict,
    table: pd.DataFrame,
    frames: dict,
    froc: pd.DataFrame,
    out: Path,
    params: dict,
    detector_recall: pd.DataFrame | None = None,
) -> Path:
    from medtailor.evaluate import roc_table

    cfg = params["evaluate"]
    level = round(100 * float(cfg["confidence_level"]))
    figures = _figures(summary, table, roc_table(frames), froc, out, cfg)
    low, high = cfg["froc"]["aufroc_fppi"]
    replicates = int(cfg["bootstrap_replicates"])
    in_between = {
        "false_positive": "a candidate that hits no lesion counts as a false positive, "
        "whatever its overlap (the same rule as the patch labels of validation and test)",
        "ignored": f"a candidate that hits no lesion but overlaps one with IoU of at least "
        f"{cfg['froc']['false_positive_iou']} is neither a hit nor a false positive",
    }[cfg["froc"]["in_between"]]
    lines = [
        "# medtailor evaluation report",
        "",
        "Every interval and test below states its unit: the patient, unless said otherwise. "
        "Patches (detector candidates) of one patient are correlated, so no interval or test "
        "treats them as independent.",
        "",
        f"Thresholds are chosen on the validation split (Youden's J) and applied to the test "
        f"split. AUFROC is the area under the study-wise FROC step curve between {low} and "
        f"{high} false positives per image, divided by {high - low:g} (so 1 is perfect); "
        f"candidates are the detector's, re-scored by each classifier; a candidate hits a "
        f"lesion when its IoU exceeds {cfg['froc']['hit_iou']}, and {in_between}.",
        "",
        *_evidence_lines(summary["evidence"]),
        *_detector_lines(
            summary,
            detector_recall_figure(detector_recall, out) if detector_recall is not None else None,
            params,
        ),
        "## Models (test split)",
        "",
        f"Unit: **patient**. Every interval comes from {replicates} bootstrap replicates "
        "that resample patients (all patches, or all studies, of a drawn patient together). "
        f"The AUC's {level}% interval is logit(AUC) ± t × the replicates' SD on the logit "
        "scale, with the patients of the rarer class − 1 degrees of freedom (calibrated to "
        "hold its level with few patients); sensitivity, specificity and AUFROC intervals "
        "are percentile intervals.",
        "",
        *calibrated_range_lines(summary["models"]),
        "| model | architecture | init | test AUC | test AUFROC | sensitivity | specificity | parameters | MACs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    undefined = []
    for name, r in summary["models"].items():
        op = r["test_operating_point"]
        lines.append(
            f"| {name} | {r.get('architecture')} | {r.get('init')} | {_interval(r['test'].get('auc'), r['test'].get('auc_ci'))} | "
            f"{_interval(r['test_froc'].get('aufroc'), r['test_froc'].get('aufroc_ci'))} | "
            f"{_interval(op.get('sensitivity'), op.get('sensitivity_ci'))} | "
            f"{_interval(op.get('specificity'), op.get('specificity_ci'))} | "
            f"{(r.get('parameters') or 0) / 1e6:.2f} M | {(r.get('macs') or 0) / 1e9:.3f} G |"
        )
        for label, block, key in (
            ("AUC", r["test"], "auc"),
            ("AUFROC", r["test_froc"], "aufroc"),
            ("sensitivity", op, "sensitivity"),
            ("specificity", op, "specificity"),
        ):
            count = block.get(f"{key}_ci_undefined") or 0
            if count:
                undefined.append(f"{name} {label}: {count} of {replicates}")
    lines += [
        "",
        "Bootstrap replicates where a metric was undefined (a draw without a positive or a "
        "lesion), left out of its interval: "
        + ("; ".join(undefined) if undefined else "none")
        + ".",
    ]
    det = summary["detector_froc"]
    lines += [
        "",
        f"The detector's own scores give AUFROC {_interval(det.get('aufroc'), det.get('aufroc_ci'))} "
        f"(patient bootstrap; {det.get('aufroc_ci_undefined') or 0} undefined replicates) and "
        f"LUNA16 score {det.get('luna16') if det.get('luna16') is None else round(det['luna16'], 3)} on "
        f"{det['lesions']} test lesions in {det['studies_with_lesions']} studies ({det['images']} images).",
        "",
        "## Pairwise comparisons (test split)",
        "",
    ]
    few = sorted({c["patients"] for c in summary["comparisons"] if c.get("patients", 99) < 20})
    if few:
        lines += [
            f"**Few patients ({', '.join(map(str, few))}):** the clustered tests are "
            "asymptotic in the number of patients, so with fewer than about 20 their "
            "p-values are approximate and can be far too small; trust the intervals and "
            "tests only with more test patients.",
            "",
        ]
    lines += comparison_table(summary["comparisons"], params["evaluate"])
    lines += [
        "",
        "## Correlations across models (Spearman)",
        "",
        "Unit: **model** (one point estimate per model; no resampling).",
        "",
    ]
    for c in summary["correlations"]:
        if "undefined" in c:
            lines.append(f"- {c['y']} vs {c['x']}: undefined ({c['undefined']})")
        else:
            lines.append(
                f"- {c['y']} vs {c['x']}: rho = {c['rho']:.2f}, p = {c['p_value']:.3g} (n = {c['n']})"
            )
    if "search" in summary:
        lines += _search_lines(summary, level, replicates)
    if summary.get("segmentation"):
        lines += _segmentation_lines(summary["segmentation"], level, replicates)
    if summary.get("search_seg"):
        lines += _search_seg_lines(summary["search_seg"])
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        lines.append(f"![{title}]({path})")
    gradcams = [
        f"![activation maps {name}](figures/{Path(r['gradcam']).name})"
        for name, r in summary["models"].items()
        if r.get("gradcam")
    ]
    if gradcams:
        lines += ["", *_pointing_game_lines(summary["models"]), "", *gradcams]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
