"""``medtailor ingest``: raw DICOM/NIfTI -> NIfTI images, a pseudonymous manifest, an audit.

Every file under the input root is either used or listed in ``audit.csv`` with the reason;
one bad file never stops the stage, which fails only when nothing usable remains.
No patient identifier leaves this stage: IDs are salted hashes, and every text written
is redacted against the identifiers seen in the headers.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pydicom
from tqdm import tqdm

from medtailor.imageio import compact_dtype, save_nifti, staged_folder
from medtailor.ingest.annotations import Annotations, load_annotations
from medtailor.ingest.audit import Audit, Rejected, printable
from medtailor.ingest.dicom import (
    Decoder,
    DicomFile,
    check_slice_count,
    decode_records,
    decoded,
    group_series,
    gunzip_into,
    identifiers_of,
    is_gzip,
    load_projection,
    load_wrapped_volumes,
    order_slices,
    pepolar_reversed,
    read_dataset,
    read_dicom_header,
    series_key,
    volume_order,
    what_varies,
)
from medtailor.ingest.imagefiles import (
    is_detached_data,
    is_radiograph_file,
    is_volume_file,
    load_radiograph_file,
    load_volume_file,
)
from medtailor.ingest.nifti import align_label, checked_labels, is_nifti, load_nifti_checked
from medtailor.ingest.pseudonym import Pseudonymizer
from medtailor.spatial import affine_spacing, orientation_code
from medtailor.tables import CLASSES_FILE, write_boxes, write_classes, write_manifest

log = logging.getLogger(__name__)


PEPOLAR_CORRECTION = (
    "GE epi_pepolar: stored with rows reversed; flipped, filed as series number + 1000"
)


class IngestError(RuntimeError):
    """Nothing usable was found."""


def discover(
    root: Path, excluded: set[str], excluded_folders: set[str] = frozenset()
) -> list[tuple[Path, str]]:
    """Every regular file under ``root`` (sorted, hidden ones skipped) but the annotations,
    as (path, printable relative path). Symbolic links are followed, but each real folder
    and file is visited once, so a link loop or a second link to a folder reads nothing
    twice."""
    found = []
    seen_dirs, seen_files = set(), set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in seen_dirs
        )
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            rel = printable(path.relative_to(root).as_posix())
            real_file = os.path.realpath(path)
            in_excluded_folder = any(rel.startswith(f"{folder}/") for folder in excluded_folders)
            if (
                rel not in excluded
                and not in_excluded_folder
                and path.is_file()
                and real_file not in seen_files
            ):
                seen_files.add(real_file)
                found.append((path, rel))
    return found


@dataclass
class _Subject:
    patient_key: str
    patient_source: str
    study_key: str


@dataclass
class _Writer:
    """Writes accepted images with their labels and boxes, and collects manifest rows."""

    root: Path
    out: Path
    pseudo: Pseudonymizer
    annotations: Annotations
    audit: Audit
    box_table: str
    patient_from: str = "folder"
    manifest: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)
    used_sources: set[str] = field(default_factory=set)
    accepted_files: set[str] = field(default_factory=set)
    image_ids: set[str] = field(default_factory=set)
    # Each input file's 1-based row in the sorted list of input files: a key the user can
    # join results on without the file names (which may hold identifiers).
    file_rows: dict[str, int] = field(default_factory=dict)

    def emit(
        self,
        *,
        image_id: str,
        series_id: str,
        subject: _Subject,
        array: np.ndarray,
        affine: np.ndarray,
        modality: str,
        kind: str,
        source: str,
        keys: Iterable[str],
        source_format: str,
        files: list[str],
        spacing_source: str,
        transfer_syntax: str = "",
        photometric: str = "",
        volume_index: int = 0,
        varies: str = "",
        corrections: str = "",
    ) -> None:
        keys = list(dict.fromkeys(keys))
        patient_key = subject.patient_key or f"study:{subject.study_key}"
        patient_id = self.pseudo("patient", patient_key)
        study_id = self.pseudo("study", f"{patient_key}|{subject.study_key}")
        # A multi-channel volume (4D NIfTI: channels last) is a 3D image of several channels.
        channels = int(array.shape[3]) if array.ndim == 4 else 1
        ndim = min(array.ndim, 3)
        spatial_shape = tuple(int(v) for v in array.shape[:ndim])
        image_rel = f"images/{image_id}.nii.gz"
        save_nifti(self.out / image_rel, compact_dtype(array), affine)

        label_rel = ""
        label_key = next((k for k in keys if k in self.annotations.labels), None)
        if label_key is not None:
            label_rel = self._write_label(image_id, label_key, spatial_shape, affine)

        class_key = next((k for k in keys if k in self.annotations.classes), None)
        if class_key is not None:
            self.used_sources.add(f"classes:{class_key}")
            self.classes.append({"image_id": image_id, **self.annotations.classes[class_key]})

        n_boxes = 0
        for key in keys:
            for box in self.annotations.boxes.get(key, []):
                self.used_sources.add(f"boxes:{key}")
                clipped = self._check_box(box, spatial_shape, key)
                if clipped is not None:
                    n_boxes += 1
                    box_id = f"{image_id}-b{n_boxes}"
                    # One lesion may be boxed on several images of a study: a shared
                    # lesion_id (pseudonymised with the study) links them for the FROC.
                    lesion = clipped.pop("lesion_id")
                    lesion_id = self.pseudo("lesion", f"{study_id}|{lesion}") if lesion else box_id
                    self.boxes.append(
                        {"image_id": image_id, "box_id": box_id, "lesion_id": lesion_id, **clipped}
                    )
        self.manifest.append(
            {
                "image_id": image_id,
                "patient_id": patient_id,
                "study_id": study_id,
                "series_id": series_id,
                "patient_id_source": subject.patient_source,
                "modality": modality,
                "kind": kind,
                "ndim": ndim,
                "shape": list(spatial_shape),
                "channels": channels,
                "spacing": list(affine_spacing(affine, ndim)),
                "spacing_source": spacing_source,
                "volume_index": volume_index,
                "varies": varies,
                "corrections": corrections,
                "orientation": orientation_code(affine, ndim),
                "affine": [float(v) for v in np.asarray(affine).ravel()],
                "image_path": image_rel,
                "label_path": label_rel,
                "n_boxes": n_boxes,
                "source": ";".join(self.audit.redact_path(part) for part in source.split(";")),
                "source_row": min((self.file_rows.get(f, 0) for f in files), default=0),
                "source_format": source_format,
                "n_files": len(files),
                "transfer_syntax": transfer_syntax,
                "photometric": photometric,
            }
        )
        self.image_ids.add(image_id)
        self.accepted_files.update(files)  # a file holding several volumes counts once

    def _write_label(
        self, image_id: str, key: str, shape: tuple[int, ...], affine: np.ndarray
    ) -> str:
        label_file = self.annotations.labels[key]
        self.used_sources.add(f"labels:{key}")
        try:
            label, label_affine = load_label_map(self.root / label_file, label_file)
            aligned, _how = align_label(label, label_affine, shape, affine)
        except Rejected as exc:
            self.audit.reject(label_file, f"label map of {key!r} rejected: {exc}")
            return ""
        rel = f"labels/{image_id}.nii.gz"
        save_nifti(
            self.out / rel, aligned.astype(np.uint16 if aligned.max() > 255 else np.uint8), affine
        )
        return rel

    def _check_box(
        self, box: dict[str, Any], shape: tuple[int, ...], key: str
    ) -> dict[str, Any] | None:
        where = f"row {box['row']} ({key})"
        is3d = not math.isnan(box["z0"])
        if is3d != (len(shape) == 3):
            self.audit.reject(
                self.box_table,
                f"{where}: a {'3D' if is3d else '2D'} box for a {len(shape)}D image; box ignored",
            )
            return None
        clipped = dict(box)
        for axis, size in zip("xyz", shape, strict=False):
            lo, hi = max(box[f"{axis}0"], 0.0), min(box[f"{axis}1"], float(size))
            if hi <= lo:
                self.audit.reject(
                    self.box_table,
                    f"{where}: box lies outside the image (shape {tuple(shape)}); box ignored",
                )
                return None
            clipped[f"{axis}0"], clipped[f"{axis}1"] = lo, hi
        clipped.pop("row")
        return clipped


def _subject_of_dicom(f: DicomFile) -> _Subject:
    return _Subject(f.patient_key, f.patient_key_source, f.study_key)


PROJECTION_BATCH = 64


def _ingest_projections(
    batch: list[DicomFile], writer: _Writer, cfg: dict[str, Any], decoder: Decoder
) -> None:
    """Radiographs, decoded together (in the decoder's workers), then written one by one;
    a file that fails is audited alone."""
    for f, result in zip(batch, decode_records(decoder, batch), strict=True):
        try:
            _ingest_projection(f, decoded(result), writer, cfg)
        except Exception as exc:
            writer.audit.reject_error(f.rel, exc if isinstance(exc, Rejected) else _unexpected(exc))


def _ingest_projection(
    f: DicomFile, pixels: np.ndarray, writer: _Writer, cfg: dict[str, Any]
) -> None:
    image_id = writer.pseudo(
        "image", f"sop:{f.sop_instance}" if f.sop_instance else f"file:{f.rel}"
    )
    if image_id in writer.image_ids:
        raise Rejected("duplicate of an image already ingested (same SOPInstanceUID)")
    array, affine, spacing_source = load_projection(f, pixels, cfg["assumed_radiograph_spacing_mm"])
    writer.emit(
        image_id=image_id,
        series_id=writer.pseudo(
            "series", f"uid:{f.series_uid}" if f.series_uid else f"file:{f.rel}"
        ),
        subject=_subject_of_dicom(f),
        array=array,
        affine=affine,
        modality=f.modality,
        kind="radiograph",
        source=f.rel,
        keys=[f.rel],
        source_format="dicom",
        files=[f.rel],
        spacing_source=spacing_source,
        transfer_syntax=f.transfer_syntax,
        photometric=f.photometric,
    )


def _ingest_series(
    series: list[DicomFile], writer: _Writer, cfg: dict[str, Any], decoder: Decoder
) -> None:
    """A series of single-frame files: one volume, or one per image at each position."""
    stack = order_slices(series, int(cfg["min_slices"]), float(cfg["slice_spacing_tolerance"]))
    files = [f for volume in stack.volumes for f in volume] + [e for e, _ in stack.duplicates]
    planes = {
        f.rel: decoded(result).T
        for f, result in zip(files, decode_records(decoder, files), strict=True)
    }
    volumes = [
        (np.stack([planes[f.rel] for f in volume], axis=-1), stack.affine)
        for volume in stack.volumes
    ]
    for extra, original in stack.duplicates:
        if not np.array_equal(planes[extra.rel], planes[original.rel]):
            raise Rejected(
                f"two different images at one slice position ({extra.rel} and {original.rel}), "
                "and not the same number of images at every position (a multi-volume series)"
            )
        writer.audit.reject(
            extra.rel, f"duplicate slice of {original.rel} (same position and pixels); dropped"
        )
    mode = series[0].ge_pepolar_mode
    if mode is None:
        _emit_volumes(volumes, stack.volumes, series, writer, cfg, stack.varies)
        return
    # GE epi_pepolar: the reversed volumes hold their rows back to front; flipped, they
    # become a series of their own (number + 1000), as dcm2niix files them.
    reversed_ = pepolar_reversed(mode, len(volumes))
    for flipped in (False, True):
        chosen = [k for k, is_reversed in enumerate(reversed_) if is_reversed == flipped]
        if chosen:
            _emit_volumes(
                [
                    (np.flip(volumes[k][0], axis=1) if flipped else volumes[k][0], volumes[k][1])
                    for k in chosen
                ],
                [stack.volumes[k] for k in chosen],
                series,
                writer,
                cfg,
                stack.varies,
                series_offset=1000 if flipped else 0,
                corrections=PEPOLAR_CORRECTION if flipped else "",
            )


def _ingest_wrapped_series(series: list[DicomFile], writer: _Writer, cfg: dict[str, Any]) -> None:
    """Siemens mosaics or enhanced multi-frame files of one series: each file holds one or
    more volumes (read through nibabel), files ordered as volumes are."""
    files = []
    for f in sorted(series, key=volume_order):
        twin = next((g for g in files if f.sop_instance and g.sop_instance == f.sop_instance), None)
        if twin is not None:  # one object stored twice (e.g. in two transfer syntaxes)
            writer.audit.reject(f.rel, f"duplicate of {twin.rel} (same SOPInstanceUID); dropped")
        else:
            files.append(f)
    tolerance = float(cfg["slice_spacing_tolerance"])
    volumes, volume_files = [], []
    for f in files:
        for volume in load_wrapped_volumes(f.path, tolerance):
            check_slice_count(volume[0].shape[2], int(cfg["min_slices"]))
            volumes.append(volume)
            volume_files.append([f])
    varies = what_varies(files) if len(files) > 1 else ("frame set" if len(volumes) > 1 else "")
    _emit_volumes(volumes, volume_files, files, writer, cfg, varies)


def _emit_volumes(
    volumes: list[tuple[np.ndarray, np.ndarray]],
    volume_files: list[list[DicomFile]],
    series: list[DicomFile],
    writer: _Writer,
    cfg: dict[str, Any],
    varies: str,
    series_offset: int = 0,
    corrections: str = "",
) -> None:
    """Write a series' volumes (``volume_files``: the files each was read from): one image
    each (``ingest.multivolume: split``, the default, so every later stage sees 3D images)
    or one 4D image (``4d``, as dcm2niix writes). ``series_offset`` files them under the
    series number plus it (a series of their own); ``corrections`` says what ingest changed
    in them (the manifest's column)."""
    key = series_key(series[0])
    if series_offset:
        number = int(float(series[0].series_number or 0)) + series_offset
        key = (*key[:3], str(number), *key[4:])
    folders = sorted({f.folder for f in series})
    # A file at the input root is traced by its own name, not by the root folder ".".
    sources = [series[0].rel if folder == "." else folder for folder in folders]
    common: dict[str, Any] = {
        "series_id": writer.pseudo("series", repr(key)),
        "subject": _subject_of_dicom(series[0]),
        "modality": series[0].modality,
        "kind": "volume",
        "source": ";".join(sources),
        "keys": [*folders, *(f.rel for f in series)],
        "source_format": "dicom",
        "spacing_source": series[0].spacing_source,
        "transfer_syntax": series[0].transfer_syntax,
        "photometric": series[0].photometric,
        "varies": varies,
        "corrections": corrections,
    }
    if len(volumes) > 1 and cfg["multivolume"] == "4d":
        affine = volumes[0][1]
        if any(not np.allclose(a, affine, atol=1e-3) for _, a in volumes):
            raise Rejected(
                f"the {len(volumes)} volumes of this series differ in geometry: they cannot "
                "be one 4D image (use ingest.multivolume: split)"
            )
        stacked = np.stack([array for array, _ in volumes], axis=-1)
        writer.emit(
            image_id=writer.pseudo("image", f"series:{key!r}"),
            array=stacked,
            affine=affine,
            volume_index=-1,
            files=list(dict.fromkeys(f.rel for files in volume_files for f in files)),
            **common,
        )
        return
    for index, ((array, affine), files) in enumerate(zip(volumes, volume_files, strict=True)):
        name = f"series:{key!r}" if len(volumes) == 1 else f"series:{key!r}:volume{index}"
        writer.emit(
            image_id=writer.pseudo("image", name),
            array=array,
            affine=affine,
            volume_index=index,
            files=[f.rel for f in files],
            **common,
        )


def _subject_of_file(rel: str, writer: _Writer, by_folder: bool) -> _Subject:
    """Patient and study of an image file: its row in subjects.csv; else, with
    ``by_folder``, its folder (one folder per patient and study, as radiograph datasets
    ship), or the file alone."""
    patient, study = writer.annotations.subjects.get(rel, ("", ""))
    if patient:
        return _Subject(f"id:{patient}", "subjects.csv", f"uid:{study}" if study else f"file:{rel}")
    folder = str(PurePosixPath(rel).parent)
    if by_folder and writer.patient_from == "folder" and folder != ".":
        return _Subject(f"folder:{folder}", "folder", f"folder:{folder}")
    return _Subject("", "file", f"file:{rel}")


# A folder-patient with at least this many images, in a set with no more patients than
# classes and one class per patient, is a class folder, not a patient.
CLASS_FOLDER_IMAGES = 20


def class_folder_problem(manifest: list[dict], classes: list[dict]) -> str | None:
    """Why the patients of a class-folder dataset are its class folders, or None: patients
    taken from folders, one class value in every patient, no more patients than classes,
    and a patient with many images (a breast-ultrasound set's three class folders became
    three "patients", and the split put every benign image in train)."""
    folder_images = [row for row in manifest if row["patient_id_source"] == "folder"]
    if not folder_images or not classes:
        return None
    label_of = {
        row["image_id"]: tuple(sorted((k, v) for k, v in row.items() if k != "image_id"))
        for row in classes
    }
    by_patient: dict[str, list[tuple]] = {}
    for row in folder_images:
        if row["image_id"] in label_of:
            by_patient.setdefault(row["patient_id"], []).append(label_of[row["image_id"]])
    if not by_patient:
        return None
    distinct = {label for labels in by_patient.values() for label in labels}
    constant = all(len(set(labels)) == 1 for labels in by_patient.values())
    largest = max(len(labels) for labels in by_patient.values())
    if constant and len(by_patient) <= len(distinct) and largest >= CLASS_FOLDER_IMAGES:
        return (
            f"the {len(by_patient)} image folders look like class folders, not patients: every "
            f"one holds a single class, there are no more of them than classes "
            f"({len(distinct)}), and one holds {largest} images. Taken as patients, the split "
            "would put whole classes in one split. Give each image its patient in "
            "annotations/subjects.csv (columns source, patient), or set "
            "ingest.patient_from: file to make every image its own patient"
        )
    return None


def _ingest_file_image(
    rel: str,
    writer: _Writer,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    source_format: str,
    spacing_source: str,
    by_folder: bool,
    photometric: str = "",
    detached: bool = False,
) -> None:
    writer.emit(
        image_id=writer.pseudo("image", f"{source_format}:{rel}"),
        series_id=writer.pseudo("series", f"{source_format}:{rel}"),
        subject=_subject_of_file(rel, writer, by_folder),
        array=array,
        affine=affine,
        modality=source_format.upper(),
        kind="volume" if array.ndim >= 3 else "radiograph",
        source=rel,
        keys=[rel],
        source_format=source_format,
        files=[rel, f"{rel} (detached data)"] if detached else [rel],
        spacing_source=spacing_source,
        photometric=photometric,
    )


def _ingest_nifti(rel: str, writer: _Writer, cfg: dict[str, Any]) -> None:
    array, affine = load_nifti_checked(writer.root / rel)
    _ingest_file_image(
        rel,
        writer,
        array,
        affine,
        source_format="nifti",
        spacing_source="NIfTI affine",
        by_folder=False,
    )


def _ingest_image_file(rel: str, writer: _Writer, cfg: dict[str, Any]) -> None:
    array, affine, note = load_radiograph_file(
        writer.root / rel, cfg["assumed_radiograph_spacing_mm"]
    )
    _ingest_file_image(
        rel,
        writer,
        array,
        affine,
        source_format="image",
        spacing_source="assumed",
        by_folder=True,
        photometric=note,
    )


def _ingest_volume_file(rel: str, writer: _Writer, cfg: dict[str, Any]) -> None:
    array, affine = load_volume_file(writer.root / rel)
    detached = rel.lower().endswith((".mhd", ".nhdr"))
    _ingest_file_image(
        rel,
        writer,
        array,
        affine,
        source_format="metaimage",
        spacing_source="image header",
        by_folder=False,
        detached=detached,
    )


def load_label_map(path: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map through the reader of its format (NIfTI, MetaImage or NRRD, as images
    are read), with its RAS affine, checked to hold non-negative integer labels."""
    if is_volume_file(rel):
        array, affine = load_volume_file(path)
        return checked_labels(array), affine
    return load_nifti_checked(path, integer=True)


FILE_READERS = {
    "nifti": _ingest_nifti,
    "image": _ingest_image_file,
    "volume_file": _ingest_volume_file,
}


def run_ingest(input_root: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Ingest everything under ``input_root`` into ``out_dir``; return the summary counts.

    The outputs are written into a staging folder beside ``out_dir`` that replaces it only
    when complete: a crash leaves the previous outputs as they were. When nothing usable
    is found, the new ``out_dir`` holds the audit alone and the stage fails.
    """
    if not input_root.is_dir():
        raise IngestError(f"{input_root}: input folder does not exist")
    # pydicom's validation warnings quote header values, which may be identifiers.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    with staged_folder(out_dir) as staging:
        summary = _ingest(input_root, staging, params["ingest"])
    if summary is None:
        raise IngestError(
            f"no usable image under {input_root}: every file was rejected, "
            f"see {out_dir / 'audit.csv'}"
        )
    return summary


def _unexpected(exc: Exception) -> Rejected:
    """Any failure of a per-file step as an audit reason (the traceback goes to the log)."""
    log.debug("unexpected ingest error", exc_info=True)
    return Rejected("unexpected error, please report it", f"{type(exc).__name__}: {exc}")


def file_format(rel: str) -> str | None:
    """The reader of a file that is not DICOM (by its suffix), or None."""
    if is_nifti(rel):
        return "nifti"
    if is_radiograph_file(rel):
        return "image"
    if is_volume_file(rel):
        return "volume_file"
    return None


def _triage(
    files: list[tuple[Path, str]], audit: Audit, scratch: Path
) -> tuple[list[DicomFile], list[tuple[str, str]]]:
    """Header-level triage of every file; identifiers are collected from every header
    pydicom can parse, whether the file is then used or rejected. Files of other formats
    (NIfTI, image files, MetaImage/NRRD) are returned as (reader, path). A gzip-compressed
    file (``.dcm.gz``) is decompressed into ``scratch`` and read from there."""
    dicoms: list[DicomFile] = []
    others: list[tuple[str, str]] = []
    for path, rel in tqdm(files, desc="ingest: triage", unit="file"):
        reader = file_format(rel)
        if reader is not None:
            others.append((reader, rel))
            continue
        try:
            if is_gzip(path):
                path = gunzip_into(path, scratch)
            ds = read_dataset(path)
            audit.remember_identifiers(identifiers_of(ds))
            record, _ = read_dicom_header(path, rel, ds)
        except Rejected as exc:
            audit.reject_error(rel, exc)
            continue
        except Exception as exc:
            audit.reject_error(rel, _unexpected(exc))
            continue
        dicoms.append(record)
    return dicoms, others


def _convert(
    work: list[tuple[str, Any]], writer: _Writer, cfg: dict[str, Any], decoder: Decoder
) -> None:
    """Turn every work item into images; any failure becomes audit rows of its files."""
    audit = writer.audit
    for kind, item in tqdm(work, desc="ingest: convert", unit="item"):
        try:
            if kind == "projections":
                _ingest_projections(item, writer, cfg, decoder)
            elif kind == "series":
                _ingest_series(item, writer, cfg, decoder)
            elif kind == "wrapped":
                _ingest_wrapped_series(item, writer, cfg)
            else:
                FILE_READERS[kind](item, writer, cfg)
        except Exception as exc:
            error = exc if isinstance(exc, Rejected) else _unexpected(exc)
            if kind in ("series", "wrapped"):
                members = [f.rel for f in item]
                for rel in members:
                    audit.reject(
                        rel,
                        f"series of {len(members)} file(s) rejected: {error.reason}",
                        error.detail,
                    )
            else:
                for rel in [f.rel for f in item] if kind == "projections" else [item]:
                    audit.reject_error(rel, error)


def _ingest(input_root: Path, out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    started = time.perf_counter()
    pseudo = Pseudonymizer.from_params(cfg)
    audit = Audit(pseudonym=lambda component: pseudo("component", component))
    annotations = load_annotations(input_root, cfg["annotations"], audit)
    # Patients named in subjects.csv are identifiers like DICOM's PatientID.
    audit.remember_identifiers(patient for patient, _ in annotations.subjects.values())
    writer = _Writer(
        input_root,
        out_dir,
        pseudo,
        annotations,
        audit,
        box_table=cfg["annotations"]["boxes"],
        patient_from=cfg["patient_from"],
    )

    found = discover(input_root, annotations.files, annotations.folders)
    rels = {rel for _, rel in found}
    files = [(path, rel) for path, rel in found if not is_detached_data(rel, rels)]
    audit.remember_paths(rel for _, rel in files)
    writer.file_rows = {rel: row for row, rel in enumerate(sorted(rels), start=1)}
    audit.remember_paths({str(PurePosixPath(rel).parent) for _, rel in files} - {"."})
    n_bytes = sum(path.stat().st_size for path, _ in files)
    with tempfile.TemporaryDirectory(prefix="medtailor-gunzip-") as scratch:
        return _ingest_files(
            files, n_bytes, started, writer, audit, annotations, cfg, Path(scratch)
        )


def _ingest_files(
    files: list[tuple[Path, str]],
    n_bytes: int,
    started: float,
    writer: _Writer,
    audit: Audit,
    annotations: Any,
    cfg: dict[str, Any],
    scratch: Path,
) -> dict[str, Any] | None:
    out_dir = writer.out
    dicoms, others = _triage(files, audit, scratch)

    projections = [f for f in dicoms if f.is_projection]
    grouped = group_series(
        [f for f in dicoms if not f.is_projection],
        lambda f, exc: audit.reject_error(f.rel, _unexpected(exc)),
    )
    work: list[tuple[str, Any]] = (
        [
            ("projections", projections[k : k + PROJECTION_BATCH])
            for k in range(0, len(projections), PROJECTION_BATCH)
        ]
        + [("series", s) for s in grouped if s[0].layout == "single"]
        + [("wrapped", s) for s in grouped if s[0].layout != "single"]
        + others
    )
    decoder = Decoder(int(cfg["workers"]))
    try:
        _convert(work, writer, cfg, decoder)
    finally:
        decoder.close()

    for key, rows in annotations.boxes.items():
        if f"boxes:{key}" not in writer.used_sources:
            numbers = ", ".join(str(r["row"]) for r in rows)
            audit.reject(
                cfg["annotations"]["boxes"],
                f"row(s) {numbers}: source {key!r} matches no ingested image",
            )
    for key in annotations.labels:
        if f"labels:{key}" not in writer.used_sources:
            audit.reject(cfg["annotations"]["labels"], f"source {key!r} matches no ingested image")
    for key in annotations.classes:
        if f"classes:{key}" not in writer.used_sources:
            audit.reject(cfg["annotations"]["classes"], f"source {key!r} matches no ingested image")

    audit.write(out_dir / "audit.csv")
    seconds = time.perf_counter() - started
    if not writer.manifest:
        return None
    problem = class_folder_problem(writer.manifest, writer.classes)
    if problem is not None:
        raise IngestError(f"{writer.root}: {problem}")
    write_manifest(writer.manifest, out_dir / "manifest.parquet")
    write_boxes(writer.boxes, out_dir / "boxes.parquet")
    if annotations.class_columns:
        write_classes(writer.classes, annotations.class_columns, out_dir / CLASSES_FILE)
    kinds = [row["kind"] for row in writer.manifest]
    return {
        "files_seen": len(files),
        "files_accepted": len(writer.accepted_files),
        "files_rejected": len({r["source"] for r in audit.rows} & {rel for _, rel in files}),
        "audit_entries": len(audit.rows),
        "images": len(writer.manifest),
        "radiographs": kinds.count("radiograph"),
        "volumes": kinds.count("volume"),
        "label_maps": sum(1 for row in writer.manifest if row["label_path"]),
        "boxes": len(writer.boxes),
        "classified_images": len(writer.classes),
        "patients": len({row["patient_id"] for row in writer.manifest}),
        "seconds": round(seconds, 3),
        "files_per_second": round(len(files) / seconds, 2) if seconds > 0 else 0.0,
        "megabytes_per_second": round(n_bytes / 1e6 / seconds, 2) if seconds > 0 else 0.0,
    }
