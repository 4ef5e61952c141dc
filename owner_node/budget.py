"""Budget policy: the owner's configured (epsilon, delta) against everything in its ledger."""

from __future__ import annotations

from owner_node.config import OwnerConfig
from shared.accounting import SampledGaussianEvent, epsilon
from shared.messages import BudgetReport

PUBLIC_FACTS = (
    "class names",
    "number of private examples per class",
    "image shape",
    "normalisation constants",
    "the public auxiliary image set (by content hash)",
    "network architectures and seeds, augmentation seeds, subspace dimension (chosen by the distiller)",
)


def public_facts(config: OwnerConfig) -> tuple[str, ...]:
    if config.class_counts == "public":
        return PUBLIC_FACTS
    noisy = (
        f"number of private examples per class: published with DP (epsilon {config.class_counts_epsilon} of the budget)"
    )
    return tuple(noisy if f == "number of private examples per class" else f for f in PUBLIC_FACTS)


def within_budget(config: OwnerConfig, events: list[SampledGaussianEvent]) -> bool:
    return epsilon(events, config.delta, config.accountant) <= config.epsilon


def budget_report(
    config: OwnerConfig, events: list[SampledGaussianEvent], outstanding: list[SampledGaussianEvent] = ()
) -> BudgetReport:
    """Spent (``events``) and committed (also what accepted run plans still hold, ``outstanding``)."""
    outstanding = list(outstanding)
    return BudgetReport(
        owner_id=config.owner_id,
        epsilon_budget=config.epsilon,
        delta=config.delta,
        epsilon_prv=epsilon(events, config.delta, "prv"),
        epsilon_rdp=epsilon(events, config.delta, "rdp"),
        num_requests=len(events),
        num_draws=sum(e.count for e in events),
        clip_norm=config.clip_norm,
        events=tuple(events),
        public=public_facts(config),
        accountant=config.accountant,
        epsilon_committed=epsilon(events + outstanding, config.delta, config.accountant),
        reserved_releases=sum(e.count for e in outstanding),
        noise_sampler=config.noise_sampler,
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
