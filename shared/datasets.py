"""Image-set formats both parties read: Fashion-MNIST (IDX), class folders, and ``.npz``.

The owner reads its private data with these; the distiller reads public data (auxiliary slice,
evaluation split) with the same readers. Images are kept as uint8 [N, C, H, W]; conversion to
normalised floats uses public constants, never statistics of private data.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.identifiers import distinct_identifiers

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Published per-pixel mean/std of Fashion-MNIST training images: public constants.
FASHION_MNIST_NORMALIZATION = (0.2860, 0.3530)


class DataNotFound(RuntimeError):
    """No copy of a dataset could be found or fetched; the message says how to provide one."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Every set's class names, whatever their source, in one form (shared.identifiers).
        object.__setattr__(self, "class_names", distinct_identifiers(self.class_names))
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be uint8 with shape [N, C, H, W]")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError("labels must index class_names")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.class_names)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def to_float(images: torch.Tensor, normalization: tuple[float, float]) -> torch.Tensor:
    """uint8 images to normalised float32."""
    mean, std = normalization
    out = images.to(torch.float32)  # one allocation; the rest in place (private sets can be large)
    return out.div_(255.0).sub_(mean).div_(std)


def from_float(images: torch.Tensor, normalization: tuple[float, float]) -> torch.Tensor:
    """Normalised float images back to [0, 1] for display."""
    mean, std = normalization
    return (images.detach() * std + mean).clamp(0.0, 1.0)


# ---------------------------------------------------------------- Fashion-MNIST


def _cache_dir() -> Path:
    return Path(os.environ.get("DPDISTILL_DATA_CACHE", Path.home() / ".cache" / "dpdistill"))


def _debian_dir() -> Path | None:
    if all((DEBIAN_DIR / f"{name}.gz").exists() for name in FASHION_MNIST_FILES):
        return DEBIAN_DIR
    try:
        listing = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    for line in listing.stdout.splitlines():
        if line.endswith("train-images-idx3-ubyte.gz"):
            return Path(line).parent
    return None


def _raw_copy_from(folder: Path, raw: Path) -> bool:
    """Copy (gunzipping where needed) the four IDX files from ``folder`` into ``raw``."""
    for base in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
        if all((base / n).exists() or (base / f"{n}.gz").exists() for n in FASHION_MNIST_FILES):
            raw.mkdir(parents=True, exist_ok=True)
            for name in FASHION_MNIST_FILES:
                target = raw / name
                if target.exists():
                    continue
                tmp = raw / f".{name}.tmp"
                if (base / name).exists():
                    shutil.copyfile(base / name, tmp)
                else:
                    with gzip.open(base / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                tmp.replace(target)
            return True
    return False


def fashion_mnist_root(root: str | Path | None = None, download: bool = False) -> Path:
    """A folder laid out for ``torchvision.datasets.FashionMNIST`` (``<root>/FashionMNIST/raw``).

    Looks, in order, at a user-given folder, Debian's ``dataset-fashion-mnist`` package, and the
    local cache; with ``download`` it lets torchvision fetch the files (needs internet).
    """
    cache = _cache_dir()
    raw = cache / "FashionMNIST" / "raw"
    if root is not None:
        root = Path(root)
        if not root.exists():
            raise DataNotFound(f"data folder {root} does not exist")
        if _raw_copy_from(root, raw):
            return cache
        raise DataNotFound(
            f"{root} holds no Fashion-MNIST IDX files (expected {', '.join(FASHION_MNIST_FILES)}, optionally .gz)"
        )
    if all((raw / n).exists() for n in FASHION_MNIST_FILES):
        return cache
    debian = _debian_dir()
    if debian is not None and _raw_copy_from(debian, raw):
        return cache
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(cache), train=True, download=True)
            FashionMNIST(str(cache), train=False, download=True)
            return cache
        except Exception as exc:  # network errors come in many types
            raise DataNotFound(f"downloading Fashion-MNIST failed: {exc}") from exc
    raise DataNotFound(
        "Fashion-MNIST not found. Install Debian's package (apt-get install dataset-fashion-mnist), "
        "pass --data-root pointing at a folder with the IDX files, or allow --download when online."
    )


def load_fashion_mnist(train: bool, root: str | Path | None = None, download: bool = False) -> ImageSet:
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(fashion_mnist_root(root, download)), train=train, download=False)
    return ImageSet(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), tuple(ds.classes))


# ---------------------------------------------------------------- other formats


def load_image_folder(
    path: str | Path,
    image_size: int = 28,
    channels: int = 1,
    resize: str = "crop",
    classes: tuple[str, ...] | None = None,
) -> ImageSet:
    """Class folders (``path/<class>/...``) at ``image_size`` px and ``channels`` (1 or 3).

    Delegates to ``shared.images.folder`` (layout rules, decoding, resize policy ``crop``/``pad``);
    no cache and no progress bar here: ``shared.images.load_source`` offers both.
    """
    from shared.images.folder import load_folder
    from shared.images.resize import TargetFormat

    target = TargetFormat(image_size, channels, resize)
    return load_folder(path, target, classes=classes, progress=False).data


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


def load_image_set(
    kind: str,
    path: str | Path | None = None,
    train: bool = True,
    download: bool = False,
    *,
    image_size: int = 28,
    channels: int = 1,
) -> ImageSet:
    """Dispatch on a data-source kind: ``fashion-mnist``, ``image-folder`` (at ``image_size`` px and
    ``channels``) or ``npz``. More kinds (CSV, MedMNIST, torchvision): ``shared.images.load_source``."""
    if kind == "fashion-mnist":
        return load_fashion_mnist(train=train, root=path, download=download)
    if kind == "image-folder":
        return load_image_folder(path, image_size=image_size, channels=channels)
    if kind == "npz":
        return load_npz(path)
    raise ValueError(f"unknown data source {kind!r}; use fashion-mnist, image-folder or npz")


def split_auxiliary(public: ImageSet, per_class: int) -> tuple[ImageSet, ImageSet]:
    """Fixed public split: the first ``per_class`` images of each class (auxiliary) and the rest."""
    aux_index = []
    for c in range(public.num_classes):
        idx = torch.nonzero(public.labels == c).flatten()
        aux_index.append(idx[:per_class])
    aux = torch.cat(aux_index).sort().values
    mask = torch.ones(len(public), dtype=torch.bool)
    mask[aux] = False
    return public.subset(aux), public.subset(torch.nonzero(mask).flatten())


def public_split(aux_per_class: int, data_root: str | None, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """The public auxiliary images and the held-out test images, both from the Fashion-MNIST test split."""
    # With download, torchvision fetches both splits into the cache, where the owners find them.
    test = load_fashion_mnist(train=False, root=data_root, download=download)
    return split_auxiliary(test, aux_per_class)
