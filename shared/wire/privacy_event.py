"""A release as the accountants see it: ``count`` compositions of the sampled Gaussian mechanism.

A plain value, no maths library: messages carry events (``shared.wire.messages``) and the wire decodes
them without loading the accountants, which ``shared.accounting`` holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SampledGaussianEvent:
    """``count`` compositions of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    count: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise multiplier must be finite and > 0, got {self.noise_multiplier}")
        if not (0 < self.sample_rate <= 1):
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if int(self.count) != self.count or self.count < 1:
            raise ValueError(f"count must be a positive integer, got {self.count}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SampledGaussianEvent:
        return cls(float(d["noise_multiplier"]), float(d["sample_rate"]), int(d["count"]))
