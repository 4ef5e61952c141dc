"""Every epsilon we report, recomputed by a second implementation (dp-accounting PLD and RDP)."""

from __future__ import annotations

import pytest

from owner_node.ledger import Ledger
from owner_node.service import OwnerService
from shared.accounting import epsilon, noise_for_budget
from shared.wire.messages import BudgetReport, BudgetRequest, ErrorReply
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, make_owner_config
from tests.second_accountant import PLD_TOLERANCE, check_reported, pld_epsilon

E = SampledGaussianEvent
CASES = {
    "readme default": [E(0.9139, 50 / 6000, 200)],
    "design 1000 draws": [E(1.25, 50 / 6000, 1000)],
    "design eps 10": [E(0.52, 50 / 6000, 1000)],
    "mixed sigma and q": [E(1.0, 0.01, 100), E(2.0, 0.02, 50), E(4.0, 0.05, 7)],
    "full batch, few draws": [E(5.0, 1.0, 2)],
    "tiny epsilon": [E(50.0, 1.0, 1)],
}


@pytest.mark.parametrize("events", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("delta", [1e-5, 1e-6])
def test_accountant_agrees_with_dp_accounting(events: list[SampledGaussianEvent], delta: float) -> None:
    check_reported(events, delta, epsilon(events, delta, "prv"), epsilon(events, delta, "rdp"))


def test_planned_noise_also_fits_the_budget_under_pld() -> None:
    q = 50 / 6000
    for eps, draws in [(1.0, 200), (1.0, 1000), (10.0, 1000)]:
        sigma = noise_for_budget(eps, 1e-5, q, draws)
        assert pld_epsilon([E(sigma, q, draws)], 1e-5) <= eps + PLD_TOLERANCE


def test_owner_ledger_with_mixed_releases_is_accounted_independently(tmp_path) -> None:
    """Releases of different sigma and q land in the ledger; the budget report matches dp-accounting."""
    config = make_owner_config(tmp_path / "owner", epsilon=8.0)
    service = OwnerService(config)
    try:
        asks = [(6.0, 5.0, 3), (3.0, 10.0, 2), (1.5, 2.0, 4), (6.0, 5.0, 1)]  # sigma, group size, draws
        for i, (sigma, group, draws) in enumerate(asks):
            request = feature_request(
                service, f"mix-{i}", draws=draws, noise_multiplier=sigma, expected_group_size=group
            )
            assert not isinstance(decode(service.handle(encode(request))), ErrorReply)
        report = decode(service.handle(encode(BudgetRequest())))
        assert isinstance(report, BudgetReport)
        ledger = Ledger(config.ledger_path)
        try:
            events = ledger.events()
        finally:
            ledger.close()
        assert sorted((e.noise_multiplier, e.count) for e in events) == sorted((s, d) for s, _, d in asks)
        assert len({e.sample_rate for e in events}) == 3
        check_reported(events, config.delta, report.epsilon_prv, report.epsilon_rdp)

        # Ask for more than is left: refused, and what was spent stays within budget under PLD too.
        greedy = feature_request(service, "greedy", draws=40, noise_multiplier=0.6, expected_group_size=20.0)
        assert decode(service.handle(encode(greedy))).code == "budget_exceeded"
        assert pld_epsilon(events, config.delta) <= config.epsilon
    finally:
        service.close()
