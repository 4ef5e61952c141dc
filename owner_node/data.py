"""The owner's private data: loaded once, held as uint8 (4x smaller than floats), grouped by class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from owner_node.config import OwnerConfig
from owner_node.randomness import SecureRandom
from shared.datasets import ImageSet, load_image_set, load_npz, to_float


@dataclass
class PrivateData:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]
    by_class: list[torch.Tensor]  # indices of each class
    normalization: tuple[float, float]

    @classmethod
    def from_image_set(cls, data: ImageSet, normalization: tuple[float, float]) -> PrivateData:
        by_class = [torch.nonzero(data.labels == c).flatten() for c in range(data.num_classes)]
        if any(len(ix) == 0 for ix in by_class):
            raise ValueError("every class must have at least one private example")
        return cls(data.images, data.labels.clone(), data.class_names, by_class, tuple(normalization))

    def float_images(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised float images of ``index`` (converted on demand)."""
        return to_float(self.images[index], self.normalization)

    @property
    def class_counts(self) -> list[int]:
        return [len(ix) for ix in self.by_class]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def sample_rates(self, expected_group_size: float) -> list[float]:
        """q_c = g / n_c (capped at 1): every class contributes about ``g`` examples per draw."""
        return [min(1.0, expected_group_size / n) for n in self.class_counts]

    def poisson_sample(self, rates: list[float], stream: SecureRandom) -> torch.Tensor:
        """Each example of class c is included independently with probability rates[c] (exactly, see
        ``owner_node.randomness``), decided by the owner's secret stream."""
        chosen = [ix[stream.bernoulli(len(ix), q)] for ix, q in zip(self.by_class, rates, strict=True)]
        return torch.cat(chosen)


def load_private_data(config: OwnerConfig) -> PrivateData:
    data = load_image_set(config.data_source, config.data_path, train=True)
    return PrivateData.from_image_set(data, config.normalization)


def load_auxiliary(config: OwnerConfig) -> ImageSet:
    """The public auxiliary images the owner agreed to use for subspaces (pinned by hash)."""
    return load_npz(config.aux_path)
