"""The owner's private data: loaded once, held as uint8 (4x smaller than floats), grouped by class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from owner_node.config import OwnerConfig
from owner_node.randomness import SecureRandom
from shared.datasets import ImageSet, load_npz, to_float
from shared.images.source import load_source


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


def load_private_images(config: OwnerConfig, progress: bool = True) -> ImageSet:
    """The owner's images as its ``[data]`` section describes them (any ``shared.images`` source kind).

    Decoded images are cached as uint8 in ``config.image_cache_dir`` (beside the ledger by default,
    so private pixels stay in the owner's own storage), which makes a restart take seconds.
    """
    result = load_source(config.image_source(), progress=progress, cache_dir=config.image_cache_dir)
    return result.data


def public_normalization(aux: ImageSet) -> tuple[float, float]:
    """Pixel mean and std of the *public* auxiliary set: the default scaling (never private pixels)."""
    pixels = aux.images.to(torch.float64) / 255.0
    std = float(pixels.std())
    return float(pixels.mean()), std if std > 0 else 1.0


def normalization_for(config: OwnerConfig, aux: ImageSet) -> tuple[float, float]:
    """The owner's configured constants, or else the public auxiliary set's (Describe publishes them)."""
    if config.normalization is not None:
        return (float(config.normalization[0]), float(config.normalization[1]))
    return public_normalization(aux)


def load_private_data(config: OwnerConfig, normalization: tuple[float, float], progress: bool = True) -> PrivateData:
    return PrivateData.from_image_set(load_private_images(config, progress), normalization)


def load_auxiliary(config: OwnerConfig) -> ImageSet:
    """The public auxiliary images the owner agreed to use for subspaces (pinned by hash)."""
    return load_npz(config.aux_path)
