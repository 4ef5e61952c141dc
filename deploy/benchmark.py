"""Benchmarks that write JSON: stage speeds at given settings, and whole runs of a preset.

``speed`` times the two inner loops at the settings of the authors' reference run (DESIGN
section 7: width 128, 500 private + 1,000 auxiliary images per draw, SER 200, IPC 10), so our
per-draw and per-iteration times can be set beside its 3.8 s and 0.365 s.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, OptimisationConfig, initial_state
from distiller_node.pipeline import peak_rss_mb
from distiller_node.signal_store import Signals
from owner_node.data import PrivateData
from owner_node.mechanism import FeatureMechanism
from shared.augmentation import DEFAULT_STRATEGY
from shared.datasets import FASHION_MNIST_NORMALIZATION, load_fashion_mnist, split_auxiliary, to_float
from shared.networks import NetworkSpec
from shared.protocol import FeatureRequest


def speed(
    width: int = 128,
    aux_per_class: int = 100,
    subspace_dim: int = 200,
    group_size: float = 50.0,
    ipc: int = 10,
    draws: int = 10,
    iterations: int = 50,
    data_root: str | None = None,
) -> dict:
    train = load_fashion_mnist(train=True, root=data_root)
    aux, _ = split_auxiliary(load_fashion_mnist(train=False, root=data_root), aux_per_class)
    aux_f = to_float(aux.images, FASHION_MNIST_NORMALIZATION)
    data = PrivateData.from_image_set(train, FASHION_MNIST_NORMALIZATION)
    mechanism = FeatureMechanism(data, aux_f, clip_norm=1.0)
    spec = NetworkSpec(width=width)
    request = FeatureRequest(
        "bench", spec, tuple(range(draws)), tuple(range(draws)), DEFAULT_STRATEGY, subspace_dim, "-", group_size, 1.0
    )
    mechanism.release(FeatureRequest("warm", spec, (99,), (99,), DEFAULT_STRATEGY, subspace_dim, "-", group_size, 1.0))
    t0 = time.perf_counter()
    released = mechanism.release(request)
    per_draw = (time.perf_counter() - t0) / draws

    # Optimisation: every iteration on a different network (worst case: nothing cached) and on a
    # cached one (the steady state once each stored draw has been seen).
    signals = Signals(
        torch.from_numpy(released.noisy_sums),
        torch.full((10,), group_size, dtype=torch.float64),
        list(range(draws)),
        list(range(draws)),
        basis_fingerprints=(released.basis_fingerprints,),  # checked as in a real run (cost included)
    )
    timings = {}
    for label, cache_mb in (("cached", 4096), ("uncached", 0)):
        cache = NetworkCache(spec, aux_f, subspace_dim, cache_mb * 2**20)
        for seed in range(draws if cache_mb else 0):
            cache.get(seed)
        cfg = OptimisationConfig(ipc=ipc, iterations=iterations if cache_mb else max(5, iterations // 10))
        distiller = Distiller(signals, cache, DEFAULT_STRATEGY, 1.0, cfg)
        state = initial_state(10, ipc, (1, 28, 28), 0)
        t0 = time.perf_counter()
        distiller.run(state, show_progress=False)
        timings[label] = (time.perf_counter() - t0) / cfg.iterations
    return {
        "benchmark": "speed",
        "settings": {
            "width": width,
            "aux_images": len(aux),
            "subspace_dim": subspace_dim,
            "group_size": group_size,
            "ipc": ipc,
            "draws": draws,
            "iterations": iterations,
        },
        "sampling_s_per_draw": per_draw,
        "optimisation_s_per_iteration_cached": timings["cached"],
        "optimisation_s_per_iteration_uncached": timings["uncached"],
        "reference_s_per_draw": 3.8,
        "reference_s_per_iteration": 0.365,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def write(path: str | Path, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
