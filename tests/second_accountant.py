"""A second, independent accountant: Google's dp-accounting (PLD and RDP) over our release events.

Our epsilons come from opacus (PRV for the budget, RDP as a cross-check). These functions rebuild
the same composition as dp-accounting events so a test can check every reported figure against a
different implementation of the same mathematics.
"""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from shared.accounting import RDP_ORDERS
from shared.wire.privacy_event import SampledGaussianEvent

# PLD's pessimistic discretisation rounds privacy loss up in steps of this size, so its epsilon is
# an upper bound itself and lies within about this tolerance of the exact value.
PLD_DISCRETISATION = 1e-4
PLD_TOLERANCE = 2e-3


def as_dp_event(events: Iterable[SampledGaussianEvent]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
                e.count,
            )
            for e in events
        ]
    )


def pld_epsilon(events: Iterable[SampledGaussianEvent], delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETISATION)
    acc.compose(as_dp_event(events))
    return float(acc.get_epsilon(delta))


def rdp_epsilon(events: Iterable[SampledGaussianEvent], delta: float) -> float:
    acc = rdp_privacy_accountant.RdpAccountant(orders=RDP_ORDERS)
    acc.compose(as_dp_event(events))
    return float(acc.get_epsilon(delta))


def check_reported(events: list[SampledGaussianEvent], delta: float, prv: float, rdp: float) -> None:
    """Reported PRV is never below the PLD value; reported RDP is dp-accounting's RDP (same orders)."""
    pld = pld_epsilon(events, delta)
    assert prv >= pld - PLD_TOLERANCE, f"reported epsilon {prv} is below the PLD value {pld}"
    assert prv <= pld + 0.05 + 0.02 * pld, f"reported epsilon {prv} is far looser than the PLD value {pld}"
    # Both RDP figures are upper bounds from the same orders; the two libraries evaluate the
    # subsampled-Gaussian RDP for fractional orders differently (measured gap up to 0.15%).
    theirs = rdp_epsilon(events, delta)
    assert rdp == pytest.approx(theirs, rel=0.01), (rdp, theirs)
