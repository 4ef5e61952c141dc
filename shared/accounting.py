"""Privacy accounting: releases as composable, serialisable events; epsilon from opacus accountants.

A release of D draws at noise multiplier sigma and Poisson rate q is D compositions of the
sampled Gaussian mechanism. The owner enforces its budget with these functions and the distiller
plans its noise with the very same ones, so a plan made to fit the budget is accepted.

The accountant's work is bounded whatever it is given (a hostile plan must not take the owner's
memory or its time): events with equal parameters are merged; beyond ``MAX_DISTINCT_EVENTS``
distinct (sigma, q) pairs, sigma is rounded down and q up onto a geometric grid, which can only
raise epsilon (the subsampled Gaussian loses privacy as sigma falls and q rises), so the result
stays an upper bound; and PRV refuses (``AccountingTooCostly``) a composition whose discretisation
would exceed ``MAX_PRV_POINTS``. ``epsilon_lower_bound`` then proves, cheaply, that such a
composition is over a budget. Any result that is not a finite number >= 0 raises
``AccountingError``: it is never read as a credit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from shared.wire.privacy_event import SampledGaussianEvent

ACCOUNTANTS = ("prv", "rdp")  # the accountants ([privacy] accountant): PRV, RDP
PRV_EPS_ERROR = 0.01
# opacus's default orders plus large ones, which matter when sigma is big or q is large.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024, 4096]
# Beyond this many distinct (sigma, q) pairs the events are coarsened (upper bound): PRV's cost grows
# with each distinct pair (about 0.1 s each at a 100k-point grid), RDP's with each as well.
MAX_DISTINCT_EVENTS = 8
# PRV discretises every distinct event on one grid: about 160 bytes and 1 microsecond a point on
# these CPUs. 2.5M points (grid x distinct events) keeps one evaluation near 400 MB and 3 s.
MAX_PRV_POINTS = 2_500_000
# PRV's floating-point check refuses deltas near the grid size times long double precision.
MIN_DELTA = 1e-12
# The delta an owner and a run use unless told otherwise (the one home of this default).
DEFAULT_DELTA = 1e-5
# Largest epsilon any budget or target may name: beyond it the noise floors bind and nothing changes.
MAX_EPSILON = 1000.0


class AccountingError(ValueError):
    """The accountant failed or gave a value that is not a finite epsilon >= 0 (never a credit)."""


class AccountingTooCostly(AccountingError):
    """PRV would need more than ``MAX_PRV_POINTS`` grid points for this composition."""

    def __init__(self, message: str, points: float):
        super().__init__(message)
        self.points = points


def compose(events: Iterable[SampledGaussianEvent]) -> list[SampledGaussianEvent]:
    """Merge events with equal parameters (composition is order-free for these)."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (e.noise_multiplier, e.sample_rate)
        merged[key] = merged.get(key, 0) + e.count
    return [SampledGaussianEvent(s, q, n) for (s, q), n in merged.items()]


def _grid_down(x: float, ratio: float) -> float:
    """The largest power of ``ratio`` that is <= x (exactly: float error never rounds up)."""
    k = math.floor(math.log(x) / math.log(ratio))
    while ratio**k > x:
        k -= 1
    return ratio**k


def _grid_up(x: float, ratio: float) -> float:
    k = math.ceil(math.log(x) / math.log(ratio))
    while ratio**k < x:
        k += 1
    return ratio**k


def accountable(events: Iterable[SampledGaussianEvent]) -> list[SampledGaussianEvent]:
    """At most ``MAX_DISTINCT_EVENTS`` events whose composition is at least as costly as ``events``'.

    Equal parameters merge exactly; beyond the limit sigma goes down and q up onto a geometric grid,
    coarser until few enough pairs remain (ratio 1.02, then 1.04, ...): an upper bound, tight where
    the events already share parameters, as one run's releases do.
    """
    merged = compose(events)
    ratio = 1.02
    while len(merged) > MAX_DISTINCT_EVENTS:
        merged = compose(
            SampledGaussianEvent(
                _grid_down(e.noise_multiplier, ratio), min(1.0, _grid_up(e.sample_rate, ratio)), e.count
            )
            for e in merged
        )
        ratio = ratio**2
    return merged


def _checked(value: float, method: str, delta: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise AccountingError(
            f"the {method.upper()} accountant gave epsilon = {value} at delta = {delta:g}: not a finite value >= 0 "
            "(delta too large for the data, or parameters outside the accountant's range)"
        )
    return float(value)


def _check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and MIN_DELTA <= delta < 1):
        raise AccountingError(f"delta must be in [{MIN_DELTA:g}, 1), got {delta}")


@dataclass(frozen=True)
class _PrvGrid:
    """How PRV would discretise a composition: opacus's safe domain [-size, size] at step ``mesh``."""

    prvs: list
    counts: list[int]
    size: float
    mesh: float
    delta_error: float

    @property
    def points(self) -> float:
        """PRV's work: grid points times distinct events (each is discretised and composed on the grid)."""
        return 2 * self.size / self.mesh * len(self.prvs)


def _prv_grid(events: list[SampledGaussianEvent], delta: float) -> _PrvGrid:
    """The grid, sized cheaply (RDP bounds the domain) before any discretisation."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(e.sample_rate, e.noise_multiplier) for e in events]
    counts = [e.count for e in events]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        size = compute_safe_domain_size(
            prvs=prvs, max_self_compositions=counts, eps_error=PRV_EPS_ERROR, delta_error=delta_error
        )
    mesh = PRV_EPS_ERROR / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
    return _PrvGrid(prvs, counts, size, mesh, delta_error)


def prv_points(events: Iterable[SampledGaussianEvent], delta: float) -> float:
    """PRV's work for ``events``: grid points times distinct events (cheap: RDP sizes the grid)."""
    events = accountable(events)
    return _prv_grid(events, delta).points if events else 0.0


def _prv_bounds(events: list[SampledGaussianEvent], delta: float) -> tuple[float, float]:
    """(lower, upper) epsilon of ``events`` at ``delta`` from opacus's PRV discretisation."""
    from opacus.accountants.analysis.prv import (
        Domain,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        discretize,
    )

    grid = _prv_grid(events, delta)
    if grid.points > MAX_PRV_POINTS:
        raise AccountingTooCostly(
            f"PRV accounting of {sum(grid.counts)} releases in {len(events)} distinct (sigma, q) pairs would need "
            f"{grid.points:.3g} grid points, above the bound of {MAX_PRV_POINTS:g} (epsilon this large, or this many "
            "releases, is beyond what the owner accounts for)",
            grid.points,
        )
    domain = Domain.create_aligned(-grid.size, grid.size, grid.mesh)
    # At q = 1 opacus evaluates log(1 - q) = -inf, which its comparison then uses as meant.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        dprvs = [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in grid.prvs]
        composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=grid.counts)
        try:
            lower, _, upper = composed.compute_epsilon(delta, grid.delta_error, PRV_EPS_ERROR)
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            raise AccountingError(f"the PRV accountant failed at delta = {delta:g}: {exc}") from exc
    return float(lower), float(upper)


def _rdp(events: list[SampledGaussianEvent], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(e.noise_multiplier, e.sample_rate, e.count) for e in events]
    with warnings.catch_warnings():
        # Raised when the best RDP order is the largest one tried; larger orders could only
        # tighten the RDP bound, so the value stays a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))


def epsilon(events: Iterable[SampledGaussianEvent], delta: float, method: str = "prv") -> float:
    """Epsilon at ``delta`` of the composition of ``events``: an upper bound (PRV: opacus's upper estimate).

    Raises ``AccountingError`` for a failure or a value that is not finite and >= 0, and
    ``AccountingTooCostly`` where PRV's work would exceed its bound.
    """
    if method not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {method!r}; known: {', '.join(ACCOUNTANTS)}")
    _check_delta(delta)
    events = accountable(events)
    if not events:
        return 0.0
    if method == "prv":
        value = _prv_bounds(events, delta)[1]
    else:
        try:
            value = _rdp(events, delta)
        except (ValueError, OverflowError, ZeroDivisionError) as exc:
            raise AccountingError(f"the RDP accountant failed at delta = {delta:g}: {exc}") from exc
    return _checked(value, method, delta)


def epsilon_lower_bound(events: Iterable[SampledGaussianEvent], delta: float, target: float = math.inf) -> float:
    """A provable lower bound on the true epsilon of ``events``, at bounded cost.

    Composing more releases never lowers epsilon, so the PRV lower estimate of a part of the
    composition (the event with the largest RDP epsilon, at a count PRV's grid can hold) bounds the
    whole from below. The part starts small and doubles until its bound exceeds ``target`` or the
    next doubling would not fit: a hostile plan is disproved in one cheap step. Used to refuse, with
    proof, what is too costly to account for exactly. Returns 0.0 where no part fits.
    """
    _check_delta(delta)
    events = compose(events)
    if not events:
        return 0.0
    worst = max(events, key=lambda e: _rdp([e], delta))
    best, count = 0.0, 1
    # The smallest part whose grid is a sixteenth of the bound, found by doubling (grid ~ sqrt(count)).
    while count * 2 <= worst.count and prv_points([_part(worst, count * 2)], delta) <= MAX_PRV_POINTS / 16:
        count *= 2
    while True:
        try:
            lower = _prv_bounds([_part(worst, count)], delta)[0]
        except AccountingError:
            return best
        if math.isfinite(lower):
            best = max(best, lower)
        if best > target or count >= worst.count:
            return best
        count = min(worst.count, count * 2)
        if prv_points([_part(worst, count)], delta) > MAX_PRV_POINTS / 4:  # the proof stays well within the bound
            return best


def _part(event: SampledGaussianEvent, count: int) -> SampledGaussianEvent:
    return SampledGaussianEvent(event.noise_multiplier, event.sample_rate, count)


def noise_for_budget(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    count: int,
    method: str = "prv",
    prior: Iterable[SampledGaussianEvent] = (),
    tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``tolerance``) whose ``count`` draws keep the total within budget.

    A composition too costly to account for counts as over the budget (it only happens at large
    epsilon), so the search moves to more noise.
    """
    prior = list(prior)

    def over(sigma: float) -> bool:
        try:
            return epsilon(prior + [SampledGaussianEvent(sigma, sample_rate, count)], delta, method) > target_epsilon
        except AccountingTooCostly:
            return True

    low, high = 0.3, 1.0
    while over(high):
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise level reaches epsilon {target_epsilon} with {count} draws at q={sample_rate}")
    while high - low > tolerance:
        mid = 0.5 * (low + high)
        if over(mid):
            low = mid
        else:
            high = mid
    return high
