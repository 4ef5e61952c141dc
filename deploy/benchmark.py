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

from deploy.public_sets import PublicSets
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, OptimisationConfig, initial_state
from distiller_node.pipeline import peak_rss_mb
from distiller_node.signal_store import Signals
from owner_node.data import PrivateData, public_normalization
from owner_node.mechanism import FeatureMechanism
from shared.augmentation import DEFAULT_STRATEGY
from shared.datasets import FASHION_MNIST_NORMALIZATION, load_fashion_mnist, to_float
from shared.images.classes import check_same_classes
from shared.images.source import ImageSource, load_source
from shared.networks import NetworkSpec, depth_for_image_size
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
    public: PublicSets | None = None,
    private: ImageSource | None = None,
) -> dict:
    """``public``/``private``: the user's own sets instead of Fashion-MNIST's (any size and channels)."""
    public = public or PublicSets(aux_per_class=aux_per_class, data_root=data_root)
    aux, _ = public.load(show_progress=False)
    if private is None:
        train, norm = load_fashion_mnist(train=True, root=data_root), FASHION_MNIST_NORMALIZATION
    else:
        train, norm = load_source(private, progress=False).data, public_normalization(aux)
    check_same_classes(train, aux, names=("private set", "auxiliary set"))
    aux_f = to_float(aux.images, norm)
    data = PrivateData.from_image_set(train, norm)
    mechanism = FeatureMechanism(data, aux_f, clip_norm=1.0)
    channels, size = data.image_shape[0], data.image_shape[1]
    spec = NetworkSpec(
        width=width,
        depth=depth_for_image_size(size),
        channels=channels,
        image_size=size,
        num_classes=train.num_classes,
    )
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
        torch.full((train.num_classes,), group_size, dtype=torch.float64),
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
        state = initial_state(train.num_classes, ipc, data.image_shape, 0)
        t0 = time.perf_counter()
        distiller.run(state, show_progress=False)
        timings[label] = (time.perf_counter() - t0) / cfg.iterations
    return {
        "benchmark": "speed",
        "settings": {
            "width": width,
            "image_shape": list(data.image_shape),
            "private_images": len(train),
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
        "machine": cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's model name, family/model and the vector extensions that matter here (AVX-512, AMX):
    benchmark wall times compare only within one machine kind."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields['model name']} (family {family}, model {model}; {' '.join(extensions) or 'no AVX2'})"


def write(path: str | Path, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
