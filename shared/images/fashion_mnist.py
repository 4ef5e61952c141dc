"""Fashion-MNIST (IDX files): found in a user's folder, Debian's ``dataset-fashion-mnist`` package or the
local cache, or downloaded by torchvision on request."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

from shared.images.cache import data_cache_root
from shared.images.errors import DataNotFound
from shared.images.image_set import ImageSet

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
    cache = data_cache_root()
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
