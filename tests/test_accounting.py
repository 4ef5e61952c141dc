"""Our accounting agrees with opacus's own accountants stepped one release at a time."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from shared.accounting import RDP_ORDERS, compose, epsilon, noise_for_budget
from shared.wire.privacy_event import SampledGaussianEvent


@pytest.mark.parametrize("sigma, q, steps", [(1.25, 50 / 6000, 1000), (0.9, 0.01, 200), (3.0, 0.05, 50)])
def test_epsilon_matches_opacus_step_by_step(sigma: float, q: float, steps: int) -> None:
    prv, rdp = PRVAccountant(), RDPAccountant()
    for _ in range(steps):
        prv.step(noise_multiplier=sigma, sample_rate=q)
        rdp.step(noise_multiplier=sigma, sample_rate=q)
    event = [SampledGaussianEvent(sigma, q, steps)]
    assert epsilon(event, 1e-5, "prv") == pytest.approx(prv.get_epsilon(1e-5, eps_error=0.01), rel=1e-9)
    assert epsilon(event, 1e-5, "rdp") == pytest.approx(rdp.get_epsilon(1e-5, alphas=RDP_ORDERS), rel=1e-9)


def test_design_reference_values() -> None:
    # DESIGN section 6: epsilon 1 at delta 1e-5 needs sigma about 1.25 (PRV) / 1.34 (RDP) for 1,000 draws.
    q = 50 / 6000
    assert epsilon([SampledGaussianEvent(1.25, q, 1000)], 1e-5, "prv") == pytest.approx(1.0, abs=0.03)
    assert epsilon([SampledGaussianEvent(1.34, q, 1000)], 1e-5, "rdp") == pytest.approx(1.0, abs=0.03)


def test_heterogeneous_events_compose() -> None:
    events = [
        SampledGaussianEvent(1.0, 0.01, 100),
        SampledGaussianEvent(2.0, 0.02, 50),
        SampledGaussianEvent(1.0, 0.01, 20),
    ]
    assert compose(events) == [SampledGaussianEvent(1.0, 0.01, 120), SampledGaussianEvent(2.0, 0.02, 50)]
    prv = PRVAccountant()
    prv.history = [(1.0, 0.01, 120), (2.0, 0.02, 50)]
    assert epsilon(events, 1e-5) == pytest.approx(prv.get_epsilon(1e-5, eps_error=0.01), rel=1e-9)
    assert epsilon(events, 1e-5) > epsilon(events[:1], 1e-5)


def test_planned_noise_fits_the_budget_tightly() -> None:
    sigma = noise_for_budget(1.0, 1e-5, 50 / 6000, 200)
    assert epsilon([SampledGaussianEvent(sigma, 50 / 6000, 200)], 1e-5) <= 1.0
    assert epsilon([SampledGaussianEvent(sigma * 0.99, 50 / 6000, 200)], 1e-5) > 0.99


def test_events_serialise_and_reject_nonsense() -> None:
    e = SampledGaussianEvent(1.5, 0.01, 7)
    assert SampledGaussianEvent.from_dict(e.to_dict()) == e
    for bad in [(0.0, 0.1, 1), (float("nan"), 0.1, 1), (1.0, 1.5, 1), (1.0, 0.1, 0)]:
        with pytest.raises(ValueError):
            SampledGaussianEvent(*bad)
