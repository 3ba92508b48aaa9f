"""``medtailor detector-cv-fold`` and ``medtailor detector-cv``: the built-in detector's
recipe judged on every patient.

The detector's defaults were chosen on one validation split, and a test split of a few
dozen lesions cannot say much about it. With ``detector.cross_validation_folds`` k >= 3
the patients of the whole set (every split) are dealt into k folds by the split key's
hash; fold i is scored by a detector trained on the other folds but fold i+1, which
chooses its checkpoint (the training stage's early stopping), so no image is scored by a
detector that saw its patient or chose its checkpoint on it. The detectors train exactly
as ``train-detector`` trains (params ``detector.<kind>``); the pooled out-of-fold
candidates then give lesion recall at 1, 10, 20 and 100 candidates per image, the recall
of the candidates the patch stage keeps (score above ``patches.min_score``) and the
detector's own AUFROC, each with a patient-bootstrap CI (``evaluate`` settings), and the
same per fold. Each fold is its own job (``detector-cv-fold``), pooled by ``detector-cv``.
This judges the recipe, not the checkpoint ``detect`` uses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.detect import boxes_of_images, with_world_corners
from medtailor.detect.data import KINDS, load_detection_images
from medtailor.detect.training import detector_file, train_kind
from medtailor.evaluate.detection import first_hit_ranks, froc_summary, recall_by_candidates
from medtailor.evaluate.stats import bootstrap_metric
from medtailor.imageio import atomic_output
from medtailor.runtime import MetricSink
from medtailor.split import hash_position
from medtailor.tables import BOX_CORNERS, read_boxes, read_manifest

log = logging.getLogger(__name__)
RECALL_AT = (1, 10, 20, 100)
FOLDS_FILE = "folds.csv"


def cross_validation_folds(patient_ids: list[str], folds: int, key: str) -> dict[str, int]:
    """Patients -> fold 0..folds-1: ordered by the keyed hash, then dealt in equal runs, so
    fold sizes differ by at most one patient and a patient's fold depends on the key."""
    ids = sorted(set(patient_ids))
    if folds < 3 or len(ids) < folds:
        raise ValueError(
            f"detector.cross_validation_folds = {folds}: needs at least 3 folds (one to "
            f"score, one to choose the checkpoint, the rest to train) and a patient per "
            f"fold; the set has {len(ids)} patient(s)"
        )
    order = np.argsort(hash_position(ids, f"{key}:detector-cross-validation"), kind="stable")
    fold = np.empty(len(ids), int)
    fold[order] = np.arange(len(ids)) * folds // len(ids)
    return dict(zip(ids, fold.tolist(), strict=True))


def fold_roles(fold: int, folds: int) -> tuple[int, int]:
    """(scored fold, checkpoint-choosing fold) of the detector numbered ``fold``."""
    return fold, (fold + 1) % folds


def recall_summary(
    candidates: pd.DataFrame,
    lesions: pd.DataFrame,
    patient_of_lesion: np.ndarray,
    min_score: float,
    boot: dict[str, Any],
) -> dict[str, Any]:
    """Lesion recall at each of ``RECALL_AT`` candidates per image and of the candidates
    scoring above ``min_score``, with patient-bootstrap CIs (``boot``: replicates, level,
    seed)."""
    if lesions.empty:
        return {"lesions": 0}
    kept = candidates[candidates["score"] > min_score]
    ranks = first_hit_ranks(candidates, lesions)
    found = {f"recall_at_{k}": ranks <= k for k in RECALL_AT}
    found["kept_recall"] = np.isfinite(first_hit_ranks(kept, lesions))
    summary: dict[str, Any] = {"lesions": len(lesions)}
    for name, hit in found.items():
        hit = hit.astype(float)
        interval = bootstrap_metric(
            lambda w, hit=hit: (w * hit).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12),
            patient_of_lesion,
            boot["replicates"],
            boot["level"],
            boot["seed"],
        )
        summary[name] = float(hit.mean())
        summary.update(interval.as_dict(name))
    return summary


def top_candidate_hits(candidates: pd.DataFrame, image_ids: pd.Series) -> float:
    """Share of ``image_ids`` (images with lesions) whose best-scored candidate hits one."""
    if image_ids.empty:
        return float("nan")
    best = candidates.sort_values("score", ascending=False, kind="stable").drop_duplicates(
        "image_id"
    )
    hit = best.set_index("image_id")["hits"].map(bool)
    return float(hit.reindex(image_ids.unique(), fill_value=False).mean())


def out_of_fold_inputs(
    candidates: pd.DataFrame,
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    kind: str,
    froc_cfg: dict[str, Any],
) -> dict[str, pd.DataFrame]:
    """The candidates of ``manifest``'s images with their lesion hits, the lesions and the
    images, as evaluate prepares a split for its FROC (one pseudo-split of every image)."""
    from medtailor.evaluate import detection_inputs

    studies = manifest[["image_id", "study_id"]]
    return detection_inputs(
        manifest.assign(split="cv"),
        truths,
        candidates.merge(studies, on="image_id").assign(split="cv"),
        kind,
        froc_cfg,
        "cv",
    )


def evaluate_out_of_fold(
    candidates: pd.DataFrame,
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    kind: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Recall at k, kept recall, best-candidate hits and AUFROC of one set of images
    (``manifest`` rows) from their out-of-fold ``candidates``."""
    cfg = params["evaluate"]
    boot = {
        "replicates": int(cfg["bootstrap_replicates"]),
        "level": float(cfg["confidence_level"]),
        "seed": int(params["seed"]),
    }
    inputs = out_of_fold_inputs(candidates, manifest, truths, kind, cfg["froc"])
    lesions = inputs["lesions"]
    patient_of_study = inputs["images"].drop_duplicates("study_id").set_index("study_id")
    summary = {
        "patients": int(inputs["images"]["patient_id"].nunique()),
        "images": len(inputs["images"]),
        "candidates_per_image": len(candidates) / max(len(inputs["images"]), 1),
        "kept_candidates_per_image": int(
            (candidates["score"] > params["patches"]["min_score"]).sum()
        )
        / max(len(inputs["images"]), 1),
        **recall_summary(
            inputs["candidates"],
            lesions,
            lesions["study_id"].map(patient_of_study["patient_id"]).to_numpy(),
            float(params["patches"]["min_score"]),
            boot,
        ),
    }
    with_lesions = truths.loc[truths["image_id"].isin(inputs["images"]["image_id"]), "image_id"]
    summary["top_candidate_hits"] = top_candidate_hits(inputs["candidates"], with_lesions)
    if not lesions.empty:
        froc, _ = froc_summary(
            inputs["candidates"],
            lesions,
            inputs["images"],
            "score",
            cfg["froc"],
            boot["replicates"],
            boot["level"],
            boot["seed"],
        )
        summary.update({k: froc[k] for k in ("aufroc", "aufroc_ci", "aufroc_ci_90", "luna16")})
    return summary


def recall_curve(
    candidates: pd.DataFrame,
    manifest: pd.DataFrame,
    truths: pd.DataFrame,
    kind: str,
    params: dict[str, Any],
) -> pd.DataFrame:
    """Out-of-fold lesion recall against the candidates kept per image (best first)."""
    inputs = out_of_fold_inputs(candidates, manifest, truths, kind, params["evaluate"]["froc"])
    most = int(params["detector"]["max_candidates_per_image"])
    table = recall_by_candidates(inputs["candidates"], inputs["lesions"], most)
    return table.assign(split=f"{kind}, out of fold", lesions=len(inputs["lesions"]))


def cross_validation_setup(
    resample_dir: Path, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The manifest with each image's fold, the ground-truth boxes, and the image kinds
    with a box (each gets its own detectors)."""
    folds = int(params["detector"]["cross_validation_folds"])
    manifest = read_manifest(resample_dir / "manifest.parquet")
    truths = read_boxes(resample_dir / "boxes.parquet")
    fold_of = cross_validation_folds(
        manifest["patient_id"].tolist(), folds, str(params["split"]["key"])
    )
    manifest = manifest.assign(fold=manifest["patient_id"].map(fold_of).astype(int))
    kinds = [
        k
        for k in KINDS
        if truths["image_id"].isin(manifest.loc[manifest["kind"] == k, "image_id"]).any()
    ]
    if not kinds:
        raise RuntimeError(f"{resample_dir}: no image has a ground-truth box to cross-validate on")
    return manifest, truths, kinds


def run_detector_cv_fold(
    resample_dir: Path,
    fold: int,
    out_dir: Path,
    params: dict[str, Any],
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """One fold: per image kind, the detector trained on the other folds but the next
    (which chooses its checkpoint), and its candidates on the fold's images
    (``candidates.parquet``); one job per fold, so folds train in parallel."""
    sink = sink or (lambda metrics, step: None)
    folds = int(params["detector"]["cross_validation_folds"])
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold}: detector.cross_validation_folds is {folds}")
    manifest, _, kinds = cross_validation_setup(resample_dir, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.pt"):
        stale.unlink()
    scored, chooser = fold_roles(fold, folds)
    summary: dict[str, Any] = {"fold": fold, "folds": folds}
    records = []
    for kind in kinds:
        rows = manifest[manifest["kind"] == kind]
        images = load_detection_images(resample_dir, rows, params["detector"][kind]["intensity"])
        role = rows["fold"].to_numpy()
        train = [item for item, f in zip(images, role, strict=True) if f not in (scored, chooser)]
        val = [item for item, f in zip(images, role, strict=True) if f == chooser]
        held_out = rows[role == scored]
        log.info(
            "%s fold %d: %d training, %d choosing, %d scored images",
            kind,
            fold,
            len(train),
            len(val),
            len(held_out),
        )
        summary.update(train_kind(kind, train, val, params, out_dir, sink, fold))
        records += boxes_of_images(
            detector_file(out_dir, kind, fold),
            KINDS[kind],
            resample_dir,
            held_out,
            params,
            {item.image_id: item for item in images},
        )
    frame = pd.DataFrame(records, columns=["image_id", *BOX_CORNERS, "score"])
    with atomic_output(out_dir / "candidates.parquet") as tmp:
        with_world_corners(frame, manifest).assign(fold=fold).to_parquet(tmp, index=False)
    (out_dir / "fold.json").write_text(json.dumps({"fold": fold, "folds": folds}) + "\n")
    return summary


def run_detector_cv(
    resample_dir: Path, fold_dirs: list[Path], out_dir: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """The folds' out-of-fold candidates pooled and judged: ``summary.json``, per-fold
    figures, the recall curve, ``report.md``; refuses a fold missing or from other folds."""
    from medtailor.evaluate.report import detector_recall_figure

    folds = int(params["detector"]["cross_validation_folds"])
    manifest, truths, kinds = cross_validation_setup(resample_dir, params)
    parts, found = [], []
    for fold_dir in fold_dirs:
        path, record = fold_dir / "candidates.parquet", fold_dir / "fold.json"
        if not path.is_file() or not record.is_file():
            raise FileNotFoundError(f"{fold_dir}: no candidates of a fold (run detector_cv_fold)")
        found.append(json.loads(record.read_text()))
        parts.append(pd.read_parquet(path))
    candidates = pd.concat(parts, ignore_index=True)
    expected_fold = candidates["image_id"].map(manifest.set_index("image_id")["fold"])
    dealt = sorted(r["fold"] for r in found)
    if (
        dealt != list(range(folds))
        or {r["folds"] for r in found} != {folds}
        or (expected_fold != candidates["fold"]).any()
    ):
        raise ValueError(
            f"{[str(d) for d in fold_dirs]}: these are not the candidates of folds "
            f"0-{folds - 1} as detector.cross_validation_folds and split.key deal them "
            f"(found folds {dealt}); rerun detector_cv_fold"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest[["patient_id", "fold"]].drop_duplicates().sort_values("patient_id").to_csv(
        out_dir / FOLDS_FILE, index=False
    )
    summary: dict[str, Any] = {"folds": folds}
    per_fold, curves = [], []
    for kind in kinds:
        rows = manifest[manifest["kind"] == kind]
        mine = candidates[candidates["kind"] == kind]
        pooled = evaluate_out_of_fold(mine, rows, truths, kind, params)
        summary.update({f"{kind}_{name}": value for name, value in pooled.items()})
        for fold in range(folds):
            part = rows[rows["fold"] == fold]
            chosen = mine[mine["image_id"].isin(part["image_id"])]
            per_fold.append(
                {
                    "kind": kind,
                    "fold": fold,
                    **evaluate_out_of_fold(chosen, part, truths, kind, params),
                }
            )
        curves.append(recall_curve(mine, rows, truths, kind, params))
    pd.DataFrame(per_fold).to_csv(out_dir / "per_fold.csv", index=False)
    curve = pd.concat(curves, ignore_index=True)
    curve.to_csv(out_dir / "recall_by_candidates.csv", index=False)
    figure = detector_recall_figure(curve, out_dir)
    summary = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in summary.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(
        cross_validation_report(summary, pd.DataFrame(per_fold), kinds, figure, params)
    )
    return summary


def _interval(summary: dict[str, Any], name: str) -> str:
    value, ci = summary.get(name), summary.get(f"{name}_ci")
    if value is None:
        return "undefined"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def cross_validation_report(
    summary: dict[str, Any],
    per_fold: pd.DataFrame,
    kinds: list[str],
    figure: str,
    params: dict[str, Any],
) -> str:
    """The cross-validation as Markdown: pooled out-of-fold figures with CIs, then per fold."""
    level = round(100 * float(params["evaluate"]["confidence_level"]))
    froc = params["evaluate"]["froc"]
    lines = [
        "# Detector cross-validation",
        "",
        f"{summary['folds']} patient-level folds over the whole set: each fold scored by a "
        "detector trained on the other folds but the next, which chose its checkpoint "
        f"(`detector.cross_validation_folds`). A lesion is found when a candidate's IoU with "
        f"it exceeds {froc['hit_iou']}; {level}% patient-bootstrap intervals; AUFROC "
        f"between {froc['aufroc_fppi'][0]} and {froc['aufroc_fppi'][1]} false positives per "
        "image (90% interval as the fracture NAS study reports it).",
        "",
    ]
    for kind in kinds:
        get = {k.removeprefix(f"{kind}_"): v for k, v in summary.items() if k.startswith(kind)}
        lines += [
            f"## {kind}",
            "",
            f"{get.get('patients')} patients, {get.get('images')} images, "
            f"{get.get('lesions')} lesions; {get.get('candidates_per_image', 0):.1f} "
            f"candidates per image, {get.get('kept_candidates_per_image', 0):.1f} above score "
            f"{params['patches']['min_score']} (what the patch stage keeps).",
            "",
            "| measure | out of fold |",
            "|---|---|",
            *(
                f"| lesion recall, best {k} candidate{'s' if k > 1 else ''} per image | "
                f"{_interval(get, f'recall_at_{k}')} |"
                for k in RECALL_AT
            ),
            f"| lesion recall of the kept candidates | {_interval(get, 'kept_recall')} |",
            f"| images whose best candidate hits a lesion | {get.get('top_candidate_hits', float('nan')):.3f} |",
            f"| AUFROC | {_interval(get, 'aufroc')} (90%: "
            + (
                "[{:.3f}, {:.3f}]".format(*get["aufroc_ci_90"])
                if get.get("aufroc_ci_90")
                else "undefined"
            )
            + ") |",
            "",
        ]
        part = per_fold[per_fold["kind"] == kind]
        columns = [
            "fold",
            "patients",
            "images",
            "lesions",
            *(f"recall_at_{k}" for k in RECALL_AT),
            "kept_recall",
            "aufroc",
        ]
        lines += [
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
            *(
                "| "
                + " | ".join(
                    f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                    for c in columns
                )
                + " |"
                for row in part.to_dict("records")
            ),
            "",
        ]
    lines += [f"![recall against candidates per image]({figure})", ""]
    return "\n".join(lines)
