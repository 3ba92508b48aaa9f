"""The public datasets of the examples in the product's input layout: the images linked
(never copied) under ``raw/``, and the annotation tables a user would write
(docs/contracts.md). ``limit`` keeps that many patients (chosen by name order, for the
tests' small subsets)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _link(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve())


def _write(raw: Path, name: str, rows: list[dict]) -> None:
    (raw / "annotations").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(raw / "annotations" / name, index=False)


def fracture_patient(name: str) -> str:
    """Roboflow's augmented copies of one radiograph share the name before ``.rf.``: one
    patient, who must never straddle a split."""
    return name.split(".rf.")[0]


def fracture_patients(source: Path) -> dict[str, list[Path]]:
    """The label files with boxes, by patient."""
    labelled = sorted(p for p in (source / "labels").glob("*.txt") if p.read_text().strip())
    by_patient: dict[str, list[Path]] = {}
    for label in labelled:
        by_patient.setdefault(fracture_patient(label.stem), []).append(label)
    return by_patient


def fracture_raw(
    source: Path,
    raw: Path,
    limit: int | None = None,
    patients: list[str] | None = None,
    copies: int | None = None,
) -> dict[str, int]:
    """Roboflow's bone-fracture set (JPEGs, YOLO labels normalised to each image's size):
    the labelled images of ``patients`` (default: all, or the first ``limit``),
    ``subjects.csv`` (patient: the source radiograph) and ``boxes.csv`` (pixel edges; the
    labelling class, angle, fracture, line or messed-up angle, + 1 as ``class_id``: every
    one marks a fracture). ``copies`` keeps that many of Roboflow's augmented copies of
    each source radiograph (by name; default all): the copies are one radiograph flipped,
    rotated by up to 7 degrees (Roboflow's README), as the detector's own augmentation does."""
    from PIL import Image

    by_patient = fracture_patients(source)
    chosen = patients if patients is not None else sorted(by_patient)[: limit or None]
    subjects, boxes = [], []
    for patient in chosen:
        labelled = [
            (label, source / "images" / f"{label.stem}.jpg") for label in by_patient[patient]
        ]
        for label, image in [(lb, im) for lb, im in labelled if im.is_file()][: copies or None]:
            rel = f"images/{image.name}"
            _link(raw / rel, image)
            subjects.append({"source": rel, "patient": patient, "study": label.stem})
            with Image.open(image) as opened:
                width, height = opened.size
            for line in label.read_text().splitlines():
                if not line.strip():
                    continue
                cls, cx, cy, w, h = (float(v) for v in line.split())
                boxes.append(
                    {
                        "source": rel,
                        "x0": (cx - w / 2) * width,
                        "y0": (cy - h / 2) * height,
                        "x1": (cx + w / 2) * width,
                        "y1": (cy + h / 2) * height,
                        "class_id": int(cls) + 1,
                    }
                )
    _write(raw, "subjects.csv", subjects)
    _write(raw, "boxes.csv", boxes)
    return {"patients": len(chosen), "images": len(subjects), "boxes": len(boxes)}


def busi_raw(
    source: Path, raw: Path, limit: int | None = None, classes: str = "three"
) -> dict[str, int]:
    """BUSI's class folders (benign, malignant, normal): the PNGs and ``classes.csv``
    (``three``: the folder's class; ``binary``: 1 malignant, 0 benign or normal). The copy
    has no patient identifiers: every image is its own patient (``ingest.patient_from:
    file`` in the example), which slightly overstates independence (about 20 near-duplicate
    pairs are the same patient imaged twice)."""
    rows = []
    for folder in ("benign", "malignant", "normal"):
        images = sorted((source / folder).glob("*.png"))
        for image in images[:limit] if limit else images:
            rel = f"{folder}/{image.name}"
            _link(raw / rel, image)
            label = folder if classes == "three" else int(folder == "malignant")
            rows.append({"source": rel, "label": label})
    _write(raw, "classes.csv", rows)
    return {"patients": len(rows), "images": len(rows)}


def lidc_raw(source: Path, raw: Path, limit: int | None = None) -> dict[str, int]:
    """LIDC-IDRI nodule cubes (50 mm at 1 mm, MetaImage, with their masks): each cube and
    ``labels.csv`` (its mask), ``subjects.csv`` (patient and study: the scan's series UID,
    so the nodules of one scan stay in one split)."""
    folder = source / "nodule_patches"
    cubes = sorted(folder.glob("*_dcm_*.mha"))
    scans = sorted({cube.name.split("_dcm_")[0] for cube in cubes})
    chosen = set(scans[:limit] if limit else scans)
    subjects, labels = [], []
    for cube in cubes:
        scan, k = cube.name.removesuffix(".mha").split("_dcm_")
        mask = folder / f"{scan}_seg_{k}.mha"
        if scan not in chosen or not mask.is_file():
            continue
        rel, rel_mask = f"volumes/{cube.name}", f"masks/{mask.name}"
        _link(raw / rel, cube)
        _link(raw / rel_mask, mask)
        subjects.append({"source": rel, "patient": scan, "study": scan})
        labels.append({"source": rel, "label": rel_mask})
    _write(raw, "subjects.csv", subjects)
    _write(raw, "labels.csv", labels)
    return {"patients": len(chosen), "images": len(subjects)}
