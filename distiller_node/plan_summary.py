"""What a planned run will do, said before any owner is asked to hold budget: the printed plan,
each class's expected signal-to-noise with a warning when the run is expected to learn little,
and a rough wall time. ``run_distillation`` prints it before its reservations; ``--dry-run`` stops there.
"""

from __future__ import annotations

from distiller_node.sampling import SamplingPlan
from shared.compute.signals import get_signal_kind
from shared.evaluation_config import EvaluationConfig
from shared.run_choices import KIP_SYNC
from shared.signal_to_noise import LOW_SNR, class_snr, low_classes
from shared.wire.messages import OwnerInfo

# Rough seconds per image pass on the 2-core CPU the README was measured on (two threads): sampling,
# per draw and image (its sample and the auxiliary images its basis is fitted to); optimisation, per
# iteration and synthetic image; evaluation, per training epoch and synthetic image. A pass grows
# about as the square root of channels x pixels x width (a width-32 ConvNet on 28 x 28 x 1 is 1).
# Sampling is the owner's work, fitted in float32 (its precision is the owner's own choice). The
# distiller's passes: float32 fitted to the README's measured feature-signal runs
# (docs/bench/default_issue15.json, own_images_digits_folder.json, own_images_fm64_rgb_folder.json),
# each within a factor of 2 of it; bf16 (``precision`` auto on AVX512-BF16 / AMX CPUs, feature signals)
# fitted to docs/bench/default_issue29_k50.json (optimisation 112 s, evaluation 83 s, AMD Zen 5). A
# loaded CPU is slower, a GPU far faster, gradient signals slower.
SAMPLING_SECONDS_PER_PASS = 2.8e-4
SECONDS_PER_PASS = {
    "float32": {"optimisation": 9.0e-4, "evaluation": 1.0e-3},
    "bf16": {"optimisation": 2.8e-4, "evaluation": 4.6e-4},
}
# The auxiliary prior's share of an optimisation step: its residual in every step and one auxiliary
# pass per draw (about 40% more, docs/bench/issue29_levers.md, "The auxiliary prior").
PRIOR_COST = 1.4
REFERENCE_WORK = 1 * 28 * 28 * 32


def pass_cost(channels: int, image_size: int, width: int) -> float:
    return (channels * image_size**2 * width / REFERENCE_WORK) ** 0.5


def estimate_seconds(
    plan: SamplingPlan,
    infos: list[OwnerInfo],
    aux: int,
    synthetic: int,
    iterations: int,
    evaluation: EvaluationConfig,
    precision: str = "float32",
    prior: bool = False,
) -> dict:
    """Rough seconds per stage (see ``SECONDS_PER_PASS``); ``synthetic``: images trained on;
    ``precision``: what the distiller's passes resolved to; ``prior``: whether the auxiliary prior is on."""
    draws = len(plan.network_seeds)
    records = sum(o.sample_rate * sum(i.class_counts) for o, i in zip(plan.owners, infos, strict=True))
    net = plan.network
    work = pass_cost(net.channels, net.image_size, net.width)
    # Only kinds whose passes may autocast optimise in bf16 (kip-sync is not a registered kind: float32);
    # the evaluation's ConvNet trainings autocast whatever the signal.
    autocasts = plan.signal != KIP_SYNC and get_signal_kind(plan.signal).reduced_precision
    optimise = SECONDS_PER_PASS[precision if autocasts else "float32"]["optimisation"]
    return {
        "sampling": SAMPLING_SECONDS_PER_PASS * draws * (records + aux) * work,
        "optimisation": optimise * iterations * synthetic * work * (PRIOR_COST if prior else 1.0),
        "evaluation": SECONDS_PER_PASS[precision]["evaluation"] * evaluation.runs * evaluation.epochs * synthetic
        * pass_cost(net.channels, net.image_size, evaluation.width),
    }  # fmt: skip


def plan_summary(plan: SamplingPlan, infos: list[OwnerInfo], depth_chosen: bool, expected_seconds: dict) -> dict:
    """The plan's public facts, each class's expected SNR (``shared.signal_to_noise``) and the rough time
    ``estimate_seconds`` gave."""
    draws = len(plan.network_seeds)
    names = list(infos[0].class_names)
    summary: dict = {
        "owners": [
            {
                "owner_id": o.owner_id,
                "planned_epsilon": plan.planned_epsilon(i),
                "delta": o.delta,
                "accountant": o.accountant,
                "noise_multiplier": o.noise_multiplier,
                "sample_rate": o.sample_rate,
                "class_counts": list(info.class_counts),
                "privacy_unit": info.privacy_unit,
            }
            for i, (o, info) in enumerate(zip(plan.owners, infos, strict=True))
        ],
        "releases": draws,
        "requests": plan.num_batches,
        "group_size": plan.group_size,
        "step_scale": plan.step_scale,
        "signal": plan.signal,
        "network": plan.network.to_dict(),
        "depth_by_image_size": depth_chosen,
        "class_names": names,
    }
    if plan.signal == KIP_SYNC:
        summary["snr"] = None  # one sum over every class of image gradients: not the calibrated model
    else:
        dim = get_signal_kind(plan.signal).released_dim(plan.network, plan.subspace_dim)
        records = [[o.sample_rate * n for n in info.class_counts] for o, info in zip(plan.owners, infos, strict=True)]
        snr = class_snr(records, [o.noise_multiplier for o in plan.owners], draws, dim)
        summary |= {"released_dim": dim, "snr": snr, "low_snr_classes": low_classes(snr, names)}
    summary["snr_threshold"] = LOW_SNR
    summary["patient_mode"] = any(i.privacy_unit == "patient" for i in infos)
    summary["expected_seconds"] = expected_seconds
    return summary


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(s: dict, asked_delta: float | None = None) -> list[str]:
    """Printable lines of ``plan_summary``; ``asked_delta``: the distiller's wish, noted where an owner's differs."""
    lines = []
    for o in s["owners"]:
        note = "" if asked_delta in (None, o["delta"]) else f" (the owner's delta; {asked_delta:g} was asked for)"
        lines.append(
            f"plan for owner '{o['owner_id']}': {s['releases']} draws in {s['requests']} requests, "
            f"sigma={o['noise_multiplier']:.4f}, q={o['sample_rate']:.5f}, planned epsilon={o['planned_epsilon']:.4f} "
            f"({o['accountant'].upper()}, the owner's accountant) at delta={o['delta']:g}{note}"
        )
    net = s["network"]
    side = net["image_size"] >> net["depth"]
    how = "by image size" if s["depth_by_image_size"] else "as asked"
    lines.append(
        f"group size {s['group_size']:.4g} (expected records of the smallest class per draw); signal {s['signal']}; "
        f"ConvNet width {net['width']}, depth {net['depth']} ({how}: {net['image_size']} px pools to "
        f"{side} x {side})" + (f"; {s['released_dim']} numbers per class sum" if "released_dim" in s else "")
    )
    if s["snr"] is None:
        lines.append("expected signal-to-noise: not estimated for kip-sync (one sum of image gradients per step)")
    else:
        bound = ""
        if s["patient_mode"]:
            bound = " (an upper bound: patient mode counts images, the owner's patients are fewer)"
        per_class = ", ".join(f"{n} {v:.2g}" for n, v in zip(s["class_names"], s["snr"], strict=True))
        lines.append(f"expected signal-to-noise per class{bound}: {per_class}")
        if s["low_snr_classes"]:
            everything = len(s["low_snr_classes"]) == len(s["class_names"])
            which = "every class" if everything else f"classes {', '.join(s['low_snr_classes'])}"
            lines.append(
                f"WARNING: {which} below {s['snr_threshold']:g}: classes measured there were learnt little or not at "
                "all (recall 0-10% beside stronger classes). More images per class, a larger epsilon, a smaller "
                "--subspace-dim or a higher max_sample_rate at the owner raise it; see README, 'Will a run learn "
                "anything?'"
            )
    t = s["expected_seconds"]
    total = sum(t.values())
    lines.append(
        "expected wall time (rough: within a factor of 2 on an unloaded 2-core CPU; a GPU is faster): "
        f"{_duration(total)} "
        f"(sampling {_duration(t['sampling'])}, optimisation {_duration(t['optimisation'])}, "
        f"evaluation {_duration(t['evaluation'])})"
    )
    return lines
