"""Sampling stage (DOS): plan the draws, ask each owner in batches, persist every reply.

The plan (seeds, each owner's noise level, request ids) is written once and reused on resume, so a
crashed run asks again only for batches it has not stored, with the same request ids: the owner's
ledger answers those from its record instead of spending again.

Several owners receive the same seeds (same networks and augmentations), each at the noise its own
budget allows, so their per-class noisy sums add up: the combined group size is the sum of the
owners' expected group sizes, and each owner's epsilon is its own.
"""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distiller_node.client import OwnerClient
from distiller_node.config import SamplingConfig
from distiller_node.signal_store import Signals, SignalStore, atomic_write
from shared.accounting import epsilon, noise_for_budget
from shared.compute.networks import NetworkSpec
from shared.progress import progress_bar
from shared.wire.messages import DEFAULT_SIGNAL, FeatureRequest, OwnerInfo, PlanRequest
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import encode


@dataclass(frozen=True)
class OwnerPlan:
    """One owner's share of the plan: the noise its remaining budget allows at its sampling rate,
    under that owner's own accountant and delta (the rules it enforces)."""

    owner_id: str
    noise_multiplier: float
    sample_rate: float
    target_epsilon: float
    delta: float = 1e-5
    accountant: str = "prv"


@dataclass(frozen=True)
class SamplingPlan:
    run_id: str
    network: NetworkSpec
    network_seeds: list[int]
    augment_seeds: list[int]
    draws_per_request: int
    group_size: float
    subspace_dim: int
    augmentation: str
    aux_hash: str
    delta: float
    accountant: str
    owners: list[OwnerPlan]
    signal: str = DEFAULT_SIGNAL
    # The optimiser's lr is multiplied by this (``group_scale`` squared; 1 unless the group was lowered).
    step_scale: float = 1.0

    @property
    def num_batches(self) -> int:
        return -(-len(self.network_seeds) // self.draws_per_request)

    def batch(self, b: int, owner: int = 0) -> FeatureRequest:
        lo, hi = b * self.draws_per_request, min((b + 1) * self.draws_per_request, len(self.network_seeds))
        return FeatureRequest(
            request_id=f"{self.run_id}-o{owner}-b{b:05d}",
            network=self.network,
            network_seeds=tuple(self.network_seeds[lo:hi]),
            augment_seeds=tuple(self.augment_seeds[lo:hi]),
            augmentation=self.augmentation,
            subspace_dim=self.subspace_dim,
            aux_hash=self.aux_hash,
            expected_group_size=self.group_size,
            noise_multiplier=self.owners[owner].noise_multiplier,
            signal=self.signal,
        )

    def planned_epsilon(self, owner: int, method: str | None = None) -> float:
        """Epsilon of this owner's share at its own delta, under ``method`` (default: the owner's accountant)."""
        o = self.owners[owner]
        return epsilon(
            [SampledGaussianEvent(o.noise_multiplier, o.sample_rate, len(self.network_seeds))],
            o.delta,
            method or o.accountant,
        )

    def reservation(self, owner: int, first: FeatureRequest | None = None) -> PlanRequest:
        """The request that asks ``owner`` to hold this whole run; ``first`` is the run's first request
        (default: the first feature batch), which the owner validates as if it were sent."""
        first = first if first is not None else self.batch(0, owner)
        return PlanRequest(
            plan_id=f"{self.run_id}-o{owner}",
            request_prefix=f"{self.run_id}-o{owner}-",
            total_releases=len(self.network_seeds),
            template=encode(first),
        )

    def save(self, path: Path) -> None:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        atomic_write(path, json.dumps(d, indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> SamplingPlan:
        d = json.loads(Path(path).read_text())
        d["network"] = NetworkSpec(**d["network"])
        d["owners"] = [OwnerPlan(**o) for o in d["owners"]]
        return cls(**d)


def check_compatible(infos: list[OwnerInfo]) -> None:
    """Owners' sums can only be added if they describe the same task in the same public terms."""
    first = infos[0]
    ids = [i.owner_id for i in infos]
    if len(set(ids)) != len(ids):
        raise ValueError(f"owner ids must be distinct, got {ids}")
    for info in infos[1:]:
        for name in ("class_names", "image_shape", "normalization", "aux_hash", "clip_norm"):
            if getattr(info, name) != getattr(first, name):
                raise ValueError(
                    f"owners '{first.owner_id}' and '{info.owner_id}' disagree on {name}: "
                    f"{getattr(first, name)} vs {getattr(info, name)}"
                )


# Below an owner's cap by this factor, so that g / n_min never rounds above it.
CAP_MARGIN = 1.0 - 1e-9


def effective_group_size(group_size: float, infos: list[OwnerInfo]) -> float:
    """The largest group size up to ``group_size`` that every owner accepts.

    An owner samples every class at one rate q = g / n_min. Its ``max_sample_rate`` caps q, and its
    ``max_sample_per_draw`` caps q * N (its compute per draw). A small class would otherwise refuse the
    default group size; lowering g keeps the run within both caps at the highest rate they allow.
    """
    g = group_size
    for info in infos:
        n_min, total = min(info.class_counts), sum(info.class_counts)
        g = min(g, float(info.limits.get("max_sample_rate", 1.0)) * n_min * CAP_MARGIN)
        per_draw = info.limits.get("max_sample_per_draw")
        if per_draw is not None:
            g = min(g, float(per_draw) * n_min / total * CAP_MARGIN)
    return g


def group_scale(planned: float, group: float, down_to: float) -> float:
    """How much a lowered group scales the draws (and the step, squared): planned / group, with the
    group counted as at least ``down_to`` (``SamplingConfig.scale_down_to``); 1 when nothing changes."""
    return 1.0 if down_to <= 0 else max(1.0, planned / max(group, down_to))


def plan_seeds(seed: int, draws: int) -> torch.Tensor:
    """[2, draws]: each draw's public network seed and augmentation seed, from the run's public seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (2, draws), generator=g)


def make_plan(
    cfg: SamplingConfig,
    infos: list[OwnerInfo],
    target_epsilons: list[float],
    delta: float,
    accountant: str = "prv",
    log=print,
) -> SamplingPlan:
    """Seeds from the distiller's run seed (public); each owner's noise calibrated to spend its target.

    Each owner's noise is planned with the accountant and delta that owner publishes and enforces;
    ``delta`` and ``accountant`` are the distiller's own wishes, kept in the plan for its report.
    """
    check_compatible(infos)
    owners = []
    group_size = effective_group_size(cfg.group_size, infos)
    scale = group_scale(cfg.group_size, group_size, cfg.scale_down_to)
    draws = max(1, round(cfg.draws * scale))
    if group_size < cfg.group_size:
        log(
            f"group size lowered from {cfg.group_size:g} to {group_size:.4g} (expected records of the smallest "
            "class per draw): the owners' caps on the sampling rate and on records per draw allow no more"
        )
    if scale > 1:
        log(
            f"draws raised from {cfg.draws} to {draws} and the optimiser's step multiplied by {scale**2:.4g}, so "
            f"that draws x group and lr x group^2 stay as planned (counting the group as at least "
            f"{cfg.scale_down_to:g})"
        )
    seeds = plan_seeds(cfg.seed, draws)
    for info, target in zip(infos, target_epsilons, strict=True):
        rate = min(1.0, group_size / min(info.class_counts))  # the owner's one rate for every class
        max_draws = int(info.limits.get("max_draws_per_request", cfg.draws_per_request))
        if cfg.draws_per_request > max_draws:
            raise ValueError(
                f"--draws-per-request {cfg.draws_per_request} exceeds owner '{info.owner_id}''s cap {max_draws}"
            )
        sigma = noise_for_budget(target, info.delta, rate, draws, info.accountant)
        floor = float(info.limits.get("min_noise_multiplier", 0.0))
        if sigma < floor:
            # The owner would refuse this sigma; its floor spends less than the target, never more.
            sigma = floor
        owners.append(OwnerPlan(info.owner_id, sigma, rate, target, info.delta, info.accountant))
    first = infos[0]
    return SamplingPlan(
        run_id=secrets.token_hex(6),
        network=NetworkSpec.for_images(cfg.width, tuple(first.image_shape), len(first.class_names), cfg.depth),
        network_seeds=seeds[0].tolist(),
        augment_seeds=seeds[1].tolist(),
        draws_per_request=cfg.draws_per_request,
        group_size=group_size,
        subspace_dim=cfg.subspace_dim,
        augmentation=cfg.augmentation,
        aux_hash=first.aux_hash,
        delta=delta,
        accountant=accountant,
        owners=owners,
        signal=cfg.signal,
        step_scale=scale**2,
    )


def run_sampling(
    clients: list[OwnerClient],
    plan: SamplingPlan,
    store: SignalStore,
    show_progress: bool = True,
    in_flight: int = 2,
) -> Signals:
    """Fetch every batch not yet stored, owners in parallel, each reply on disk as soon as it arrives."""
    todo = {o: [b for b in range(plan.num_batches) if not store.has(o, b)] for o in range(len(plan.owners))}
    total = len(plan.network_seeds) * len(plan.owners)
    done = total - sum(plan.batch(b, o).num_draws for o, bs in todo.items() for b in bs)
    lock = threading.Lock()
    with progress_bar(
        total=total, initial=done, desc="sampling (owner releases)", unit="draw", disable=not show_progress
    ) as bar:

        def fetch(o: int, b: int) -> None:
            request = plan.batch(b, o)
            _, raw = clients[o].release(request)
            store.put(o, b, raw)
            with lock:
                bar.update(request.num_draws)

        def fetch_all(o: int) -> None:
            with ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix=f"owner{o}") as pool:
                for future in [pool.submit(fetch, o, b) for b in todo[o]]:
                    future.result()

        if len(todo) == 1 and in_flight <= 1:
            # Nothing to overlap: stay on this thread, so the owner's tensors do not pin a second
            # malloc arena for the rest of the run (the README job peaked at 1.46-1.79 GB with two
            # worker threads, 1.25-1.32 GB on this path).
            for b in todo[0]:
                fetch(0, b)
        else:
            with ThreadPoolExecutor(max_workers=len(plan.owners), thread_name_prefix="sampling") as pool:
                for future in [pool.submit(fetch_all, o) for o in todo]:
                    future.result()
    owner_names = [o.owner_id for o in plan.owners]
    return store.load(len(plan.owners), plan.num_batches, plan.network_seeds, plan.augment_seeds, owner_names)
