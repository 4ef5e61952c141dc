"""Example image collections laid out as a user's would be: PNG ImageFolders plus CSV manifests.

They let the benchmarks and tests exercise the own-images path (``simulate --data``, an owner's
``[data]``) on real pictures with known answers, without anything to download:

* ``fashion-mnist``: Fashion-MNIST from Debian's package, upsampled (bicubic) to ``image_size``
  and written as 1- or 3-channel PNGs. ``train`` is the owner's private set; the public test split
  gives ``aux`` (the first ``aux_per_class`` of each class) and ``test`` (the rest), as the
  Fashion-MNIST default does.
* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled and split at
  random (public seed) into ``train``, ``aux`` and ``test``.

Each split gets a folder ``<split>/<class>/<n>.png`` and a manifest ``<split>.csv`` with columns
``path,label,patient_id`` over the same files (labels are the folder names, so the two layouts
have the same classes and can be mixed); patient ids are synthetic (1 to 10 images a patient,
public seed) so patient-level tools have something to group by.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.datasets import split_auxiliary
from shared.images.fashion_mnist import load_fashion_mnist
from shared.images.image_set import ImageSet
from shared.progress import progress_bar

EXAMPLES = ("fashion-mnist", "digits")
SPLITS = ("train", "aux", "test")
MAX_IMAGES_PER_PATIENT = 10


def folder_name(class_name: str) -> str:
    """A class name as a folder name ('T-shirt/top' -> 'T-shirt-top')."""
    safe = "".join("-" if ch in '/\\:*?"<>|' else ch for ch in class_name).strip(". ")
    if not safe:
        raise ValueError(f"class name {class_name!r} has no usable characters for a folder name")
    return safe


def synthetic_patients(n: int, seed: int) -> np.ndarray:
    """Patient index of each of ``n`` images: shuffled, 1 to 10 images a patient."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    patient = np.empty(n, dtype=np.int64)
    start, pid = 0, 0
    while start < n:
        size = int(rng.integers(1, MAX_IMAGES_PER_PATIENT + 1))
        patient[order[start : start + size]] = pid
        start, pid = start + size, pid + 1
    return patient


def write_split(
    root: Path,
    split: str,
    data: ImageSet,
    image_size: int,
    channels: int,
    seed: int = 0,
    show_progress: bool = True,
) -> int:
    """Write ``root/<split>/<class>/<n>.png`` and ``root/<split>.csv``; returns the number of images."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    names = [folder_name(c) for c in data.class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names {data.class_names} collide as folder names {names}")
    for name in names:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    patients = synthetic_patients(len(data), seed)
    rows = []
    images = data.images.numpy()
    for i in progress_bar(range(len(data)), desc=f"writing {split}", unit="img", disable=not show_progress):
        pixels = images[i]
        picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        if picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), Image.Resampling.BICUBIC)
        picture = picture.convert("RGB" if channels == 3 else "L")
        relative = Path(split) / names[int(data.labels[i])] / f"{i:06d}.png"
        picture.save(root / relative)
        rows.append((relative.as_posix(), names[int(data.labels[i])], f"{split}-p{patients[i]:05d}"))
    with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)
    return len(rows)


def imbalanced(data: ImageSet, ratio: float) -> ImageSet:
    """Class c keeps the first n_max * ratio^(-c / (C - 1)) of its images: geometric sizes from the
    largest class down to ``ratio`` times fewer in the last (ratio 1: unchanged)."""
    if ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1, got {ratio}")
    keep = []
    for c in range(data.num_classes):
        ix = torch.nonzero(data.labels == c).flatten()
        share = ratio ** (-c / max(1, data.num_classes - 1))
        keep.append(ix[: max(1, round(len(ix) * share))])
    return data.subset(torch.cat(keep).sort().values)


def fashion_mnist_splits(
    aux_per_class: int, data_root: str | None = None, imbalance: float = 1.0
) -> dict[str, ImageSet]:
    train = imbalanced(load_fashion_mnist(train=True, root=data_root), imbalance)
    aux, test = split_auxiliary(load_fashion_mnist(train=False, root=data_root), aux_per_class)
    return {"train": train, "aux": aux, "test": test}


def digits_splits(aux_per_class: int, test_fraction: float = 0.25, seed: int = 0) -> dict[str, ImageSet]:
    """scikit-learn's digits (values 0..16) as uint8, split at random with a public seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    data = ImageSet(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)), tuple("0123456789"))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(data)))
    test = data.subset(order[:n_test].sort().values)
    aux, train = split_auxiliary(data.subset(order[n_test:].sort().values), aux_per_class)
    return {"train": train, "aux": aux, "test": test}


def write_example(
    kind: str,
    out: str | Path,
    image_size: int,
    channels: int,
    aux_per_class: int,
    data_root: str | None = None,
    seed: int = 0,
    show_progress: bool = True,
    imbalance: float = 1.0,
) -> dict:
    """Write an example collection (all three splits) under ``out``; an existing complete one is kept.

    ``imbalance`` > 1 makes the private (train) split imbalanced, largest to smallest class by that
    ratio (``imbalanced``); the public splits stay as they are."""
    if kind not in EXAMPLES:
        raise ValueError(f"unknown example {kind!r}; choose one of {', '.join(EXAMPLES)}")
    out = Path(out)
    summary_path = out / "example.json"
    wanted = {
        "kind": kind,
        "image_size": image_size,
        "channels": channels,
        "aux_per_class": aux_per_class,
        "imbalance": imbalance,
    }
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if {k: summary.get(k) for k in wanted} == wanted:
            return summary
        raise ValueError(f"{out} holds a different example ({summary_path}); choose another folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not an example folder written by this command; choose another")
    if kind == "fashion-mnist":
        splits = fashion_mnist_splits(aux_per_class, data_root, imbalance)
    else:
        splits = digits_splits(aux_per_class)
        splits["train"] = imbalanced(splits["train"], imbalance)
    counts = {
        name: write_split(out, name, data, image_size, channels, seed + i, show_progress)
        for i, (name, data) in enumerate(splits.items())
    }
    summary = wanted | {
        "images": counts,
        "class_names": [folder_name(c) for c in splits["train"].class_names],
        "train_class_counts": splits["train"].class_counts(),
    }
    summary_path.write_text(json.dumps(summary, indent=2))  # last: marks the collection complete
    return summary
