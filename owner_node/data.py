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

    def sample_rate(self, expected_group_size: float) -> float:
        """One rate q = g / n_min (capped at 1) for every class: the smallest class contributes about ``g``
        examples per draw and class c about q * n_c.

        The guarantee depends only on the largest rate, so sampling the large classes at that same
        rate costs nothing and raises their signal-to-noise (imbalanced data: a rare finding of a few
        hundred images beside tens of thousands of normal ones).
        """
        return min(1.0, expected_group_size / min(self.class_counts))

    def sample_rates(self, expected_group_size: float) -> list[float]:
        """Each class's rate: the one rate of ``sample_rate`` (the samplers take a rate per class)."""
        return [self.sample_rate(expected_group_size)] * len(self.by_class)

    def expected_sample(self, expected_group_size: float) -> float:
        """Expected records in one draw, all classes together: the owner's compute per draw."""
        return self.sample_rate(expected_group_size) * sum(self.class_counts)

    def poisson_sample(self, rates: list[float], stream: SecureRandom) -> torch.Tensor:
        """Each example of class c is included independently with probability rates[c] (exactly, see
        ``owner_node.randomness``), decided by the owner's secret stream."""
        chosen = [ix[stream.bernoulli(len(ix), q)] for ix, q in zip(self.by_class, rates, strict=True)]
        return torch.cat(chosen)


def holdout_split(data: ImageSet, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(release indices, held-out indices): ``fraction`` of each class, drawn with a fixed seed.

    Every class keeps at least one image on each side (refused otherwise), so the released
    statistics and the evaluation both cover every class.
    """
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c, name in enumerate(data.class_names):
        ix = torch.nonzero(data.labels == c).flatten()
        n_held = round(fraction * len(ix))
        if fraction > 0 and not 1 <= n_held < len(ix):
            raise ValueError(
                f"[data] holdout = {fraction}: class {name!r} has {len(ix)} images, too few to keep "
                f"{fraction:.0%} of them apart and still release the rest"
            )
        order = ix[torch.randperm(len(ix), generator=g)]
        held.append(order[:n_held])
        keep.append(order[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def load_owner_images(config: OwnerConfig, progress: bool = True) -> tuple[ImageSet, ImageSet | None]:
    """(the images releases are computed from, the held-out split or None) as ``[data]`` describes them.

    Decoded images are cached as uint8 in ``config.image_cache_dir`` (beside the ledger by default,
    so private pixels stay in the owner's own storage), which makes a restart take seconds.
    """
    data = load_source(config.image_source(), progress=progress, cache_dir=config.image_cache_dir).data
    if not config.holdout:
        return data, None
    release, held = holdout_split(data, config.holdout, config.holdout_seed)
    return data.subset(release), data.subset(held)


def load_private_images(config: OwnerConfig, progress: bool = True) -> ImageSet:
    """The images every release is computed from: the private set less any held-out split."""
    return load_owner_images(config, progress)[0]


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
