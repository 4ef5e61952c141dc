"""MedMNIST ``.npz`` files (``pathmnist.npz``, ``bloodmnist_64.npz``, ...): one split as an ``ImageSet``.

A file holds ``train_images``/``train_labels``, ``val_...`` and ``test_...``; images are uint8
[N, H, W] (gray) or [N, H, W, 3] (RGB) at 28, 64, 128 or 224 px, labels [N, 1]. Multi-label sets
(labels with several columns, e.g. ChestMNIST's 14 findings) are refused: distillation here needs
one class per image. The files carry no class names: pass ``classes`` (in label order), otherwise
they are "0", "1", ... The number of classes is taken over all splits in the file, so every split
of one file has the same class list even if a rare class is absent from one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shared.images.errors import DataNotFound, ImageSourceError
from shared.images.image_set import ImageSet

MEDMNIST_SPLITS = ("train", "val", "test")


def _labels(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] > 1:
        raise ImageSourceError(
            f"{path}: {key} has {raw.shape[1]} label columns per image: a multi-label set (such as ChestMNIST) "
            "is not supported; distillation needs exactly one class per image"
        )
    if raw.ndim not in (1, 2) or not np.issubdtype(raw.dtype, np.integer):
        raise ImageSourceError(f"{path}: {key} must be integer labels [N] or [N, 1], got {raw.dtype} {raw.shape}")
    labels = raw.reshape(-1).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ImageSourceError(f"{path}: {key} holds negative labels")
    return labels


def _images(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    if raw.dtype != np.uint8:
        raise ImageSourceError(f"{path}: {key} must be uint8, got {raw.dtype}")
    if raw.ndim == 3:
        return raw[:, None]
    if raw.ndim == 4 and raw.shape[-1] in (1, 3):
        return raw.transpose(0, 3, 1, 2)
    raise ImageSourceError(f"{path}: {key} must be [N, H, W] or [N, H, W, 3], got {raw.shape}")


def load_medmnist(path: str | Path, split: str = "train", classes: Sequence[str] | None = None) -> ImageSet:
    """One split of a single-label MedMNIST npz at its native size and channels."""
    path = Path(path)
    if split not in MEDMNIST_SPLITS:
        raise ValueError(f"MedMNIST split must be one of {MEDMNIST_SPLITS}, got {split!r}")
    if not path.is_file():
        raise DataNotFound(f"MedMNIST file {path} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        wanted = (f"{split}_images", f"{split}_labels")
        if not set(wanted) <= keys:
            raise ImageSourceError(f"{path} lacks {[k for k in wanted if k not in keys]} (it holds {sorted(keys)})")
        images = _images(npz[wanted[0]], path, wanted[0])
        labels = _labels(npz[wanted[1]], path, wanted[1])
        highest = -1
        for key in sorted(k for k in keys if k.endswith("_labels")):
            other = labels if key == wanted[1] else _labels(npz[key], path, key)
            highest = max(highest, int(other.max()) if other.size else -1)
    if images.shape[0] != labels.shape[0]:
        raise ImageSourceError(f"{path}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    if classes is None:
        names = tuple(str(i) for i in range(highest + 1))
    else:
        names = tuple(str(c) for c in classes)
        if len(names) <= highest:
            raise ImageSourceError(f"{path}: labels go up to {highest} but only {len(names)} class names were given")
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), names)
