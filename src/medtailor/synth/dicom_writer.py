"""Build DICOM datasets for the synthetic images (radiographs and CT slices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medtailor.spatial import LPS_TO_RAS

SOP_CLASS = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
}
COMPRESSIONS = {"none": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}


@dataclass(frozen=True)
class PlantedIdentity:
    """Fake identifiers planted in every header, so tests can prove none of them leaks."""

    name: str
    patient_id: str
    birth_date: str

    @classmethod
    def draw(cls, rng: np.random.Generator) -> PlantedIdentity:
        token = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), 8))
        year, month, day = rng.integers(1930, 2000), rng.integers(1, 13), rng.integers(1, 29)
        return cls(
            name=f"PHIPLANTED^{token}",
            patient_id=f"PHIID{rng.integers(10**7, 10**8)}",
            birth_date=f"{year:04d}{month:02d}{day:02d}",
        )


def _base_dataset(sop_class: str, sop_instance: str, identity: PlantedIdentity) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = identity.name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.OtherPatientIDs = f"{identity.patient_id}-ALT"
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, photometric: str, compression: str) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    if compression != "none":
        # Keep the SOP Instance UID: the dataset stays a deterministic function of the seed.
        ds.compress(
            COMPRESSIONS[compression], stored.astype(np.uint16), generate_instance_uid=False
        )


def radiograph_dataset(
    stored_xy: np.ndarray,
    *,
    identity: PlantedIdentity,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str,
    monochrome1: bool,
    spacing_mm: float,
    spacing_tag: str,
    slope: float,
    intercept: float,
    study_date: str,
) -> Dataset:
    """A DX/CR radiograph; ``stored_xy`` is indexed (column, row) like every medtailor array."""
    ds = _base_dataset(SOP_CLASS[modality], sop_uid, identity)
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = study_date
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "EXTREMITY"
    ds.PresentationIntentType = "FOR PRESENTATION"
    setattr(ds, spacing_tag, [spacing_mm, spacing_mm])
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "US"
    stored = stored_xy.T  # DICOM pixel arrays are (rows, columns)
    if monochrome1:  # MONOCHROME1 shows high values dark: store the inverted signal
        stored = (2**12 - 1) - stored
    _set_pixels(ds, stored, "MONOCHROME1" if monochrome1 else "MONOCHROME2", "none")
    return ds


def ct_series_datasets(
    hu_xyz: np.ndarray,
    affine_ras: np.ndarray,
    *,
    identity: PlantedIdentity,
    study_uid: str,
    series_uid: str,
    sop_uids: Sequence[str],
    compression: str,
    study_date: str,
) -> list[Dataset]:
    """One CT dataset per slice of ``hu_xyz`` (column, row, slice), placed by ``affine_ras``."""
    lps = np.linalg.inv(LPS_TO_RAS) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    datasets = []
    for k, sop_uid in enumerate(sop_uids):
        ds = _base_dataset(SOP_CLASS["CT"], sop_uid, identity)
        ds.Modality = "CT"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyDate = study_date
        ds.SeriesNumber = 2
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]
        ds.SliceThickness = round(float(spacing[2]), 6)
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.RescaleType = "HU"
        stored = (hu_xyz[:, :, k].astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
        _set_pixels(ds, stored.T, "MONOCHROME2", compression)
        datasets.append(ds)
    return datasets


def write_dataset(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
