"""``medtailor synth``: a deterministic synthetic dataset in the layout users bring.

Layout written under the output folder (documented in docs/synthetic_dataset.md):

    dicom/caseNNN/xr_studyS/...          DX/CR radiographs, one file each
    dicom/caseNNN/ct/...                 CT series, one file per slice (some without extension)
    nifti/caseNNN_ct.nii.gz              CT volumes as NIfTI
    annotations/boxes.csv                ground-truth boxes (source, x0..z1, class_id)
    annotations/labels.csv               label map of each volume (source, label)
    annotations/labels/*.nii.gz          the label maps (1 lesion, 2 bone)
    annotations/subjects.csv             patient/study of each NIfTI file
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from medtailor.imageio import save_nifti
from medtailor.synth.dicom_writer import (
    PlantedIdentity,
    ct_series_datasets,
    radiograph_dataset,
    write_dataset,
)
from medtailor.synth.phantoms import (
    DICOM_ORIENTATIONS,
    NIFTI_ORIENTATIONS,
    Box,
    render_radiograph,
    render_volume,
    volume_affine,
)

BOX_HEADER = ["source", "x0", "y0", "z0", "x1", "y1", "z1", "class_id"]
SERIES_COMPRESSIONS = ["j2k", "rle", "none"]


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(seed), *map(str, parts)]))


def _box_row(source: str, box: Box) -> list[Any]:
    z0 = "" if box.z0 is None else box.z0
    z1 = "" if box.z1 is None else box.z1
    return [source, box.x0, box.y0, z0, box.x1, box.y1, z1, 1]


def _flip_axis(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with ``axis`` reversed (physically identical)."""
    flip = np.eye(4)
    flip[axis, axis] = -1
    flip[axis, 3] = array.shape[axis] - 1
    return np.flip(array, axis=axis).copy(), affine @ flip


def generate_dataset(params: dict[str, Any], out_dir: Path) -> dict[str, int]:
    """Write the synthetic dataset for ``params`` (the whole params.yaml) into ``out_dir``."""
    cfg, seed = params["synth"], int(params["seed"])
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes: list[list[Any]] = []
    labels: list[list[str]] = []
    subjects: list[list[str]] = []
    counts = {"patients": 0, "radiographs": 0, "dicom_series": 0, "nifti_volumes": 0, "boxes": 0}

    n_patients = int(cfg["n_patients"])
    n_nifti = round(n_patients * float(cfg["volume"]["nifti_fraction"]))
    nifti_patients = set(rng.permutation(n_patients)[:n_nifti].tolist())
    xr, vol = cfg["radiograph"], cfg["volume"]

    for p in tqdm(range(n_patients), desc="synth patients", unit="patient"):
        identity = PlantedIdentity.draw(rng)
        case = f"case{p:03d}"
        counts["patients"] += 1
        for s in range(int(cfg["radiograph_studies_per_patient"])):
            study_uid = _uid(seed, p, "xr", s)
            study_date = f"2024{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
            for i in range(int(cfg["radiographs_per_study"])):
                spacing = float(rng.uniform(*xr["pixel_spacing_mm"]))
                n_fractures = int(rng.integers(0, int(xr["max_lesions"]) + 1))
                stored, fracture_boxes = render_radiograph(
                    rng, int(xr["columns"]), int(xr["rows"]), spacing, n_fractures
                )
                modality = "DX" if rng.random() < 0.6 else "CR"
                ds = radiograph_dataset(
                    stored,
                    identity=identity,
                    study_uid=study_uid,
                    series_uid=_uid(seed, p, "xr", s, i),
                    sop_uid=_uid(seed, p, "xr", s, i, "sop"),
                    modality=modality,
                    monochrome1=bool(rng.random() < 0.5),
                    spacing_mm=round(spacing, 6),
                    spacing_tag="ImagerPixelSpacing" if modality == "DX" else "PixelSpacing",
                    slope=float(rng.choice([1.0, 0.5])),
                    intercept=float(rng.choice([0.0, -1024.0])),
                    study_date=study_date,
                )
                name = f"image{i}.dcm" if i % 2 == 0 else f"IMG{i:04d}"
                rel = f"dicom/{case}/xr_study{s}/{name}"
                write_dataset(ds, out_dir / rel)
                boxes.extend(_box_row(rel, b) for b in fracture_boxes)
                counts["radiographs"] += 1

        shape = tuple(int(v) for v in vol["shape"])
        spacing3 = tuple(float(v) for v in vol["spacing_mm"])
        n_lesions = int(rng.integers(0, int(vol["max_lesions"]) + 1))
        hu, label_map, lesion_boxes = render_volume(rng, shape, spacing3, n_lesions)
        study_uid = _uid(seed, p, "ct")
        if p in nifti_patients:
            name = str(rng.choice(sorted(NIFTI_ORIENTATIONS)))
            affine = volume_affine(rng, NIFTI_ORIENTATIONS[name], spacing3)
            rel = f"nifti/{case}_ct.nii.gz"
            save_nifti(out_dir / rel, hu, affine)
            subjects.append([rel, identity.patient_id, study_uid])
            counts["nifti_volumes"] += 1
        else:
            name = str(rng.choice(sorted(DICOM_ORIENTATIONS)))
            affine = volume_affine(rng, DICOM_ORIENTATIONS[name], spacing3)
            # Half the series carry empty UIDs, as real exports sometimes do.
            index = counts["dicom_series"]
            blank = index % 2 == 1
            series_uid = "" if blank else _uid(seed, p, "ct", "series")
            datasets = ct_series_datasets(
                hu,
                affine,
                identity=identity,
                study_uid="" if blank else study_uid,
                series_uid=series_uid,
                sop_uids=[_uid(seed, p, "ct", k) for k in range(shape[2])],
                compression=SERIES_COMPRESSIONS[index % len(SERIES_COMPRESSIONS)],
                study_date="20240601",
            )
            rel = f"dicom/{case}/ct"
            order = rng.permutation(len(datasets))  # files and InstanceNumbers out of order
            for number, k in enumerate(order, start=1):
                datasets[k].InstanceNumber = int(number)
                suffix = ".dcm" if index % 2 == 0 else ""
                write_dataset(datasets[k], out_dir / rel / f"IM{number:04d}{suffix}")
            counts["dicom_series"] += 1
        label_rel = f"annotations/labels/{case}_ct_seg.nii.gz"
        stored_labels, label_affine = label_map, affine
        if p % 2 == 0:  # stored flipped in y, physically aligned (like TotalSegmentator's LAS maps)
            stored_labels, label_affine = _flip_axis(label_map, affine, 1)
        save_nifti(out_dir / label_rel, stored_labels, label_affine)
        labels.append([rel, label_rel])
        boxes.extend(_box_row(rel, b) for b in lesion_boxes)

    counts["boxes"] = len(boxes)
    annotations = out_dir / "annotations"
    for name, header, rows in [
        ("boxes.csv", BOX_HEADER, boxes),
        ("labels.csv", ["source", "label"], labels),
        ("subjects.csv", ["source", "patient", "study"], subjects),
    ]:
        with open(annotations / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return counts
