"""Builders of small DICOM/NIfTI inputs for the ingest tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtailor.synth.dicom_writer import (
    PlantedIdentity,
    ct_series_datasets,
    radiograph_dataset,
    write_dataset,
)
from medtailor.synth.phantoms import DICOM_ORIENTATIONS, render_radiograph

IDENTITY = PlantedIdentity(
    name="PHIPLANTED^TESTCASE", patient_id="PHIID99887766", birth_date="19500102"
)


def ct_volume(shape=(40, 36, 8), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, shape).astype(np.int16)


def affine_for(orientation: str, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = DICOM_ORIENTATIONS[orientation] * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def write_series(
    folder: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    series_uid: str = "",
    study_uid: str = "",
    series_number: int = 2,
    compression: str = "none",
    seed: int = 0,
) -> list[Path]:
    datasets = ct_series_datasets(
        hu,
        affine,
        identity=IDENTITY,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=[f"1.2.3.{seed}.{series_number}.{k + 1}" for k in range(hu.shape[2])],
        compression=compression,
        study_date="20240101",
    )
    paths = []
    order = np.random.default_rng(seed).permutation(len(datasets))
    for number, k in enumerate(order, start=1):
        datasets[k].SeriesNumber = series_number
        datasets[k].InstanceNumber = number
        path = folder / f"S{series_number}_{number:03d}"
        write_dataset(datasets[k], path)
        paths.append(path)
    return paths


def write_radiograph(
    path: Path,
    *,
    monochrome1: bool,
    slope: float,
    intercept: float,
    seed: int = 0,
    sop_uid: str = "",
):
    rng = np.random.default_rng(seed)
    stored, boxes = render_radiograph(rng, 96, 112, 0.2, 1)
    ds = radiograph_dataset(
        stored,
        identity=IDENTITY,
        study_uid="1.2.3.4",
        series_uid=f"1.2.3.4.{seed}",
        sop_uid=sop_uid or f"1.2.3.4.{seed}.{int(monochrome1)}",
        modality="DX",
        monochrome1=monochrome1,
        spacing_mm=0.2,
        spacing_tag="ImagerPixelSpacing",
        slope=slope,
        intercept=intercept,
        study_date="20240101",
    )
    write_dataset(ds, path)
    return stored, boxes, ds
