"""The one in-memory form of a labelled image set, whatever it was read from (``ImageSet``).

Images are kept as uint8 [N, C, H, W]; conversion to normalised floats (``shared.datasets.to_float``)
uses public constants, never statistics of private data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.identifiers import distinct_identifiers


@dataclass(frozen=True)
class ImageSet:
    """Labelled images and their class names, checked on creation (shape, dtype, labels in range)."""

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
