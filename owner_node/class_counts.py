"""Class counts published with differential privacy (``[privacy] class_counts = "dp"``).

By default an owner's per-class counts are public (Describe). For a rare disease the count of
patients can itself be sensitive, so the owner may instead publish them once through the Gaussian
mechanism, paid for from its own budget with a small share (``class_counts_epsilon``), through the
same ledger and accountant as every other release. The noisy counts are drawn once, recorded in the
ledger before anything is published, and read back from it at every restart (post-processing), so
they never cost twice and never change.

Sensitivity: one image changes one count by 1. In patient mode a patient's count vector (its images
per class) is clipped to L2 norm ``class_counts_patient_clip`` before summing, so one patient moves
the counts by at most that much; the noise is scaled to it.
"""

from __future__ import annotations

import json

import torch

from owner_node.budget import Budget, BudgetExceeded
from owner_node.config import OwnerConfig
from owner_node.ledger import Ledger
from owner_node.randomness import SecureRandom, noisy
from shared.accounting import noise_for_budget
from shared.wire.privacy_event import SampledGaussianEvent

# Not a valid distiller request id (those never hold '#'): no request can read or replace it.
COUNTS_RELEASE_ID = "#class-counts"


def clipped_counts(labels: torch.Tensor, num_classes: int, patients: torch.Tensor | None, clip: float) -> torch.Tensor:
    """Per-class counts [num_classes] float64; in patient mode each patient's count vector clipped to ``clip``."""
    if patients is None:
        return torch.bincount(labels, minlength=num_classes).to(torch.float64)
    num = int(patients.max()) + 1
    per_patient = torch.zeros(num * num_classes, dtype=torch.float64)
    per_patient.index_add_(0, patients * num_classes + labels, torch.ones(len(labels), dtype=torch.float64))
    per_patient = per_patient.view(num, num_classes)
    norms = torch.linalg.vector_norm(per_patient, dim=1, keepdim=True)
    return (per_patient * (clip / torch.clamp(norms, min=clip))).sum(0)


def sensitivity(config: OwnerConfig) -> float:
    return config.class_counts_patient_clip if config.privacy_unit == "patient" else 1.0


def counts_noise_multiplier(config: OwnerConfig) -> float:
    """sigma for one Gaussian release (q = 1) spending ``class_counts_epsilon`` at the owner's delta."""
    return noise_for_budget(config.class_counts_epsilon, config.delta, 1.0, 1, config.accountant)


def published_counts(
    config: OwnerConfig,
    ledger: Ledger,
    labels: torch.Tensor,
    num_classes: int,
    patients: torch.Tensor | None,
    rule: Budget | None = None,
) -> tuple[int, ...]:
    """The counts Describe publishes: the true ones, or (``dp``) the ledger's noisy ones, drawn once."""
    if config.class_counts == "public":
        return tuple(torch.bincount(labels, minlength=num_classes).tolist())
    stored = ledger.reply(COUNTS_RELEASE_ID)
    if stored is not None:
        return tuple(json.loads(stored)["counts"])
    sigma = counts_noise_multiplier(config)
    event = SampledGaussianEvent(sigma, 1.0, 1)
    try:
        ledger.reserve(COUNTS_RELEASE_ID, "class-counts", event, (rule or Budget(config)).check)
    except BudgetExceeded as exc:
        raise ValueError(
            f'[privacy] class_counts = "dp" needs epsilon {config.class_counts_epsilon} of the budget, which the '
            "ledger no longer has"
        ) from exc
    clean = clipped_counts(labels, num_classes, patients, sensitivity(config))
    released = noisy(clean, sigma * sensitivity(config), config.noise_sampler, SecureRandom())
    # Post-processing: whole numbers, at least 1 (a rate g / n_min needs n_min > 0).
    counts = tuple(max(1, int(round(float(v)))) for v in released)
    record = {"counts": list(counts), "noise_multiplier": sigma, "sensitivity": sensitivity(config)}
    ledger.record_reply(COUNTS_RELEASE_ID, json.dumps(record).encode())
    return counts
