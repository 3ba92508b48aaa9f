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


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == GZIP_MAGIC


def gunzip_into(path: Path, folder: Path) -> Path:
    """The decompressed copy of a gzip-compressed file (some archives and QA corpora store
    DICOM as ``.dcm.gz``), written into ``folder``; Rejected when it does not decompress."""
    import gzip
    import hashlib
    import shutil

    target = folder / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.dcm"
    try:
        with gzip.open(path, "rb") as source, open(target, "wb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)
    except (OSError, EOFError) as exc:
        target.unlink(missing_ok=True)
        raise Rejected("gzip-compressed file that does not decompress", str(exc)) from exc
    return target


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
    # The diffusion gradient direction (unit vector, or zeros for b = 0), when given.
    gradient: tuple[float, float, float] | None = None
    # GE's reverse-polarity EPI (pulse sequence "epi_pepolar"): its polarity mode
    # (0019,10B3), None for any other series.
    ge_pepolar_mode: float | None = None
    # Uncompressed little-endian pixel data a reader can take straight from the file:
    # (offset, dtype, bits stored, slope, intercept); None when it needs pydicom's decoders.
    native_pixels: tuple[int, str, int, float, float] | None = None

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


# Philips classic MR keeps the diffusion values in private tags of its "MR Imaging DD 001"
# and "MR Imaging DD 005" blocks (as dcm2niix reads them) when the standard ones are absent.
PHILIPS_B_VALUE = (0x2001, "Philips Imaging DD 001", 0x03)
PHILIPS_GRADIENT = [
    (0x2005, "Philips MR Imaging DD 001", element) for element in (0xB0, 0xB1, 0xB2)
]


def _private_float(ds: Dataset, group: int, creator: str, element: int) -> float | None:
    try:
        value = ds.get_private_item(group, element, creator).value
        return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


GE_ACQUISITION = (0x0019, "GEMS_ACQU_01")


def ge_pepolar_mode(ds: Dataset) -> float | None:
    """The polarity mode of a GE ``epi_pepolar`` image (private (0019,10B3): 0 forward, 1
    all reversed, 2 and 3 alternating), or None when the pulse sequence (0019,109C) is
    another; NaN when the sequence is epi_pepolar but the mode is missing."""
    try:
        sequence = str(ds.get_private_item(GE_ACQUISITION[0], 0x9C, GE_ACQUISITION[1]).value)
    except KeyError:
        return None
    if "epi_pepolar" not in sequence.lower():
        return None
    mode = _private_float(ds, *GE_ACQUISITION, 0xB3)
    return float("nan") if mode is None else mode


def diffusion_of(ds: Dataset) -> tuple[float | None, tuple[float, float, float] | None]:
    """(b-value, gradient direction) of a diffusion image: the standard attributes, or
    Philips' private ones; None where the file gives none."""
    b_value = _number(ds, "DiffusionBValue")
    if b_value is None:
        b_value = _private_float(ds, *PHILIPS_B_VALUE)
    gradient = _floats(ds, "DiffusionGradientOrientation", 3)
    if gradient is None:
        parts = [_private_float(ds, *tag) for tag in PHILIPS_GRADIENT]
        gradient = tuple(parts) if all(v is not None for v in parts) else None  # type: ignore[assignment]
    return b_value, gradient


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
    if sop_class == SEGMENTATION_STORAGE or _text(ds, "Modality").upper() == "SEG":
        raise Rejected(
            "DICOM SEG object: a segmentation of another series, not an image to train on; "
            "reading it as that series' label map is not supported: give the label map as "
            "NIfTI, MetaImage or NRRD in annotations/labels.csv"
        )
    if "VFRAME" in image_type:
        raise Rejected(
            "UIH mosaic (ImageType VFRAME: tiles whose positions are in a private group), "
            "not supported: convert the series with dcm2niix and ingest the NIfTI"
        )
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
    diffusion = diffusion_of(ds)
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
        b_value=diffusion[0],
        gradient=diffusion[1],
        ge_pepolar_mode=ge_pepolar_mode(ds),
        native_pixels=native_pixels(ds) if layout == "single" else None,
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


NATIVE_SYNTAXES = {pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian}


def native_pixels(ds: Dataset) -> tuple[int, str, int, float, float] | None:
    """Where a plain single-frame image's pixels lie in its file and how to read them, for
    the common case that needs no decoder: little-endian uncompressed, grayscale
    MONOCHROME2, 8/16/32 bits with no sign bit below the allocation's top (what pydicom
    would otherwise sign-extend; unused high bits of unsigned values are masked off, as
    pydicom does), a linear modality LUT. Reading these from the file skips
    a second parse of the header per file (many small DWI/fMRI files spent most of their
    ingest there). None for everything else, which pydicom decodes."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    element = ds._dict.get(0x7FE00010)
    offset = getattr(element, "value_tell", None)
    try:
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if (
            syntax not in NATIVE_SYNTAXES
            or offset is None
            or getattr(element, "is_undefined_length", False)
            or allocated not in (8, 16, 32)
            or (signed and stored != allocated)
            or _text(ds, "PhotometricInterpretation").upper() != "MONOCHROME2"
            or "ModalityLUTSequence" in ds
            or int(ds.Rows) * int(ds.Columns) * allocated // 8 > int(element.length)
        ):
            return None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    dtype = f"<{'i' if signed else 'u'}{allocated // 8}"
    return int(offset), dtype, stored, slope, intercept


def read_native(f: DicomFile) -> np.ndarray:
    """``decode_pixels`` of a file with ``native_pixels``: its values straight from disk."""
    offset, dtype, bits, slope, intercept = f.native_pixels  # type: ignore[misc]
    count = f.rows * f.columns
    stored = np.fromfile(f.path, dtype=dtype, count=count, offset=offset)
    if stored.size != count:
        raise Rejected(f"truncated file: {count} pixels declared, {stored.size} present")
    if dtype[1] == "u" and bits < 8 * stored.itemsize:  # overlay or junk in unused bits
        stored = stored & np.asarray((1 << bits) - 1, stored.dtype)
    return stored.reshape(f.rows, f.columns).astype(np.float64) * slope + intercept


def decode_records(decoder: Decoder, records: list[DicomFile]) -> list[np.ndarray | Exception]:
    """Decoded pixels of ``records`` in order: native ones read here, the rest by the
    decoder's workers."""
    results: list[np.ndarray | Exception | None] = [None] * len(records)
    others = []
    for k, f in enumerate(records):
        if f.native_pixels is None:
            others.append(k)
            continue
        try:
            results[k] = read_native(f)
        except Exception as exc:
            results[k] = exc
    for k, result in zip(others, decoder.decode([records[k].path for k in others]), strict=True):
        results[k] = result
    return results  # type: ignore[return-value]


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


def diffusion_label(f: DicomFile) -> tuple | None:
    """What makes a diffusion volume: its b-value and gradient direction (rounded), or None
    for an image without diffusion values."""
    if f.b_value is None and f.gradient is None:
        return None
    gradient = None if f.gradient is None else tuple(np.round(f.gradient, 4))
    return (None if f.b_value is None else round(f.b_value, 1), gradient)


def split_volumes(at_positions: list[list[DicomFile]]) -> tuple[list[list[DicomFile]], str]:
    """The volumes of a multi-volume series from its images at each position (the same
    number at every one), and what varies between them.

    A diffusion series is split by what makes its volumes, b-value and gradient direction,
    repeated labels (several b = 0 volumes) told apart by InstanceNumber, and its volumes
    come in acquisition order (InstanceNumber). Any other series sorts each position's
    images by TemporalPositionIdentifier, AcquisitionNumber and InstanceNumber, skipping an
    attribute whose values are not the same set at every position: a Philips DWI series
    that gives some images AcquisitionNumber 19 instead of 22 would otherwise move them to
    the front and mix slices of different volumes. Every volume must be consistent (one
    b-value and gradient), or the series is refused with the reason."""
    labels = {diffusion_label(f) for position in at_positions for f in position}
    if len(labels) > 1:
        volumes = _split_by_label(at_positions)
        b_values = {label[0] for label in labels if label}
        varies = "DiffusionBValue" if len(b_values) > 1 else "DiffusionGradientOrientation"
    else:
        usable = [
            field
            for keyword, field in VOLUME_ORDER
            if field != "b_value" and _same_set_everywhere(at_positions, field)
        ]

        def key(f: DicomFile) -> tuple:
            return (*(_value(f, field) for field in usable), _value(f, "instance_number"), f.rel)

        ordered = [sorted(position, key=key) for position in at_positions]
        volumes = [list(volume) for volume in zip(*ordered, strict=True)]
        varies = what_varies(ordered[0])
    for index, volume in enumerate(volumes):
        inside = {diffusion_label(f) for f in volume}
        if len(inside) > 1:
            raise Rejected(
                f"volume {index} of this multi-volume series mixes diffusion b-values or "
                f"gradient directions ({len(inside)} of them): its images cannot be "
                "ordered into consistent volumes"
            )
    return volumes, varies


def _value(f: DicomFile, field: str) -> float:
    value = getattr(f, field)
    return -1.0 if value is None else value


def _same_set_everywhere(at_positions: list[list[DicomFile]], field: str) -> bool:
    first = sorted(_value(f, field) for f in at_positions[0])
    return all(sorted(_value(f, field) for f in p) == first for p in at_positions[1:])


def _split_by_label(at_positions: list[list[DicomFile]]) -> list[list[DicomFile]]:
    """Diffusion volumes: per position, the images of each (b-value, gradient) label in
    InstanceNumber order are that label's 1st, 2nd, ... volume; volumes then follow the
    acquisition (their images' median InstanceNumber)."""
    volumes: dict[tuple, list[DicomFile]] = {}
    counts = None
    for position in at_positions:
        by_label: dict[tuple, list[DicomFile]] = {}
        for f in sorted(position, key=lambda f: (_value(f, "instance_number"), f.rel)):
            by_label.setdefault(diffusion_label(f), []).append(f)
        here = {label: len(images) for label, images in by_label.items()}
        if counts is None:
            counts = here
        elif here != counts:
            raise Rejected(
                "diffusion series with different b-values or gradient directions at "
                "different slice positions: its volumes cannot be assembled"
            )
        for label, images in by_label.items():
            for k, f in enumerate(images):
                volumes.setdefault((label, k), []).append(f)
    return sorted(
        volumes.values(), key=lambda v: float(np.median([_value(f, "instance_number") for f in v]))
    )


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


def check_slice_count(slices: int, min_slices: int) -> None:
    """The one rule for every object, classic series and multi-frame files alike."""
    if slices < min_slices:
        raise Rejected(
            f"series of {slices} slice(s) at distinct positions: "
            f"a volume needs at least {min_slices}"
        )


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
        volumes, varies = split_volumes([[series[i] for i in g] for g in groups])
    else:
        volumes = [[series[g[0]] for g in groups]]
        duplicates = [(series[i], series[g[0]]) for g in groups for i in g[1:]]
    slices = volumes[0]
    positions = np.array([f.position for f in slices], float)
    check_slice_count(len(slices), min_slices)
    step = even_step(positions, tolerance)
    affine = dicom_affine_ras(positions[0], first.orientation, first.pixel_spacing, step)
    return SliceStack(volumes=volumes, duplicates=duplicates, affine=affine, varies=varies)


# Which volumes of a GE epi_pepolar series are stored with their rows reversed, by mode:
# "fwd-rev" (3) reverses every second volume from the second, "rev-fwd" (2) from the first.
PEPOLAR_REVERSED = {
    0.0: lambda index: False,
    1.0: lambda index: True,
    2.0: lambda index: index % 2 == 0,
    3.0: lambda index: index % 2 == 1,
}


def pepolar_reversed(mode: float, volumes: int) -> list[bool]:
    """Per volume, whether GE stored its rows reversed (dcm2niix flips those volumes and
    files them as series number + 1000); Rejected for a mode it cannot know."""
    if mode not in PEPOLAR_REVERSED:
        raise Rejected(
            f"GE epi_pepolar series with polarity mode {mode!r} in (0019,10B3) (known: 0 "
            "forward, 1 reversed, 2 and 3 alternating): which volumes are mirrored front to "
            "back is unknown"
        )
    return [PEPOLAR_REVERSED[mode](index) for index in range(volumes)]


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
