"""The privacy report: each owner's own account of what it released, beside the distiller's plan."""

from __future__ import annotations

import json
from pathlib import Path

from distiller_node.methods import distillation_method
from distiller_node.sampling import SamplingPlan
from shared.wire.messages import BudgetReport, OwnerInfo

NOISE_SAMPLER_WORDS = {
    "csprng": "Gaussian noise and Poisson sample from ChaCha20 keyed with 256 bits of OS entropy per request "
    "(floating-point Gaussian sampling: the attacks on textbook float samplers are not mitigated)",
    "exact": "Gaussian noise from OpenDP's floating-point-safe Gaussian mechanism; Poisson sample from ChaCha20 "
    "keyed with 256 bits of OS entropy per request",
}


def _owner_section(plan: SamplingPlan, o: int, budget: BudgetReport, info: OwnerInfo) -> dict:
    share = plan.owners[o]
    return {
        "owner_id": budget.owner_id,
        "epsilon_prv": budget.epsilon_prv,
        "epsilon_rdp": budget.epsilon_rdp,
        "delta": budget.delta,
        "owner_budget_epsilon": budget.epsilon_budget,
        "noise_multiplier": share.noise_multiplier,
        "sample_rate_q": share.sample_rate,
        "target_epsilon": share.target_epsilon,
        "planned_epsilon_prv": plan.planned_epsilon(o, "prv"),
        "owner_accountant": budget.accountant,
        "noise_sampler": budget.noise_sampler,
        "noise_sampler_description": NOISE_SAMPLER_WORDS.get(budget.noise_sampler, budget.noise_sampler),
        "releases": budget.num_draws,
        "requests": budget.num_requests,
        "clip_norm": budget.clip_norm,
        "class_counts": list(info.class_counts),
        "privacy_unit": info.privacy_unit,
        "privacy_unit_description": PRIVACY_UNIT_WORDS[info.privacy_unit],
        "events": [e.to_dict() for e in budget.events],
        "treated_as_public": list(budget.public),
    }


PRIVACY_UNIT_WORDS = {
    "image": "differential privacy of each image",
    "patient": "differential privacy of each patient's data (all of a patient's images are one record, "
    "its whole contribution to a release clipped to C)",
}


def privacy_report(
    plan: SamplingPlan, budgets: list[BudgetReport], infos: list[OwnerInfo], public_fit: str | None = None
) -> dict:
    """Top-level figures are those of the owner with the largest epsilon; ``owners`` has each one.

    ``public_fit`` says what public data the synthetic set was fitted to besides the releases (None: nothing).
    """
    owners = [_owner_section(plan, o, b, i) for o, (b, i) in enumerate(zip(budgets, infos, strict=True))]
    worst = max(owners, key=lambda s: s["epsilon_prv"])
    each = "; ".join(
        f"owner '{s['owner_id']}': ({s['epsilon_prv']:.4f}, {s['delta']:g}), {PRIVACY_UNIT_WORDS[s['privacy_unit']]}"
        for s in owners
    )
    return {
        "guarantee": f"{each} - under add/remove of one record of that owner's data, for everything that owner "
        "released (the synthetic set is post-processing); figures count the owner's whole ledger",
        "privacy_unit": worst["privacy_unit"],
        **{k: worst[k] for k in ("epsilon_prv", "epsilon_rdp", "delta", "owner_budget_epsilon", "owner_id")},
        **{k: worst[k] for k in ("noise_multiplier", "sample_rate_q", "releases", "requests", "clip_norm")},
        "expected_group_size": plan.group_size,
        "combined_expected_group_size": plan.group_size * len(owners),
        "signal": plan.signal,
        "sensitivity": distillation_method(plan.signal).sensitivity,
        "public_fit": public_fit,
        "mechanism": "Poisson-subsampled Gaussian mechanism, noise std sigma*C drawn once per release by each owner",
        "noise_sampler": worst["noise_sampler"],
        "noise_sampler_description": worst["noise_sampler_description"],
        "accountants": "opacus PRV (reported, upper bound, eps_error 0.01) and RDP (cross-check); each owner "
        "enforces its budget with its own accountant (owner_accountant)",
        "events": worst["events"],
        "treated_as_public": worst["treated_as_public"],
        "class_counts": worst["class_counts"],
        "class_names": list(infos[0].class_names),
        "image_shape": list(infos[0].image_shape),
        "aux_hash": infos[0].aux_hash,
        "owners": owners,
        "plan": {
            "run_id": plan.run_id,
            "draws": len(plan.network_seeds),
            "signal": plan.signal,
            "subspace_dim": plan.subspace_dim,
            "network": plan.network.to_dict(),
            "augmentation": plan.augmentation,
        },
    }


def format_report(r: dict) -> str:
    lines = [
        "PRIVACY REPORT",
        "==============",
        f"Guarantee: {r['guarantee']}.",
        "",
    ]
    for s in r["owners"]:
        lines += [
            f"Owner '{s['owner_id']}' (budget epsilon {s['owner_budget_epsilon']})",
            f"  epsilon (PRV accountant):   {s['epsilon_prv']:.4f}",
            f"  epsilon (RDP, cross-check): {s['epsilon_rdp']:.4f}",
            f"  delta:                      {s['delta']:g}",
            f"  budget enforced with:       {s['owner_accountant'].upper()}",
            f"  noise sampler:              {s['noise_sampler']} ({s['noise_sampler_description']})",
            f"  noise multiplier sigma:     {s['noise_multiplier']:.4f}   (noise std sigma*C per coordinate)",
            f"  sampling rate q:            {s['sample_rate_q']:.6f}   "
            f"(expected group size {r['expected_group_size']} per class)",
            f"  releases (draws):           {s['releases']} in {s['requests']} requests",
            f"  clip norm C:                {s['clip_norm']}",
            f"  privacy unit:               {s['privacy_unit']} ({s['privacy_unit_description']})",
            f"  class counts:               {s['class_counts']}",
            "",
        ]
    lines += [
        f"sensitivity: {r['sensitivity']}",
        *([f"also fitted to public data: {r['public_fit']}"] if r.get("public_fit") else []),
        "",
        "Treated as public (not protected by the guarantee):",
        *[f"  - {p}" for p in r["treated_as_public"]],
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    (out / "privacy_report.json").write_text(json.dumps(report, indent=2))
    (out / "privacy_report.txt").write_text(format_report(report) + "\n")
