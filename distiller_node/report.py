"""The privacy report: the owner's own account of what it released, beside the distiller's plan."""

from __future__ import annotations

import json
from pathlib import Path

from distiller_node.sampling import SamplingPlan
from shared.protocol import BudgetReport, OwnerInfo


def privacy_report(plan: SamplingPlan, budget: BudgetReport, info: OwnerInfo) -> dict:
    return {
        "guarantee": f"({budget.epsilon_prv:.4f}, {budget.delta:g})-differential privacy under add/remove of one "
        "private record, for everything the owner released (the synthetic set is post-processing)",
        "epsilon_prv": budget.epsilon_prv,
        "epsilon_rdp": budget.epsilon_rdp,
        "delta": budget.delta,
        "owner_budget_epsilon": budget.epsilon_budget,
        "owner_id": budget.owner_id,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate_q": plan.sample_rate,
        "expected_group_size": plan.group_size,
        "releases": budget.num_draws,
        "requests": budget.num_requests,
        "clip_norm": budget.clip_norm,
        "sensitivity": "each record enters at most one class sum per release, clipped to L2 norm C after projection",
        "mechanism": "Poisson-subsampled Gaussian mechanism, noise std sigma*C drawn once per release",
        "accountants": "opacus PRV (reported, upper bound, eps_error 0.01) and RDP (cross-check)",
        "events": [e.to_dict() for e in budget.events],
        "treated_as_public": list(budget.public),
        "class_counts": list(info.class_counts),
        "class_names": list(info.class_names),
        "image_shape": list(info.image_shape),
        "aux_hash": info.aux_hash,
        "plan": {
            "target_epsilon": plan.target_epsilon,
            "planned_epsilon_prv": plan.planned_epsilon("prv"),
            "draws": len(plan.network_seeds),
            "subspace_dim": plan.subspace_dim,
            "network": plan.network.to_dict(),
            "augmentation": plan.augmentation,
        },
    }


def format_report(r: dict) -> str:
    return "\n".join(
        [
            "PRIVACY REPORT",
            "==============",
            f"Guarantee: {r['guarantee']}.",
            "",
            f"epsilon (PRV accountant):   {r['epsilon_prv']:.4f}",
            f"epsilon (RDP, cross-check): {r['epsilon_rdp']:.4f}",
            f"delta:                      {r['delta']:g}",
            f"owner's budget:             epsilon {r['owner_budget_epsilon']} (owner '{r['owner_id']}')",
            f"noise multiplier sigma:     {r['noise_multiplier']:.4f}   (noise std sigma*C per coordinate)",
            f"sampling rate q:            {r['sample_rate_q']:.6f}   "
            f"(expected group size {r['expected_group_size']} per class)",
            f"releases (draws):           {r['releases']} in {r['requests']} requests",
            f"clip norm C:                {r['clip_norm']}",
            f"sensitivity:                {r['sensitivity']}",
            "",
            "Treated as public (not protected by the guarantee):",
            *[f"  - {p}" for p in r["treated_as_public"]],
            f"  class counts: {r['class_counts']}",
        ]
    )


def write_report(out: Path, report: dict) -> None:
    (out / "privacy_report.json").write_text(json.dumps(report, indent=2))
    (out / "privacy_report.txt").write_text(format_report(report) + "\n")
