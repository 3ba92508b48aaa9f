"""Ingest on what hospital exports contain: malformed headers, names that are not UTF-8,
identifiers in files rejected early, symbolic-link loops, slices without geometry. Every
file ends in the manifest or the audit, no identifier reaches an output, and a crash never
costs the previous outputs."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medtailor.ingest import run_ingest
from medtailor.ingest.audit import Audit

from .conftest import small
from .helpers import affine_for, ct_volume, write_radiograph, write_series

PLANTED = {"name": "Zyxwvut^Qwerty", "patient_id": "ID778899", "birth": "19411230"}


@pytest.fixture()
def params(repo_params):
    return small(repo_params)


def ingest(raw: Path, out: Path, params) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    summary = run_ingest(raw, out, params)
    return summary, pd.read_csv(out / "audit.csv"), pd.read_parquet(out / "manifest.parquet")


def all_output_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_malformed_header_value_is_audited_beside_good_series(tmp_path, params):
    raw = tmp_path / "raw"
    write_series(raw / "good", ct_volume(seed=1), affine_for("axial"), series_number=3, seed=1)
    shutil.copy(get_testdata_file("badVR.dcm"), raw / "badVR.dcm")  # NumberOfFrames '1A'
    summary, audit, manifest = ingest(raw, tmp_path / "out", params)
    assert summary["volumes"] == 1 and len(manifest) == 1
    (reason,) = audit.loc[audit["source"] == "badVR.dcm", "reason"]
    assert "1A" in reason


def test_a_crash_leaves_the_previous_outputs_whole(tmp_path, params, monkeypatch):
    raw = tmp_path / "raw"
    write_radiograph(raw / "xr.dcm", monochrome1=False, slope=1, intercept=0)
    out = tmp_path / "out"
    ingest(raw, out, params)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise MemoryError("out of memory while writing the manifest")

    monkeypatch.setattr("medtailor.ingest.write_manifest", fail)
    with pytest.raises(MemoryError):
        run_ingest(raw, out, params)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_names_that_are_not_utf8_are_ingested_and_written_printably(tmp_path, params):
    raw = tmp_path / "raw"
    raw.mkdir()
    folder = os.path.join(os.fsencode(raw), b"caf\xe9_export")  # latin-1, from a CD export
    os.mkdir(folder)
    write_radiograph(Path(os.fsdecode(folder)) / "xr.dcm", monochrome1=False, slope=1, intercept=0)
    (Path(os.fsdecode(folder)) / "notes.txt").write_text("not an image")
    summary, audit, manifest = ingest(raw, tmp_path / "out", params)
    assert summary["radiographs"] == 1
    assert manifest["source"].tolist() == ["caf\\xe9_export/xr.dcm"]
    assert audit["source"].tolist() == ["caf\\xe9_export/notes.txt"]


def plant(ds: pydicom.Dataset) -> pydicom.Dataset:
    ds.PatientName = PLANTED["name"]
    ds.PatientID = PLANTED["patient_id"]
    ds.PatientBirthDate = PLANTED["birth"]
    return ds


def test_identifiers_of_files_rejected_at_triage_reach_no_output(tmp_path, params, caplog):
    raw = tmp_path / "raw"
    patient = raw / "Zyxwvut_Qwerty" / f"{PLANTED['patient_id']}_{PLANTED['birth']}"
    patient.mkdir(parents=True)
    for name in ("SC_rgb_rle.dcm", "reportsi.dcm", "rtplan.dcm"):  # colour, SR, no pixels
        plant(pydicom.dcmread(get_testdata_file(name))).save_as(patient / name)
    truncated = plant(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    truncated.save_as(patient / "MR_truncated.dcm")
    data = (patient / "MR_truncated.dcm").read_bytes()
    (patient / "MR_truncated.dcm").write_bytes(data[: len(data) - 500])
    write_radiograph(raw / "other" / "xr.dcm", monochrome1=False, slope=1, intercept=0)
    caplog.set_level(logging.DEBUG)
    summary, audit, _ = ingest(raw, tmp_path / "out", params)
    assert summary["radiographs"] == 1 and len(audit) == 4
    written = all_output_bytes(tmp_path / "out") + caplog.text.encode()
    for value in ("Zyxwvut", "Qwerty", PLANTED["patient_id"], PLANTED["birth"]):
        assert value.encode() not in written, value
        assert value.lower().encode() not in written.lower(), value
    # The rows stay apart: each file keeps its own (pseudonymised) path.
    assert audit["source"].nunique() == 4
    assert all(s.startswith("[redacted:X") and s.count("[redacted:X") == 2 for s in audit["source"])


def test_redaction_keeps_the_products_words_and_tells_rows_apart():
    audit = Audit(pseudonym=lambda component: f"X{abs(hash(component)) % 10**8}")
    audit.remember_identifiers(["dicom^Hans", "PAT123456", "19500101"])
    audit.remember_paths(["dicom/notes.txt", "Hans_2/a.txt", "Hans_3/a.txt"])
    for source in ("dicom/notes.txt", "Hans_2/a.txt", "Hans_3/a.txt", "scans/b.txt"):
        audit.reject(source, "not a DICOM or NIfTI file (no SOP class, no pixel data)")
    audit.reject("scans/c.dcm", "not readable as DICOM", "ValueError: bad value 'dicom^Hans'")
    audit.reject("scans/d.dcm", "duplicate slice of Hans_2/a.txt (same position and pixels)")
    audit.reject("pat_PAT123456/e.dcm", "no pixel data: not an image")
    rows = [
        {
            "source": audit.redact_path(row["source"]),
            "reason": audit.redact_reason(row["reason"])
            + (f" ({audit.redact_detail(row['detail'])})" if row["detail"] else ""),
        }
        for row in audit.rows
    ]
    sources = [row["source"] for row in rows]
    assert sources[3] == "scans/b.txt"  # nothing identifying: untouched
    assert sources[0].startswith("[redacted:X") and sources[0].endswith("/notes.txt")
    assert sources[1] != sources[2] and len(set(sources)) == len(sources)
    # The product's own sentence is never redacted, even where a name part is "dicom".
    assert all(r["reason"].startswith("not a DICOM or NIfTI file") for r in rows[:4])
    assert rows[4]["reason"] == "not readable as DICOM (ValueError: bad value '[redacted]')"
    assert "Hans" not in rows[5]["reason"] and rows[5]["reason"].startswith("duplicate slice")
    assert sources[6].startswith("[redacted:X") and sources[6].endswith("/e.dcm")


def test_a_symlink_loop_reads_every_file_once(tmp_path, params):
    raw = tmp_path / "raw"
    for k in range(5):
        write_radiograph(raw / "xr" / f"{k}.dcm", monochrome1=False, slope=1, intercept=0, seed=k)
    (raw / "xr" / "loop").symlink_to(raw, target_is_directory=True)
    (raw / "again").symlink_to(raw / "xr", target_is_directory=True)
    summary, audit, _ = ingest(raw, tmp_path / "out", params)
    assert summary["files_seen"] == 5 and summary["radiographs"] == 5 and audit.empty


def test_a_ct_slice_without_a_position_is_not_a_radiograph(tmp_path, params):
    raw = tmp_path / "raw"
    slices = write_series(raw / "ct", ct_volume(seed=2), affine_for("axial"), seed=2)
    lost = pydicom.dcmread(slices[0])
    del lost.ImagePositionPatient
    lost.save_as(slices[0])
    write_radiograph(raw / "xr.dcm", monochrome1=False, slope=1, intercept=0)
    summary, audit, _ = ingest(raw, tmp_path / "out", params)
    assert summary["radiographs"] == 1  # the DX file, not the CT slice
    rel = slices[0].relative_to(raw).as_posix()
    (reason,) = audit.loc[audit["source"] == rel, "reason"]
    assert reason.startswith("CT slice without a usable ImagePositionPatient")


def mutations(data: bytes, rng) -> list[tuple[str, bytes]]:
    """Corruptions of one good file: truncations, byte flips in the header and the pixels,
    and a numeric element whose value is not a number (a wrong VR's value)."""
    cut = int(rng.integers(8, len(data)))
    flips = bytearray(data)
    for position in rng.integers(128, min(len(data), 2048), 12):
        flips[position] ^= 0xFF
    pixels = bytearray(data)
    for position in rng.integers(len(data) // 2, len(data), 12):
        pixels[position] ^= 0x5A
    return [
        ("cut", data[:cut]),
        ("header_flip", bytes(flips)),
        ("pixel_flip", bytes(pixels)),
    ]


def test_fuzzed_files_all_land_in_the_manifest_or_the_audit(tmp_path, params):
    import numpy as np

    rng = np.random.default_rng(7)
    good = tmp_path / "good"
    for k in range(6):
        write_radiograph(good / f"xr{k}.dcm", monochrome1=bool(k % 2), slope=1, intercept=0, seed=k)
    slices = write_series(good / "ct", ct_volume(seed=5), affine_for("axial"), seed=5)
    sources = [*sorted(good.glob("*.dcm")), *slices[:4]]
    sources += [
        Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
    ]
    raw = tmp_path / "raw"
    raw.mkdir()
    for source in sources:
        for name, data in mutations(source.read_bytes(), rng):
            (raw / f"{source.stem}_{name}.dcm").write_bytes(data)
        for keyword, value in (("Rows", "abc"), ("NumberOfFrames", "1A"), ("PixelSpacing", "x")):
            ds = pydicom.dcmread(source, force=True)
            ds[keyword] = pydicom.DataElement(keyword, "LO", value)  # a number's tag as text
            ds.save_as(raw / f"{source.stem}_{keyword}.dcm")
    shutil.copytree(good / "ct", raw / "ct_intact")
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    assert len(files) >= 60
    summary, audit, _ = ingest(raw, tmp_path / "out", params)
    # Every file is accounted for, as ingested or with a reason, and the intact series is in.
    assert summary["files_seen"] == len(files)
    assert summary["files_accepted"] + summary["files_rejected"] == len(files)
    assert summary["volumes"] >= 1 and audit["reason"].str.len().min() > 0


def test_an_uncalibrated_radiograph_says_what_it_found_or_takes_the_assumed_spacing(
    tmp_path, params
):
    raw = tmp_path / "raw"
    _, _, ds = write_radiograph(raw / "cr.dcm", monochrome1=False, slope=1, intercept=0)
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = [0, 0]  # older CR: "0\0"
    ds.save_as(raw / "cr.dcm")
    write_radiograph(raw / "dx.dcm", monochrome1=False, slope=1, intercept=0, seed=1)
    _, audit, manifest = ingest(raw, tmp_path / "out", params)
    (reason,) = audit.loc[audit["source"] == "cr.dcm", "reason"]
    assert "PixelSpacing '0.0\\0.0'" in reason and "no ImagerPixelSpacing" in reason
    assert "ingest.assumed_radiograph_spacing_mm" in reason
    assert manifest["spacing_source"].tolist() == ["ImagerPixelSpacing"]

    params["ingest"]["assumed_radiograph_spacing_mm"] = 0.15
    _, audit, manifest = ingest(raw, tmp_path / "out", params)
    assumed = manifest.set_index("source").loc["cr.dcm"]
    assert assumed["spacing_source"] == "assumed" and list(assumed["spacing"]) == [0.15, 0.15]
    assert audit.empty


def test_decoding_in_worker_processes_changes_nothing(synth_dir, tmp_path, params):
    import pickle

    from medtailor.ingest.audit import Rejected

    outputs = {}
    for workers in (1, 2):
        params["ingest"]["workers"] = workers
        run_ingest(synth_dir, tmp_path / f"w{workers}", params)
        outputs[workers] = {
            p.relative_to(tmp_path / f"w{workers}"): p.read_bytes()
            for p in (tmp_path / f"w{workers}").rglob("*")
            if p.is_file()
        }
    assert outputs[1] == outputs[2]
    # A failure crosses the process boundary with its library detail kept apart (redacted).
    back = pickle.loads(pickle.dumps(Rejected("cannot decode", "ValueError: 'Doe^John'")))
    assert (back.reason, back.detail) == ("cannot decode", "ValueError: 'Doe^John'")
