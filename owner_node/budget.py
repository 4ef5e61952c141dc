"""The owner's one budget rule: what counts as spent and committed, what is left, and whether more fits.

The ledger, the service, class-count releases and the reports all ask ``Budget``; no other place
compares an epsilon with the owner's budget. Every number comes from the owner's own config (its
epsilon, delta and accountant), never from a message.

The accountant's work is bounded (``shared.accounting``): a composition too costly for PRV is refused
with proof where a cheap lower bound already exceeds the budget, and refused as too costly otherwise.
An accountant failure, or a value that is not a finite epsilon >= 0, is a refusal, never a credit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

from owner_node.config import OwnerConfig
from shared.accounting import (
    AccountingError,
    AccountingTooCostly,
    SampledGaussianEvent,
    epsilon,
    epsilon_lower_bound,
)
from shared.wire.messages import BudgetReport

PUBLIC_FACTS = (
    "class names",
    "number of private examples per class",
    "image shape",
    "normalisation constants",
    "the public auxiliary image set (by content hash)",
    "network architectures and seeds, augmentation seeds, subspace dimension (chosen by the distiller)",
)


class BudgetExceeded(RuntimeError):
    """The release would take the owner past its configured budget."""


class AccountingRefused(RuntimeError):
    """The accountant cannot vouch for this composition (too costly to account for, or it failed)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def public_facts(config: OwnerConfig) -> tuple[str, ...]:
    if config.class_counts == "public":
        return PUBLIC_FACTS
    noisy = (
        f"number of private examples per class: published with DP (epsilon {config.class_counts_epsilon} of the budget)"
    )
    return tuple(noisy if f == "number of private examples per class" else f for f in PUBLIC_FACTS)


def remaining(budget: float, spent: float, committed: float) -> float:
    """What a new run may still spend: never above the budget, and 0 where any figure is not a finite
    epsilon >= 0 (a failed or negative accountant result is never a credit)."""
    if not all(math.isfinite(v) and v >= 0 for v in (budget, spent, committed)):
        return 0.0
    return min(budget, max(0.0, budget - max(spent, committed)))


class Budget:
    """The owner's (epsilon, delta) and accountant, applied to lists of events.

    One accountant evaluation runs at a time (``_slot``): each is bounded in memory, and concurrent
    hostile requests must not multiply that bound. It is never held with the ledger's lock.
    """

    def __init__(self, config: OwnerConfig):
        self.config = config
        self._slot = threading.Lock()

    @property
    def limit(self) -> float:
        return self.config.epsilon

    def epsilon(self, events: Iterable[SampledGaussianEvent], method: str | None = None) -> float:
        """Epsilon at the owner's delta (an upper bound) under ``method`` (default: the enforced accountant)."""
        with self._slot:
            return epsilon(list(events), self.config.delta, method or self.config.accountant)

    def check(self, events: list[SampledGaussianEvent]) -> float:
        """Epsilon of ``events`` if it fits the budget; raise ``BudgetExceeded`` or ``AccountingRefused``."""
        method = self.config.accountant
        try:
            value = self.epsilon(events)
        except AccountingTooCostly as exc:
            with self._slot:
                lower = epsilon_lower_bound(events, self.config.delta, target=self.limit)
            if lower > self.limit:
                raise BudgetExceeded(
                    f"refused: it would exceed the owner's privacy budget (epsilon at least {lower:.4g} at delta "
                    f"{self.config.delta:g}, proven on part of it: {method.upper()} accounting of the whole would be "
                    "too costly)"
                ) from exc
            raise AccountingRefused("too_large", f"refused: {exc}") from exc
        except AccountingError as exc:
            raise AccountingRefused("accounting_failed", f"refused: {exc}") from exc
        if value > self.limit:
            raise BudgetExceeded("refused: it would exceed the owner's privacy budget")
        return value

    def report(
        self, events: list[SampledGaussianEvent], outstanding: Iterable[SampledGaussianEvent] = ()
    ) -> BudgetReport:
        """Spent (``events``) and committed (also what accepted run plans still hold, ``outstanding``).

        Raises ``AccountingRefused`` where an accountant cannot give a value (never reported as 0).
        """
        outstanding = list(outstanding)
        config = self.config
        try:
            spent_prv = self.epsilon(events, "prv")
            spent_rdp = self.epsilon(events, "rdp")
            committed = self.epsilon(events + outstanding)
        except AccountingError as exc:
            raise AccountingRefused("accounting_failed", f"the budget report cannot be computed: {exc}") from exc
        return BudgetReport(
            owner_id=config.owner_id,
            epsilon_budget=config.epsilon,
            delta=config.delta,
            epsilon_prv=spent_prv,
            epsilon_rdp=spent_rdp,
            num_requests=len(events),
            num_draws=sum(e.count for e in events),
            clip_norm=config.clip_norm,
            events=tuple(events),
            public=public_facts(config),
            accountant=config.accountant,
            epsilon_committed=committed,
            reserved_releases=sum(e.count for e in outstanding),
            noise_sampler=config.noise_sampler,
            epsilon_remaining=remaining(
                config.epsilon, spent_rdp if config.accountant == "rdp" else spent_prv, committed
            ),
        )


def format_budget(report: BudgetReport) -> str:
    lines = [
        f"owner:              {report.owner_id}",
        f"budget:             epsilon {report.epsilon_budget} at delta {report.delta:g}",
        f"spent (PRV):        epsilon {report.epsilon_prv:.4f}   (RDP: {report.epsilon_rdp:.4f})",
        f"committed ({report.accountant.upper()}):    epsilon {report.epsilon_committed:.4f}   "
        f"(spent, plus {report.reserved_releases} releases that accepted run plans still hold)",
        f"remaining ({report.accountant.upper()}):    epsilon {report.epsilon_remaining:.4f}   "
        f"(the budget is enforced with {report.accountant.upper()})",
        f"requests / draws:   {report.num_requests} / {report.num_draws}",
        f"noise sampler:      {report.noise_sampler}",
        f"clip norm:          {report.clip_norm}",
    ]
    return "\n".join(lines)
