"""``.npz`` image sets: ``images`` (uint8 [N,H,W] or [N,C,H,W]), ``labels`` and optional ``class_names``.
The form the tools exchange public sets and a simulation's private shares in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.images.errors import DataNotFound
from shared.images.image_set import ImageSet


def load_npz(path: str | Path) -> ImageSet:
    """``.npz`` with ``images`` (uint8 [N,H,W] or [N,C,H,W]), ``labels`` and optional ``class_names``."""
    if not Path(path).is_file():
        raise DataNotFound(f"file {path} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        if "images" not in npz.files or "labels" not in npz.files:
            raise ValueError(f"{path} must contain arrays 'images' and 'labels'")
        images = npz["images"]
        labels = npz["labels"].astype(np.int64)
        names = tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if names is None:
        names = tuple(str(i) for i in range(int(labels.max()) + 1 if labels.size else 0))
    return ImageSet(torch.from_numpy(images.copy()), torch.from_numpy(labels), names)


def save_npz(path: str | Path, data: ImageSet) -> None:
    np.savez(
        path,
        images=data.images.numpy(),
        labels=data.labels.numpy(),
        class_names=np.array(data.class_names),
    )
