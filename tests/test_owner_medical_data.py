"""The owner on hospital exports (issue 26): patients from DICOM PatientID without a manifest, each
volume's slices one patient, volumes refused as image-level records, and the read policy in
owner.toml and on the command line."""

from __future__ import annotations

import shutil
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from owner_node.config import OwnerConfig, write_config
from owner_node.data import load_owner_images
from shared.images.policy import ReadPolicy
from tests.conftest import make_owner_config

pydicom = pytest.importorskip("pydicom")
from tests.dicom_files import dicom_file  # noqa: E402

_test_file = dicom_file


def _dicom(dst: Path, src: str, patient: str | None) -> None:
    ds = pydicom.dcmread(_test_file(src))
    if patient is None:
        del ds.PatientID
    else:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so both spellings are stored as written
        ds.PatientID = patient
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)


def _dicom_folder(root: Path) -> None:
    """Two classes of single-frame DICOMs of three patients (one written NFC and NFD), and a volume."""
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    for i, patient in enumerate([nfc, nfd + " ", "p2", "p3"]):
        _dicom(root / "normal" / f"{i}.dcm", "MR_small.dcm", patient)
        _dicom(root / "finding" / f"{i}.dcm", "CT_small.dcm", patient)
    _dicom(root / "finding" / "volume.dcm", "emri_small.dcm", "p9")  # 10 frames


def _owner(tmp_path: Path, **changes) -> OwnerConfig:
    base = make_owner_config(tmp_path / "owner")
    settings = dict(data_source="image-folder", data_path=tmp_path / "data", image_size=16, channels=1) | changes
    return replace(base, **settings)


def test_a_dicom_folder_without_a_manifest_takes_its_patients_from_patient_id(tmp_path: Path) -> None:
    _dicom_folder(tmp_path / "data")
    images, _ = load_owner_images(_owner(tmp_path, privacy_unit="patient", patient_from="dicom"), progress=False)
    assert len(images.data) == 8 + 10 and images.patients is not None
    assert int(images.patients.max()) + 1 == 4  # Zoë (two spellings), p2, p3, and the volume's p9
    volume = images.patients[images.data.labels == 0][-10:]  # "finding" sorts first; its volume last
    assert len(volume.unique()) == 1
    again, _ = load_owner_images(_owner(tmp_path, privacy_unit="patient", patient_from="dicom"), progress=False)
    assert again.patients.tolist() == images.patients.tolist()  # the same patients from the decoded-image cache
    _dicom(tmp_path / "data" / "normal" / "anonymous.dcm", "MR_small.dcm", None)
    with pytest.raises(ValueError, match=r"1 files have an empty DICOM PatientID \(e\.g\. .*anonymous\.dcm"):
        load_owner_images(_owner(tmp_path, privacy_unit="patient", patient_from="dicom"), progress=False)


def test_each_volume_is_one_patient_with_patient_from_file(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for v in range(2):
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            volume = rng.normal(size=(8, 8, 4)).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "data" / cls / f"{v}.nii.gz")
    images, _ = load_owner_images(_owner(tmp_path, privacy_unit="patient", patient_from="file"), progress=False)
    assert len(images.data) == 16 and images.patients.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def test_volumes_are_refused_as_image_level_records(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    shutil.copy(_test_file("emri_small.dcm"), tmp_path / "data" / "a" / "v.dcm")
    _dicom(tmp_path / "data" / "b" / "x.dcm", "MR_small.dcm", "p1")
    with pytest.raises(ValueError, match=r'v\.dcm was read as 10 slices.*unit = "patient"'):
        load_owner_images(_owner(tmp_path), progress=False)


def test_read_policy_and_patient_source_in_owner_toml(tmp_path: Path) -> None:
    _dicom_folder(tmp_path / "data")
    config = _owner(
        tmp_path,
        privacy_unit="patient",
        patient_from="dicom",
        unreadable="skip",
        max_skipped=0.1,
        volume_axis=0,
        slice_range=(0.2, 0.8),
    )
    write_config(tmp_path / "owner.toml", config)
    loaded = OwnerConfig.load(tmp_path / "owner.toml")
    assert loaded.image_source().reading == ReadPolicy("skip", 0.1, 0, (0.2, 0.8))
    assert loaded.patient_from == "dicom"
    images, _ = load_owner_images(loaded, progress=False)
    assert len(images.data) == 8 + 6  # the volume's middle 6 of 10 frames
    text = (tmp_path / "owner.toml").read_text()
    for bad, message in (
        ('unreadable = "ignore"', "unreadable must be one of"),
        ("max_skipped = 2", r"\[data\] max_skipped must be a finite number >= 0 and <= 1"),
        ('max_skipped = "5%"', r"\[data\] max_skipped must be"),
        ("max_skipped = nan", r"\[data\] max_skipped must be"),
        ("volume_axis = 3", r"\[data\] volume_axis must be an integer >= 0 and <= 2"),
        ("volume_axis = 1.0", r"\[data\] volume_axis must be an integer"),
        ('slice_range = [0.1, "x"]', "slice_range must be"),
        ("slice_range = [0.8, 0.2]", "slice_range must be"),
        ("slice_range = 0.5", r"slice_range must be \[start, stop\]"),
        ('patient_from = "mrn"', "patient_from must be one of"),
    ):
        key = bad.split(" = ")[0]
        lines = [bad if line.startswith(f"{key} = ") else line for line in text.splitlines()]
        (tmp_path / "bad.toml").write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=message):
            OwnerConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="patient_from"):
        replace(config, patient_from="column")  # an image folder has no manifest column


def test_simulate_options_carry_the_read_policy(tmp_path: Path) -> None:
    import argparse

    from deploy.cli_options import user_sets
    from deploy.public_sets import PublicSets
    from deploy.run_commands import register

    _dicom_folder(tmp_path / "data")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--data", str(tmp_path / "data"), "--aux", str(tmp_path / "data"), "--image-size", "16",
         "--channels", "1", "--unreadable", "skip", "--max-skipped", "0.2", "--volume-axis", "1",
         "--slice-range", "0.1", "0.9", "--unit", "patient", "--patient-from", "dicom"]
    )  # fmt: skip
    public, private = user_sets(args)
    expected = ReadPolicy("skip", 0.2, 1, (0.1, 0.9))
    assert private.reading == expected and public.reading == expected
    assert PublicSets.from_run_config(public.run_config(), 50).reading == expected
    assert PublicSets.from_run_config({}, 50).reading == ReadPolicy()


def test_simulated_owners_get_the_read_policy_and_patient_source(tmp_path: Path) -> None:
    import torch

    from deploy.simulation import prepare_owners
    from shared.images.image_set import ImageSet
    from shared.images.source import source_for_path

    _dicom_folder(tmp_path / "data")
    aux = ImageSet(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ("finding", "normal"))
    reading = ReadPolicy("skip", 0.1, None, (0.2, 0.8))
    private = source_for_path(tmp_path / "data", 16, 1, reading=reading)
    settings = {"privacy_unit": "patient", "patient_from": "dicom"}
    (path,) = prepare_owners(tmp_path / "sim", aux, 1.0, 1e-5, None, None, private=private, owner_settings=settings)
    config = OwnerConfig.load(path)
    assert config.image_source().reading == reading and config.patient_from == "dicom"
    images, _ = load_owner_images(config, progress=False)
    assert int(images.patients.max()) + 1 == 4
    with pytest.raises(ValueError, match="volumes read as slices"):
        prepare_owners(tmp_path / "split", aux, 1.0, 1e-5, None, None, num_owners=2, private=private)
