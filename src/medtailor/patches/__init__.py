"""``medtailor patches``: the patch-classification dataset every training stage reads.

With ``patches.source: whole_image`` every image of the classes table is one sample
instead (``whole_image``), in the same store, so training and evaluation are unchanged.

Candidates with score > ``patches.min_score`` are labelled by their best IoU with the
ground truth of their image (see ``labelling``), cropped with context, resampled to the
fixed patch size, scaled to [0, 1] like the detector input, and stored per kind and split
in memory-mapped arrays with an index table (see ``store``). The split is the one
computed once by the split stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medtailor.figures import pyplot, save_figure
from medtailor.imageio import first_channel, load_nifti
from medtailor.intensity import intensity_bounds, scale_intensity
from medtailor.patches.crops import context_region, extract_patch
from medtailor.patches.labelling import best_match, clip_boxes, iou_matrix, label_by_iou
from medtailor.patches.store import (
    FINGERPRINT,
    INDEX,
    PatchWriter,
    write_fingerprint,
    write_task,
)
from medtailor.patches.whole_image import class_counts, whole_image_index
from medtailor.split import SPLITS, manifest_with_split
from medtailor.tables import BOX_CORNERS, box_columns, read_boxes, read_classes
from medtailor.targets import CANDIDATE_TASK, classification_task

INDEX_COLUMNS = [
    "patch_id",
    "image_id",
    "study_id",
    "patient_id",
    "kind",
    "split",
    "row",
    "x0",
    "y0",
    "z0",
    "x1",
    "y1",
    "z1",
    "score",
    "best_iou",
    "gt_id",
    "label",
]
log = logging.getLogger(__name__)


def label_candidates(
    manifest: pd.DataFrame, candidates: pd.DataFrame, truths: pd.DataFrame, cfg: dict[str, Any]
) -> pd.DataFrame:
    """The patch index: every kept candidate with its best IoU, matched box, label and row."""
    kept = candidates[candidates["score"] > float(cfg["min_score"])]
    meta = manifest[["image_id", "study_id", "patient_id", "split", "ndim", "shape"]]
    index = kept.rename(columns={"candidate_id": "patch_id"}).merge(
        meta, on="image_id", how="inner"
    )
    best = np.zeros(len(index))
    gt_id = np.full(len(index), "", dtype=object)
    corners = index[BOX_CORNERS].to_numpy(float)
    ndims = index["ndim"].to_numpy(int)
    shapes = index["shape"].to_numpy()
    truth_groups = {image_id: group for image_id, group in truths.groupby("image_id")}
    empty = pd.DataFrame(columns=truths.columns)
    for image_id, rows in index.groupby("image_id", sort=False).indices.items():
        ndim, shape = int(ndims[rows[0]]), tuple(int(v) for v in shapes[rows[0]])
        axes = [0, 1, 3, 4] if ndim == 2 else [0, 1, 2, 3, 4, 5]
        gt = truth_groups.get(image_id, empty)
        boxes = clip_boxes(corners[np.ix_(rows, axes)], shape)
        image_best, match = best_match(
            boxes, clip_boxes(gt[box_columns(ndim)].to_numpy(float), shape)
        )
        best[rows] = image_best
        ids = gt["box_id"].to_numpy()
        gt_id[rows] = [ids[i] if i >= 0 else "" for i in match]
    index["best_iou"], index["gt_id"] = best, gt_id
    index["label"] = np.int8(0)
    for split, rows in index.groupby("split").indices.items():
        index.iloc[rows, index.columns.get_loc("label")] = label_by_iou(
            best[rows], split, float(cfg["positive_iou"]), float(cfg["negative_iou"])
        )
    index = index.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    index["row"] = index.groupby(["kind", "split"]).cumcount()
    return index.reindex(columns=INDEX_COLUMNS).reset_index(drop=True)


class PatchesInputError(ValueError):
    """The inputs cannot make the patch store asked for."""


def plot_names(cfg: dict[str, Any]) -> tuple[str, str]:
    """The stage's figure and its table: the IoU histogram of detector candidates, or the
    samples per class of whole images."""
    stem = "patches_classes" if cfg["source"] == "whole_image" else "patches_iou"
    return f"{stem}.png", f"{stem}.csv"


def run_patches(
    resample_dir: Path,
    split_csv: Path,
    candidates_file: Path | None,
    out_dir: Path,
    params: dict[str, Any],
    plots_dir: Path | None = None,
    trained_task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the patch store: labelled detector candidates (``patches.source: candidates``)
    or one sample per image of the classes table (``whole_image``). With ``trained_task``
    (a trained whole-image model's task: ``predict``), every image is a sample and its
    labels are unknown."""
    cfg = params["patches"]
    started = time.perf_counter()
    manifest = manifest_with_split(resample_dir, split_csv)
    truths = read_boxes(resample_dir / "boxes.parquet")
    if cfg["source"] == "whole_image" and trained_task is not None:
        task = {**trained_task, "samples": "whole_image"}
        kinds = set(cfg["intensity"])
        index = whole_image_index(manifest[manifest["kind"].isin(kinds)], None, task)
        context, square, padding = 0.0, True, "zero"
    elif cfg["source"] == "whole_image":
        classes = read_classes(resample_dir)
        if classes is None or classes.empty:
            raise PatchesInputError(
                f"{resample_dir}: patches.source is whole_image but the data has no classes "
                "table (ingest.annotations.classes, e.g. annotations/classes.csv with source,label)"
            )
        task = {**classification_task(classes), "samples": "whole_image"}
        index = whole_image_index(manifest, classes, task)
        # A whole image is letterboxed into its square: zeros, as documented, since the
        # padding is the same for every image and repeating its border would smear it.
        context, square, padding = 0.0, True, "zero"
    else:
        if candidates_file is None:
            raise PatchesInputError("patches.source is candidates: give --candidates")
        candidates = pd.read_parquet(candidates_file)
        task = CANDIDATE_TASK
        index = label_candidates(manifest, candidates, truths, cfg)
        context, square = float(cfg["context"]), bool(cfg["square"])
        padding = str(cfg.get("padding", "edge"))

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.npy"), out_dir / FINGERPRINT]:
        stale.unlink(missing_ok=True)
    sizes = {"radiograph": tuple(cfg["size_2d"]), "volume": tuple(cfg["size_3d"])}
    # Candidate patches are scaled as the detector saw them; whole images by their own block.
    scaling = (
        cfg["intensity"]
        if cfg["source"] == "whole_image"
        else {kind: params["detector"][kind]["intensity"] for kind in sizes}
    )
    missing = set(index["kind"]) - set(scaling)
    if missing:
        raise PatchesInputError(
            f"patches.intensity has no entry for the {sorted(missing)} images of the classes "
            "table: add one ({mode: percentile, range: [1.0, 99.0]} for radiographs)"
        )
    counts = index.groupby(["kind", "split"]).size().to_dict()
    writer = PatchWriter(out_dir, counts, sizes, cfg["dtype"])
    by_id = manifest.set_index("image_id")
    for image_id, group in tqdm(index.groupby("image_id"), desc="patches", unit="image"):
        row = by_id.loc[image_id]
        ndim, kind = int(row["ndim"]), row["kind"]
        image, _ = load_nifti(resample_dir / row["image_path"])
        image = first_channel(image, ndim)
        intensity = scaling[kind]
        scaled = scale_intensity(image, intensity_bounds(image, intensity))
        for _, patch in group.iterrows():
            box = patch[box_columns(ndim)].to_numpy(float)
            low, high = context_region(box, context, square)
            writer.write(
                kind,
                patch["split"],
                int(patch["row"]),
                extract_patch(scaled, low, high, sizes[kind], padding),
            )
    writer.close()
    index.to_parquet(out_dir / INDEX, index=False)
    write_task(out_dir, task)
    write_fingerprint(out_dir)

    if cfg["source"] == "whole_image":
        table = class_counts(index, task)
        summary = summarise_whole_images(index, manifest, task, table)
    else:
        table = None
        summary = summarise(index, candidates, manifest, truths, cfg)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if plots_dir is not None:
        if table is None:
            write_iou_histogram(index, plots_dir)
        else:
            write_class_counts(table, task, plots_dir)
    return summary


def summarise_whole_images(
    index: pd.DataFrame, manifest: pd.DataFrame, task: dict[str, Any], table: pd.DataFrame
) -> dict[str, Any]:
    """Samples per split and class; images left out for want of a classes row."""
    summary: dict[str, Any] = {
        "patches": len(index),
        "task": task["task"],
        "classes": len(task["classes"]),
        "images_without_class": int((~manifest["image_id"].isin(index["image_id"])).sum()),
    }
    if summary["images_without_class"]:
        log.warning(
            "%d image(s) have no row in the classes table and are left out",
            summary["images_without_class"],
        )
    for split in SPLITS:
        summary[f"{split}_images"] = int((index["split"] == split).sum())
        for row in table.itertuples(index=False):
            summary[f"{split}_{row[0]}"] = int(getattr(row, split))
    return summary


def write_class_counts(table: pd.DataFrame, task: dict[str, Any], plots_dir: Path) -> None:
    plt = pyplot()
    plots_dir.mkdir(parents=True, exist_ok=True)
    png, csv = plot_names({"source": "whole_image"})
    table.to_csv(plots_dir / csv, index=False)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(table) + 2), 3.5))
    positions = np.arange(len(table))
    for k, split in enumerate(SPLITS):
        ax.bar(positions + (k - 1) * 0.27, table[split], width=0.27, label=split)
    ax.set_xticks(positions, table["class"], rotation=30, ha="right")
    what = "images with the finding" if task["task"] == "multilabel" else "images"
    ax.set_ylabel(what)
    ax.legend()
    save_figure(fig, plots_dir / png)


def lesions_found(
    index: pd.DataFrame, truths: pd.DataFrame, manifest: pd.DataFrame, iou: float
) -> set[str]:
    """Ground-truth boxes overlapped (IoU > ``iou``) by at least one kept candidate."""
    found: set[str] = set()
    shapes = manifest.set_index("image_id")["shape"]
    candidates = dict(tuple(index.groupby("image_id")))
    for image_id, gt in truths.groupby("image_id"):
        own = candidates.get(image_id)
        if own is None:
            continue
        shape = tuple(int(v) for v in shapes[image_id])
        columns = box_columns(len(shape))
        overlap = iou_matrix(
            clip_boxes(gt[columns].to_numpy(float), shape),
            clip_boxes(own[columns].to_numpy(float), shape),
        )
        found.update(gt["box_id"].to_numpy()[overlap.max(axis=1) > iou])
    return found


def summarise(
    index: pd.DataFrame,
    candidates: pd.DataFrame,
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    cfg: dict,
) -> dict[str, Any]:
    """Counts per kind, split and label, and the detector's lesion recall per split and kind
    (lesions with a kept candidate of IoU > positive_iou)."""
    summary: dict[str, Any] = {"patches": len(index)}
    for kind, count in index["kind"].value_counts().sort_index().items():
        summary[f"{kind}_patches"] = int(count)
    names = {1: "positive", 0: "negative", -1: "ignored"}
    found = lesions_found(index, truths, manifest, float(cfg["positive_iou"]))
    located = truths.merge(manifest[["image_id", "split", "kind"]], on="image_id")
    for split in SPLITS:
        chosen = index[index["split"] == split]
        for value, name in names.items():
            summary[f"{split}_{name}"] = int((chosen["label"] == value).sum())
        lesions = located[located["split"] == split]
        summary[f"{split}_lesions"] = len(lesions)
        summary[f"{split}_recall"] = _recall(lesions, found)
        for kind, group in lesions.groupby("kind"):
            summary[f"{split}_{kind}_recall"] = _recall(group, found)
    return summary


def _recall(lesions: pd.DataFrame, found: set[str]) -> float:
    return round(float(lesions["box_id"].isin(found).mean()), 4) if len(lesions) else float("nan")


def write_iou_histogram(index: pd.DataFrame, plots_dir: Path) -> None:
    plt = pyplot()
    plots_dir.mkdir(parents=True, exist_ok=True)
    edges = np.linspace(0, 1, 21)
    table = pd.DataFrame({"iou_low": edges[:-1], "iou_high": edges[1:]})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for split in SPLITS:
        values = index.loc[index["split"] == split, "best_iou"].to_numpy(float)
        table[split] = np.histogram(values, edges)[0]
        ax.hist(values, edges, histtype="step", label=split)
    png, csv = plot_names({"source": "candidates"})
    table.to_csv(plots_dir / csv, index=False)
    ax.set_xlabel("best IoU with a ground-truth box")
    ax.set_ylabel("candidates")
    ax.set_yscale("symlog")
    ax.legend()
    save_figure(fig, plots_dir / png)
