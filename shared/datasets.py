"""Public-data helpers both parties use: uint8 images to normalised floats (and back for display) and
the fixed public split of Fashion-MNIST's test images (auxiliary images, held-out test images).

Readers of every format live in ``shared.images``. Normalisation uses public constants, never
statistics of private data.
"""

from __future__ import annotations

import torch

from shared.images.fashion_mnist import load_fashion_mnist
from shared.images.image_set import ImageSet


def to_float(images: torch.Tensor, normalization: tuple[float, float]) -> torch.Tensor:
    """uint8 images to normalised float32."""
    mean, std = normalization
    out = images.to(torch.float32)  # one allocation; the rest in place (private sets can be large)
    return out.div_(255.0).sub_(mean).div_(std)


def from_float(images: torch.Tensor, normalization: tuple[float, float]) -> torch.Tensor:
    """Normalised float images back to [0, 1] for display."""
    mean, std = normalization
    return (images.detach() * std + mean).clamp(0.0, 1.0)


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
