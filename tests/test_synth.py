from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom

from medtailor.synth import generate_dataset

from .conftest import small


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, params):
    params = small(params)
    generate_dataset(params, tmp_path / "a")
    generate_dataset(params, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    params["seed"] += 1
    generate_dataset(params, tmp_path / "c")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_dataset_covers_the_dicom_variants_users_have(synth_dir: Path):
    seen = {
        "modality": set(),
        "photometric": set(),
        "spacing_tag": set(),
        "syntax": set(),
        "slope": set(),
    }
    no_extension = 0
    empty_uids = 0
    for path in synth_dir.joinpath("dicom").rglob("*"):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        no_extension += path.suffix == ""
        seen["modality"].add(ds.Modality)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID.name)
        seen["slope"].add(float(ds.RescaleSlope))
        empty_uids += ds.SeriesInstanceUID == ""
        if ds.Modality in ("DX", "CR"):
            seen["spacing_tag"].add(
                "PixelSpacing" if "PixelSpacing" in ds else "ImagerPixelSpacing"
            )
            assert ds.BitsStored == 12
        # Every header carries planted identifiers for the leak tests.
        assert str(ds.PatientName).startswith("PHIPLANTED^")
        assert ds.PatientID.startswith("PHIID") and len(ds.PatientBirthDate) == 8
    assert seen["modality"] == {"DX", "CR", "CT"}
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["spacing_tag"] == {"PixelSpacing", "ImagerPixelSpacing"}
    assert {"RLE Lossless", "JPEG 2000 Image Compression (Lossless Only)"} <= seen["syntax"]
    assert seen["slope"] == {0.5, 1.0}
    assert no_extension > 0 and empty_uids > 0
    assert list(synth_dir.joinpath("nifti").glob("*.nii.gz"))


def test_volumes_are_anisotropic_ct_with_lesions_in_their_label_maps(synth_dir: Path):
    import nibabel as nib

    for path in synth_dir.joinpath("nifti").glob("*.nii.gz"):
        image = nib.load(path)
        np.testing.assert_allclose(image.header.get_zooms(), (0.7, 0.7, 2.5), rtol=1e-5)
        assert image.get_fdata().min() <= -1000
    boxes = (synth_dir / "annotations" / "boxes.csv").read_text().splitlines()
    assert any(",,," not in line and line.count(",") == 7 for line in boxes[1:])  # 3D boxes
