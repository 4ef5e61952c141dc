"""torchvision's named datasets (MNIST, FashionMNIST, CIFAR10, CIFAR100, SVHN) from a root folder.

``download`` is passed through: torchvision fetches the files when online. Without them (and
offline) the error tells the user to pass ``--download`` or point at a folder holding the files,
in torchvision's layout. Class names come from the dataset's ``classes`` (SVHN has none: "0".."9";
torchvision maps SVHN's digit 0, stored as 10, to label 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.images.cache import data_cache_root
from shared.images.errors import DataNotFound
from shared.images.image_set import ImageSet

NAMED_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN")
_LAYOUT = {
    "MNIST": "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "FashionMNIST": "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "CIFAR10": "<root>/cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "CIFAR100": "<root>/cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
    "SVHN": "<root>/{train,test,extra}_32x32.mat",
}
_FOLDER = {"MNIST": "MNIST", "FashionMNIST": "FashionMNIST"}


def canonical_name(name: str) -> str:
    """The torchvision class name for ``name`` (case and dashes ignored: "fashion-mnist", "cifar10")."""
    wanted = name.replace("-", "").replace("_", "").casefold()
    for known in NAMED_DATASETS:
        if known.casefold() == wanted:
            return known
    raise ValueError(f"unknown dataset {name!r}; torchvision datasets supported: {', '.join(NAMED_DATASETS)}")


def splits_of(name: str) -> tuple[str, ...]:
    return ("train", "test", "extra") if canonical_name(name) == "SVHN" else ("train", "test")


def load_named(name: str, root: str | Path | None = None, split: str = "train", download: bool = False) -> ImageSet:
    """A torchvision dataset split as an ``ImageSet`` at its native size (28 px gray or 32 px RGB)."""
    from torchvision import datasets

    name = canonical_name(name)
    if split not in splits_of(name):
        raise ValueError(f"{name} has splits {splits_of(name)}, not {split!r}")
    root = Path(root) if root is not None else data_cache_root()
    if name in _FOLDER and root.name == _FOLDER[name] and (root / "raw").is_dir():
        root = root.parent  # the user pointed at <root>/MNIST itself
    if not download and not root.is_dir():
        raise DataNotFound(
            f"{name}: data folder {root} does not exist. Pass --download when online (torchvision fetches the "
            f"files), or point at a folder holding them ({_LAYOUT[name]})"
        )
    cls = getattr(datasets, name)
    try:
        ds = (
            cls(str(root), split=split, download=download)
            if name == "SVHN"
            else cls(str(root), train=split == "train", download=download)
        )
    except RuntimeError as exc:
        if download:
            raise DataNotFound(
                f"downloading {name} into {root} failed ({exc}). Without internet, point at a folder holding the "
                f"files ({_LAYOUT[name]})"
            ) from exc
        raise DataNotFound(
            f"{name} ({split}) not found under {root}. Pass --download when online (torchvision fetches the "
            f"files), or point at a folder holding them ({_LAYOUT[name]})"
        ) from exc
    except OSError as exc:  # network errors when downloading, unreadable files
        raise DataNotFound(f"{name} could not be read from {root}: {exc}") from exc
    if name in ("MNIST", "FashionMNIST"):
        images = ds.data.unsqueeze(1).to(torch.uint8).contiguous()
        labels = ds.targets.long()
    elif name == "SVHN":
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    else:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(ds.targets, dtype=torch.long)
    names = tuple(ds.classes) if getattr(ds, "classes", None) else tuple(str(i) for i in range(10))
    return ImageSet(images, labels, names)
