"""DICOM reading: header triage, robust series grouping, slice ordering, decoding.

Series are grouped on more than SeriesInstanceUID (which real exports leave empty):
the key also holds the folder when the UID is missing, the series number, modality,
matrix size, orientation and pixel spacing, so stacks that cannot share a grid never
share a volume. Slices are ordered by their position along the slice normal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from medtailor.ingest.audit import Rejected
from medtailor.spatial import LPS_TO_RAS, dicom_affine_ras, planar_affine

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# Projection modalities: each file is one 2D image, never part of a volume.
PROJECTION_MODALITIES = {"DX", "CR", "MG", "RF", "XA", "IO", "PX", "RG", "DF", "DG"}
IDENTIFIER_TAGS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
]


@dataclass
class DicomFile:
    """What triage keeps of one DICOM file; raw keys stay in memory, only hashes leave."""

    path: Path
    rel: str
    modality: str
    sop_class: str
    sop_instance: str
    patient_key: str
    patient_key_source: str
    study_key: str
    series_uid: str
    series_number: str
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    spacing_source: str  # the attribute that gave pixel_spacing, or what was found instead
    transfer_syntax: str
    photometric: str
    # "single" (one 2D image), "mosaic" (Siemens: slices tiled in one image, read through
    # nibabel's wrapper) or "multiframe" (enhanced: frames with per-frame geometry).
    layout: str = "single"
    # What orders the volumes of a multi-volume series (several images per position).
    temporal_position: float | None = None
    acquisition_number: float | None = None
    b_value: float | None = None
    instance_number: float | None = None

    @property
    def is_projection(self) -> bool:
        return self.modality in PROJECTION_MODALITIES

    @property
    def folder(self) -> str:
        return str(PurePosixPath(self.rel).parent)


def _multi(ds: Dataset, keyword: str) -> list:
    value = ds.get(keyword, [])
    if value is None:
        return []
    return list(value) if isinstance(value, pydicom.multival.MultiValue | list) else [value]


def _number(ds: Dataset, keyword: str) -> float | None:
    """A numeric attribute, or None when absent or not a number."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        return None
    return numbers


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and which attribute gave it.

    PixelSpacing is calibrated to the patient; ImagerPixelSpacing is at the detector and
    is corrected by EstimatedRadiographicMagnificationFactor when the header gives one.
    """
    spacing = _floats(ds, "PixelSpacing", 2)
    if spacing and min(spacing) > 0:
        return (spacing[0], spacing[1]), "PixelSpacing"
    spacing = _floats(ds, "ImagerPixelSpacing", 2)
    if spacing and min(spacing) > 0:
        factor = ds.get("EstimatedRadiographicMagnificationFactor")
        try:
            factor = float(factor) if factor else 1.0
        except (TypeError, ValueError):
            factor = 1.0
        factor = factor if factor > 0 else 1.0
        return (spacing[0] / factor, spacing[1] / factor), "ImagerPixelSpacing"
    spacing = _floats(ds, "NominalScannedPixelSpacing", 2)
    if spacing and min(spacing) > 0:
        return (spacing[0], spacing[1]), "NominalScannedPixelSpacing"
    return None, ""


SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def spacing_found(ds: Dataset) -> str:
    """What the spacing attributes hold, for a reason: "PixelSpacing '0\\0', ..."."""
    found = []
    for tag in SPACING_TAGS:
        try:
            value = _text(ds, tag)
        except Exception:  # a malformed value: say so rather than fail
            value = "<unreadable>"
        found.append(f"{tag} '{value}'" if value else f"no {tag}")
    return ", ".join(found)


def _check_pixel_bytes(ds: Dataset, path: Path) -> None:
    """Catch truncated files at triage, before they can disturb series grouping."""
    # keep_deferred: the declared length and file offset, without reading the pixels.
    element = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(element, "length", None)
    if length is None or length == 0xFFFFFFFF:  # encapsulated: the decoder checks it
        return
    value = getattr(element, "value", None)
    tell = getattr(element, "value_tell", None)
    if value is not None:
        available = len(value)
    elif tell is not None:
        available = path.stat().st_size - tell
    else:
        return
    if available < length:
        raise Rejected(
            f"truncated file: pixel data declares {length} bytes but only {available} are present"
        )


def read_dataset(path: Path) -> Dataset:
    """The file's header (large values deferred); Rejected when pydicom cannot parse it."""
    try:
        # Header only: every value over 1 KB (pixel data above all) is left on disk, its
        # length and offset kept for the truncation check.
        return pydicom.dcmread(path, force=True, defer_size="1 KB")
    except Exception as exc:  # pydicom raises many kinds on corrupt bytes
        raise Rejected("not readable as DICOM", f"{type(exc).__name__}: {exc}") from exc


def identifiers_of(ds: Dataset) -> list[str]:
    """The identifying header values a file carries, whatever becomes of the file: a value
    that cannot even be read is skipped, never fatal."""
    found = []
    for tag in IDENTIFIER_TAGS:
        try:
            value = _text(ds, tag)
        except Exception:  # a malformed element: nothing readable to redact
            continue
        if value:
            found.append(value)
    return found


def read_dicom_header(path: Path, rel: str, ds: Dataset | None = None) -> tuple[DicomFile, Dataset]:
    """Triage one file (its dataset ``ds`` when already read); raise Rejected with the
    reason when it cannot be an image."""
    ds = read_dataset(path) if ds is None else ds
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise Rejected("DICOMDIR media index, not an image (series are found without it)")
    sop_class = _text(ds, "SOPClassUID")
    if not sop_class and "PixelData" not in ds:
        raise Rejected("not a DICOM or NIfTI file (no SOP class, no pixel data)")
    if "PixelData" not in ds:
        name = pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"
        raise Rejected(f"no pixel data: not an image ({name})")
    _check_pixel_bytes(ds, path)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise Rejected(
            f"colour image ({_text(ds, 'PhotometricInterpretation')}, "
            f"{ds.get('SamplesPerPixel')} samples/pixel): only grayscale is ingested"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise Rejected(f"NumberOfFrames {_text(ds, 'NumberOfFrames')!r} is not a number") from exc
    image_type = [str(v).upper() for v in _multi(ds, "ImageType")]
    layout = "mosaic" if "MOSAIC" in image_type else "multiframe" if frames > 1 else "single"
    if layout == "multiframe" and "PerFrameFunctionalGroupsSequence" not in ds:
        raise Rejected(
            f"multi-frame image ({frames} frames) without per-frame functional groups: "
            "the frames' geometry is unknown (only enhanced multi-frame objects are read)"
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Rejected("no Rows/Columns: image size unknown") from exc

    patient_id, name, birth = (
        _text(ds, t) for t in ("PatientID", "PatientName", "PatientBirthDate")
    )
    if patient_id:
        patient_key, patient_source = f"id:{patient_id}", "PatientID"
    elif name or birth:
        patient_key, patient_source = f"name:{name}|{birth}", "PatientName+PatientBirthDate"
    else:
        patient_key, patient_source = "", "study"
    study_uid = _text(ds, "StudyInstanceUID")
    if study_uid:
        study_key = f"uid:{study_uid}"
    else:
        parts = [_text(ds, t) for t in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber")]
        study_key = (
            "attrs:" + "|".join(parts) if any(parts) else f"folder:{PurePosixPath(rel).parent}"
        )
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    if orientation is not None:
        row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        if not (
            np.isclose(np.linalg.norm(row_dir), 1, atol=1e-2)
            and np.isclose(np.linalg.norm(col_dir), 1, atol=1e-2)
        ):
            orientation = None
    spacing, spacing_source = pixel_spacing(ds)
    position = _floats(ds, "ImagePositionPatient", 3)
    modality = _text(ds, "Modality").upper() or "OT"
    if layout == "multiframe" and modality in PROJECTION_MODALITIES:
        raise Rejected(f"multi-frame {modality} image ({frames} frames): only single frames are 2D")
    # Mosaic and multi-frame files carry their geometry elsewhere (CSA, functional groups).
    if (
        layout == "single"
        and modality not in PROJECTION_MODALITIES
        and (orientation is None or position is None)
    ):
        missing = " and ".join(
            name
            for name, value in (
                ("ImageOrientationPatient", orientation),
                ("ImagePositionPatient", position),
            )
            if value is None
        )
        raise Rejected(
            f"{modality} slice without a usable {missing}: its place in a volume is unknown "
            f"(only projection modalities, {', '.join(sorted(PROJECTION_MODALITIES))}, are "
            "ingested as 2D radiographs)"
        )
    record = DicomFile(
        path=path,
        rel=rel,
        modality=modality,
        sop_class=sop_class,
        sop_instance=_text(ds, "SOPInstanceUID"),
        patient_key=patient_key,
        patient_key_source=patient_source,
        study_key=study_key,
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=_text(ds, "SeriesNumber"),
        rows=rows,
        columns=columns,
        orientation=orientation,
        position=position,  # type: ignore[arg-type]
        pixel_spacing=spacing,
        spacing_source=spacing_source or spacing_found(ds),
        layout=layout,
        temporal_position=_number(ds, "TemporalPositionIdentifier"),
        acquisition_number=_number(ds, "AcquisitionNumber"),
        b_value=_number(ds, "DiffusionBValue"),
        instance_number=_number(ds, "InstanceNumber"),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        photometric=_text(ds, "PhotometricInterpretation"),
    )
    return record, ds


def series_key(f: DicomFile) -> tuple:
    series = f"uid:{f.series_uid}" if f.series_uid else f"folder:{f.folder}"
    orientation = tuple(np.round(f.orientation, 3)) if f.orientation else None
    spacing = tuple(np.round(f.pixel_spacing, 4)) if f.pixel_spacing else None
    return (
        f.patient_key,
        f.study_key,
        series,
        f.series_number,
        f.layout,
        f.modality,
        f.rows,
        f.columns,
        orientation,
        spacing,
    )


def group_series(
    files: list[DicomFile], on_error: Callable[[DicomFile, Exception], None]
) -> list[list[DicomFile]]:
    """Files grouped by series key; a file whose key cannot be formed goes to ``on_error``."""
    groups: dict[tuple, list[DicomFile]] = defaultdict(list)
    for f in files:
        try:
            key = series_key(f)
        except Exception as exc:  # a malformed value in one header stops only that file
            on_error(f, exc)
            continue
        groups[key].append(f)
    return [
        sorted(g, key=lambda f: f.rel)
        for _, g in sorted(groups.items(), key=lambda kv: kv[1][0].rel)
    ]


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (HU for CT), MONOCHROME1 inverted; float64 (rows, cols)."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise their own types
        syntax = (
            ds.file_meta.get("TransferSyntaxUID", "unknown")
            if hasattr(ds, "file_meta")
            else "unknown"
        )
        name = pydicom.uid.UID(str(syntax)).name if syntax != "unknown" else syntax
        raise Rejected(
            f"cannot decode pixel data ({name})", f"{type(exc).__name__}: {exc}"
        ) from exc
    if stored.ndim != 2:
        raise Rejected(f"unexpected pixel array shape {stored.shape}")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16))
        if int(ds.get("PixelRepresentation", 0)) == 1:
            ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
        else:
            ends = np.array([0, 2**bits - 1])
        mapped = np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)
        values = mapped.min() + mapped.max() - values
    return values


def load_projection(
    record: DicomFile, pixels: np.ndarray, assumed_spacing_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """A 2D image indexed (column, row) from its decoded ``pixels``, its planar affine and
    where its spacing came from.

    Without a calibrated spacing (none, or ``0\\0`` as older CR writes) the image is
    rejected with what was found, unless ``assumed_spacing_mm`` is given (then "assumed").
    """
    spacing, source = record.pixel_spacing, record.spacing_source
    if spacing is None:
        if assumed_spacing_mm is None:
            raise Rejected(
                f"no usable pixel spacing ({record.spacing_source}): cannot place the image "
                "in mm; set ingest.assumed_radiograph_spacing_mm to accept such images"
            )
        spacing, source = (float(assumed_spacing_mm),) * 2, "assumed"
    row_spacing, col_spacing = spacing
    return pixels.T, planar_affine((col_spacing, row_spacing)), source


def decode_file(path: Path) -> np.ndarray | Exception:
    """``decode_pixels`` of one file, the failure returned rather than raised (it runs in
    worker processes and must come back whole)."""
    try:
        return decode_pixels(pydicom.dcmread(path, force=True))
    except Exception as exc:
        return exc


class Decoder:
    """Decodes pixel data of many files, in ``workers`` processes when above 1."""

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(workers) if workers > 1 else None

    def decode(self, paths: list[Path]) -> list[np.ndarray | Exception]:
        if self.pool is None:
            return [decode_file(path) for path in paths]
        return list(self.pool.map(decode_file, paths, chunksize=max(1, len(paths) // 32)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def decoded(result: np.ndarray | Exception) -> np.ndarray:
    """The array of a ``Decoder`` result, or its failure raised."""
    if isinstance(result, Exception):
        raise result
    return result


VOLUME_ORDER = (
    ("TemporalPositionIdentifier", "temporal_position"),
    ("AcquisitionNumber", "acquisition_number"),
    ("DiffusionBValue", "b_value"),
    ("InstanceNumber", "instance_number"),
)


def volume_order(f: DicomFile) -> tuple:
    """Sort key of the images at one position (or of the files of a series read volume by
    volume): temporal position, acquisition number, b-value, instance number, path."""
    return (
        *(v if (v := getattr(f, field)) is not None else -1.0 for _, field in VOLUME_ORDER),
        f.rel,
    )


def what_varies(files: list[DicomFile]) -> str:
    """The first attribute of VOLUME_ORDER whose values differ among ``files``."""
    for keyword, field in VOLUME_ORDER:
        if len({getattr(f, field) for f in files}) > 1:
            return keyword
    return "file order"


@dataclass
class SliceStack:
    """A checked, ordered series: its volumes (one list of slices each, one volume unless
    several images share every position), the files dropped as duplicates, what varies
    between volumes, and the geometry."""

    volumes: list[list[DicomFile]]
    duplicates: list[tuple[DicomFile, DicomFile]]
    affine: np.ndarray
    varies: str = ""

    @property
    def slices(self) -> list[DicomFile]:
        return [f for volume in self.volumes for f in volume]


def even_step(positions: np.ndarray, tolerance: float) -> np.ndarray:
    """The mean step between sorted slice positions (LPS mm); Rejected when one step
    deviates from it by more than ``tolerance`` (a gap, or uneven spacing)."""
    steps = np.diff(positions, axis=0)
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    deviation = np.linalg.norm(steps - step, axis=1) / np.linalg.norm(step)
    if deviation.max() > tolerance:
        worst = int(np.argmax(deviation))
        sizes = np.linalg.norm(steps, axis=1)
        raise Rejected(
            f"gap or uneven slice spacing: slices are {np.median(sizes):.3g} mm apart but "
            f"{sizes[worst]:.3g} mm between sorted slices {worst} and {worst + 1} "
            f"(tolerance {tolerance:.0%})"
        )
    return step


def order_slices(series: list[DicomFile], min_slices: int, tolerance: float) -> SliceStack:
    """Sort along the normal, split a multi-volume series (the same number of images at
    every position: fMRI, DWI, field maps) into its volumes, drop exact duplicates, and
    check the stack is gap-free."""
    first = series[0]
    if first.pixel_spacing is None:
        raise Rejected("series has no PixelSpacing: cannot place its slices in mm")
    row_dir, col_dir = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    depth = np.array([f.position for f in series], float) @ normal
    order = np.argsort(depth, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(depth[i] - depth[groups[-1][0]]) < 1e-3:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    duplicates, varies = [], ""
    if len(groups) > 1 and len({len(g) for g in groups}) == 1 and len(groups[0]) > 1:
        at_position = [sorted((series[i] for i in g), key=volume_order) for g in groups]
        volumes = [list(volume) for volume in zip(*at_position, strict=True)]
        varies = what_varies(at_position[0])
    else:
        volumes = [[series[g[0]] for g in groups]]
        duplicates = [(series[i], series[g[0]]) for g in groups for i in g[1:]]
    slices = volumes[0]
    positions = np.array([f.position for f in slices], float)
    if len(slices) < min_slices:
        raise Rejected(
            f"series of {len(slices)} slice(s) at distinct positions: "
            f"a volume needs at least {min_slices}"
        )
    step = even_step(positions, tolerance)
    affine = dicom_affine_ras(positions[0], first.orientation, first.pixel_spacing, step)
    return SliceStack(volumes=volumes, duplicates=duplicates, affine=affine, varies=varies)


def load_wrapped_volumes(path: Path, tolerance: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 3D volumes (indexed column, row, slice) and RAS affines of a Siemens mosaic
    (through nibabel's wrapper: tiles and the CSA slice normal) or an enhanced multi-frame
    file (from its per-frame functional groups, slice spacing checked to ``tolerance``)."""
    from nibabel.nicom import dicomwrappers

    ds = pydicom.dcmread(path, force=True)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return load_enhanced_volumes(ds, tolerance)
    try:
        wrapper = dicomwrappers.wrapper_from_data(ds)
        if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
            raise Rejected("neither a mosaic nor an enhanced multi-frame image")
        data = np.asarray(wrapper.get_data(), np.float64)
        lps = np.asarray(wrapper.affine, float)
    except Rejected:
        raise
    except Exception as exc:  # nibabel raises its own kinds on inconsistent mosaics
        raise Rejected(
            "cannot read the volume of this mosaic", f"{type(exc).__name__}: {exc}"
        ) from exc
    # nibabel indexes (row, column, slice); the pipeline (column, row, slice).
    swap = np.eye(4)[:, [1, 0, 2, 3]]
    return [(data.transpose(1, 0, 2), LPS_TO_RAS @ lps @ swap)]


IN_STACK_POSITION = 0x00209057


def _frame_group(frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    """A functional group of one frame: its own, else the shared one."""
    for source in (frame, shared):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def load_enhanced_volumes(ds: Dataset, tolerance: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Volumes of an enhanced multi-frame object from its per-frame functional groups.

    Frames belong to one volume when their DimensionIndexValues agree on every dimension
    but the in-stack position (frame sets such as a field map's magnitude and phase are
    told apart by the others); each volume is ordered along its slice normal, checked
    for gaps, and rescaled frame by frame (RescaleSlope/Intercept of each frame: Philips
    scales each frame set differently)."""
    frames = ds.PerFrameFunctionalGroupsSequence
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    )
    pointers = [int(d.DimensionIndexPointer) for d in ds.get("DimensionIndexSequence", [])]
    try:
        stored = np.asarray(ds.pixel_array, np.float64).reshape(len(frames), ds.Rows, ds.Columns)
    except Exception as exc:
        raise Rejected("cannot decode the frames", f"{type(exc).__name__}: {exc}") from exc
    sets: dict[tuple, list[tuple[np.ndarray, tuple, tuple, tuple, float]]] = {}
    for k, frame in enumerate(frames):
        position = _frame_group(frame, shared, "PlanePositionSequence")
        orientation = _frame_group(frame, shared, "PlaneOrientationSequence")
        measures = _frame_group(frame, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise Rejected(f"frame {k + 1} has no position, orientation or pixel spacing")
        content = _frame_group(frame, None, "FrameContentSequence")
        index = list(content.get("DimensionIndexValues", [])) if content is not None else []
        key = tuple(v for v, p in zip(index, pointers, strict=False) if p != IN_STACK_POSITION)
        transform = _frame_group(frame, shared, "PixelValueTransformationSequence")
        slope = float(transform.get("RescaleSlope", 1) or 1) if transform is not None else 1.0
        intercept = (
            float(transform.get("RescaleIntercept", 0) or 0) if transform is not None else 0.0
        )
        sets.setdefault(key, []).append(
            (
                stored[k] * slope + intercept,
                tuple(float(v) for v in position.ImagePositionPatient),
                tuple(float(v) for v in orientation.ImageOrientationPatient),
                tuple(float(v) for v in measures.PixelSpacing),
                float(measures.get("SliceThickness", 1) or 1),
            )
        )
    volumes = []
    for key in sorted(sets):
        planes = sets[key]
        orientation, spacing, thickness = planes[0][2], planes[0][3], planes[0][4]
        normal = np.cross(orientation[:3], orientation[3:])
        planes.sort(key=lambda plane: float(np.dot(plane[1], normal)))
        positions = np.array([plane[1] for plane in planes])
        try:
            step = even_step(positions, tolerance) if len(planes) > 1 else normal * thickness
        except Rejected as exc:
            raise Rejected(f"frame set {key}: {exc.reason}") from exc
        array = np.stack([plane[0].T for plane in planes], axis=-1)
        volumes.append((array, dicom_affine_ras(positions[0], orientation, spacing, step)))
    return volumes
