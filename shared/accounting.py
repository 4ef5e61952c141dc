"""Privacy accounting: releases as composable, serialisable events; epsilon from opacus accountants.

A release of D draws at noise multiplier sigma and Poisson rate q is D compositions of the
sampled Gaussian mechanism. The owner enforces its budget with these functions and the distiller
plans its noise with the very same ones, so a plan made to fit the budget is accepted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

METHODS = ("prv", "rdp")
PRV_EPS_ERROR = 0.01
# opacus's default orders plus large ones, which matter when sigma is big or q is large.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024, 4096]


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


def compose(events: Iterable[SampledGaussianEvent]) -> list[SampledGaussianEvent]:
    """Merge neighbouring events with equal parameters (composition is order-free for these)."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (e.noise_multiplier, e.sample_rate)
        merged[key] = merged.get(key, 0) + e.count
    return [SampledGaussianEvent(s, q, n) for (s, q), n in merged.items()]


def _accountant(method: str):
    if method == "prv":
        return PRVAccountant()
    if method == "rdp":
        return RDPAccountant()
    raise ValueError(f"unknown accountant {method!r}; known: {', '.join(METHODS)}")


def epsilon(events: Iterable[SampledGaussianEvent], delta: float, method: str = "prv") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (PRV: opacus's upper bound)."""
    events = compose(events)
    if not events:
        return 0.0
    acc = _accountant(method)
    acc.history = [(e.noise_multiplier, e.sample_rate, e.count) for e in events]
    with warnings.catch_warnings():
        # Raised when the best RDP order is the largest one tried (PRV uses RDP to size its grid);
        # larger orders could only tighten the RDP bound, so the value stays a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if method == "prv":
            # At q = 1 opacus's PRV evaluates log(1 - q) = -inf, which its comparison then uses as
            # meant; numpy's "divide by zero" warning about it is noise, not an error.
            with np.errstate(divide="ignore"):
                return float(acc.get_epsilon(delta, eps_error=PRV_EPS_ERROR))
        return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))


def noise_for_budget(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    count: int,
    method: str = "prv",
    prior: Iterable[SampledGaussianEvent] = (),
    tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``tolerance``) whose ``count`` draws keep the total within budget."""
    prior = list(prior)

    def eps_at(sigma: float) -> float:
        return epsilon(prior + [SampledGaussianEvent(sigma, sample_rate, count)], delta, method)

    low, high = 0.3, 1.0
    while eps_at(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise level reaches epsilon {target_epsilon} with {count} draws at q={sample_rate}")
    while high - low > tolerance:
        mid = 0.5 * (low + high)
        if eps_at(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
