"""Sampling stage (DOS): plan the draws, ask the owner in batches, persist every reply.

The plan (seeds, noise level, request ids) is written once and reused on resume, so a crashed
run asks again only for batches it has not stored, with the same request ids: the owner's ledger
answers those from its record instead of spending again.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from distiller_node.client import OwnerClient
from distiller_node.signal_store import Signals, SignalStore, atomic_write
from shared.accounting import SampledGaussianEvent, epsilon, noise_for_budget
from shared.networks import NetworkSpec
from shared.protocol import FeatureRequest, OwnerInfo


@dataclass(frozen=True)
class SamplingConfig:
    draws: int = 200
    draws_per_request: int = 25
    group_size: float = 50.0
    subspace_dim: int = 200
    width: int = 128
    depth: int = 3
    augmentation: str = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0


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
    noise_multiplier: float
    sample_rate: float
    aux_hash: str
    target_epsilon: float
    delta: float
    accountant: str

    @property
    def num_batches(self) -> int:
        return -(-len(self.network_seeds) // self.draws_per_request)

    def batch(self, b: int) -> FeatureRequest:
        lo, hi = b * self.draws_per_request, min((b + 1) * self.draws_per_request, len(self.network_seeds))
        return FeatureRequest(
            request_id=f"{self.run_id}-b{b:05d}",
            network=self.network,
            network_seeds=tuple(self.network_seeds[lo:hi]),
            augment_seeds=tuple(self.augment_seeds[lo:hi]),
            augmentation=self.augmentation,
            subspace_dim=self.subspace_dim,
            aux_hash=self.aux_hash,
            expected_group_size=self.group_size,
            noise_multiplier=self.noise_multiplier,
        )

    def planned_epsilon(self, method: str) -> float:
        event = SampledGaussianEvent(self.noise_multiplier, self.sample_rate, len(self.network_seeds))
        return epsilon([event], self.delta, method)

    def save(self, path: Path) -> None:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        atomic_write(path, json.dumps(d, indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> SamplingPlan:
        d = json.loads(Path(path).read_text())
        d["network"] = NetworkSpec(**d["network"])
        return cls(**d)


def make_plan(
    cfg: SamplingConfig, info: OwnerInfo, target_epsilon: float, delta: float, accountant: str = "prv"
) -> SamplingPlan:
    """Seeds from the distiller's run seed (public), noise calibrated to spend ``target_epsilon``."""
    g = torch.Generator().manual_seed(cfg.seed)
    seeds = torch.randint(0, 2**62, (2, cfg.draws), generator=g)
    rate = max(min(1.0, cfg.group_size / n) for n in info.class_counts)
    cap = float(info.limits.get("max_sample_rate", 1.0))
    if rate > cap:
        raise ValueError(
            f"group size {cfg.group_size} means sampling rate {rate:.4f} on the smallest class "
            f"({min(info.class_counts)} examples), above the owner's cap {cap}; use a smaller --group-size"
        )
    max_draws = int(info.limits.get("max_draws_per_request", cfg.draws_per_request))
    if cfg.draws_per_request > max_draws:
        raise ValueError(f"--draws-per-request {cfg.draws_per_request} exceeds the owner's cap {max_draws}")
    sigma = noise_for_budget(target_epsilon, delta, rate, cfg.draws, accountant)
    return SamplingPlan(
        run_id=secrets.token_hex(6),
        network=NetworkSpec(
            width=cfg.width,
            depth=cfg.depth,
            channels=info.image_shape[0],
            image_size=info.image_shape[1],
            num_classes=len(info.class_names),
        ),
        network_seeds=seeds[0].tolist(),
        augment_seeds=seeds[1].tolist(),
        draws_per_request=cfg.draws_per_request,
        group_size=cfg.group_size,
        subspace_dim=cfg.subspace_dim,
        augmentation=cfg.augmentation,
        noise_multiplier=sigma,
        sample_rate=rate,
        aux_hash=info.aux_hash,
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
    )


def run_sampling(client: OwnerClient, plan: SamplingPlan, store: SignalStore, show_progress: bool = True) -> Signals:
    """Fetch every batch not yet stored; each reply is on disk before the next request leaves."""
    todo = [b for b in range(plan.num_batches) if not store.has(b)]
    done_draws = len(plan.network_seeds) - sum(plan.batch(b).num_draws for b in todo)
    with tqdm(
        total=len(plan.network_seeds),
        initial=done_draws,
        desc="sampling (owner releases)",
        unit="draw",
        disable=not show_progress,
    ) as bar:
        for b in todo:
            request = plan.batch(b)
            _, raw = client.release(request)
            store.put(b, raw)
            bar.update(request.num_draws)
    return store.load(plan.num_batches, plan.network_seeds, plan.augment_seeds)
