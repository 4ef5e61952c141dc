"""Identifiers in one form (issue 25 item 4): class names, labels, patient ids and column names are
compared in Unicode NFC without surrounding spaces, from every source kind; two class folders that
are one name once normalised are refused, naming both."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from owner_node.config import OwnerConfig, write_config
from owner_node.data import patient_index
from shared.identifiers import distinct_identifiers, lookalike_identifiers, normalise_identifier
from shared.images.classes import check_same_classes
from shared.images.errors import ImageSourceError
from shared.images.folder import load_folder
from shared.images.image_set import ImageSet
from shared.images.manifest import load_manifest
from shared.images.resize import TargetFormat
from shared.images.source import ImageSource, load_source
from tests.conftest import make_owner_config

NFC = unicodedata.normalize("NFC", "Café")
NFD = unicodedata.normalize("NFD", "Café")
T = TargetFormat(4, 1)


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8), "L").save(path)


def test_normal_form_and_refusal_naming_both_spellings() -> None:
    assert NFC != NFD and normalise_identifier(NFD) == normalise_identifier(f"  {NFC}\t") == NFC
    assert normalise_identifier("MRN7") != normalise_identifier("mrn7")  # case is kept
    assert distinct_identifiers([NFD, "b "]) == (NFC, "b")
    with pytest.raises(ValueError, match="two spellings") as err:
        distinct_identifiers([NFC, NFD])
    assert repr(NFC) in str(err.value) and repr(NFD) in str(err.value)
    with pytest.raises(ValueError, match="more than once"):
        distinct_identifiers(["a", "a"])


def test_patient_ids_written_two_ways_are_one_patient() -> None:
    assert patient_index([NFC, NFD, f"{NFD}  ", " p2", "p2"]).tolist() == [0, 0, 0, 1, 1]


def test_patient_ids_differing_only_in_case_or_leading_zeros_are_found_not_merged() -> None:
    """They may be two people, so they stay two patients; ``lookalike_identifiers`` names them for the owner."""
    ids = ["MRN007", "p1", "mrn7", "MRN7", " p1", "007", "7", "70", "A10", "a010", "0", "000", NFD, NFC.lower()]
    assert lookalike_identifiers(ids) == [("MRN007", "MRN7", "mrn7"), ("007", "7"), ("A10", "a010"), ("0", "000"),
                                          (NFC, NFC.lower())]  # fmt: skip
    assert patient_index(["007", "7", "MRN7", "mrn7"]).tolist() == [0, 1, 2, 3]
    assert lookalike_identifiers(["p1", "p2", "10", "100", "1" * 5000]) == []  # long digit runs stay text


def test_folder_class_names_are_normalised_and_two_spellings_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "one" / NFD / "a.png")
    _png(tmp_path / "one" / "dog" / "b.png")
    result = load_folder(tmp_path / "one", T, progress=False)
    assert result.data.class_names == (NFC, "dog")
    # An explicit classes list in either spelling names the same folder.
    assert load_folder(tmp_path / "one", T, classes=["dog", NFC], progress=False).data.class_names == ("dog", NFC)
    _png(tmp_path / "two" / NFC / "a.png")
    _png(tmp_path / "two" / NFD / "b.png")
    with pytest.raises(ImageSourceError, match="two spellings of one class name") as err:
        load_folder(tmp_path / "two", T, progress=False)
    assert str(tmp_path / "two" / NFC) in str(err.value) and str(tmp_path / "two" / NFD) in str(err.value)


def test_csv_labels_columns_and_patient_ids_are_normalised(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / f"{i}.png", i)
    rows = [
        " path , label , patient_id ",
        f"0.png,{NFC},{NFD}",
        f"1.png,{NFD} ,{NFC}",
        f"2.png, {NFC},p2 ",
        "3.png,dog,p2",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = load_manifest(tmp_path / "m.csv", T, progress=False)
    assert result.data.class_names == (NFC, "dog") and result.data.labels.tolist() == [0, 0, 0, 1]
    assert result.columns["patient_id"] == (NFC, NFC, "p2", "p2")
    with pytest.raises(ImageSourceError, match="two spellings"):
        load_manifest(tmp_path / "m.csv", T, classes=[NFC, NFD], progress=False)


def test_array_sources_and_explicit_lists_are_normalised(tmp_path: Path) -> None:
    images, labels = torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    np.savez(tmp_path / "named.npz", images=images.numpy(), labels=labels.numpy(), class_names=np.array([NFD, "b "]))
    assert load_source(ImageSource("npz", tmp_path / "named.npz"), progress=False).data.class_names == (NFC, "b")
    assert load_source(ImageSource("npz", tmp_path / "named.npz", classes=[f" {NFC}", "b"]), progress=False)
    np.savez(tmp_path / "bare.npz", images=images.numpy(), labels=labels.numpy())
    bare = load_source(ImageSource("npz", tmp_path / "bare.npz", classes=[NFD, "b"]), progress=False).data
    assert bare.class_names == (NFC, "b")
    np.savez(tmp_path / "two.npz", images=images.numpy(), labels=labels.numpy(), class_names=np.array([NFC, NFD]))
    with pytest.raises(ValueError, match="two spellings"):
        load_source(ImageSource("npz", tmp_path / "two.npz"), progress=False)
    med = {f"{s}_images": np.zeros((2, 4, 4), np.uint8) for s in ("train", "val", "test")}
    med |= {f"{s}_labels": np.array([[0], [1]]) for s in ("train", "val", "test")}
    np.savez(tmp_path / "med.npz", **med)
    medmnist = load_source(ImageSource("medmnist", tmp_path / "med.npz", classes=[NFD, "b"]), progress=False)
    assert medmnist.data.class_names == (NFC, "b")
    # torchvision and Fashion-MNIST sets, like every set, are built as an ImageSet, which normalises.
    assert ImageSet(images, labels, (NFD, " b")).class_names == (NFC, "b")
    with pytest.raises(ValueError, match="two spellings"):
        ImageSet(images, labels, (NFC, NFD))
    assert ImageSource("npz", "x.npz", classes=[NFD]).classes == (NFC,)
    check_same_classes([NFD, "b"], ImageSet(images, labels, (NFC, "b")))


def test_owner_toml_classes_and_patient_column_are_normalised(tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(make_owner_config(tmp_path / "owner"), classes=(NFD, "b"))
    write_config(tmp_path / "owner.toml", config)
    loaded = OwnerConfig.load(tmp_path / "owner.toml")
    assert loaded.image_source().classes == (NFC, "b")
