"""Benchmark: what the owner's privacy-critical randomness costs per request (JSON).

Times, for one request of a given shape, the Poisson sample of every private record and the noise
of every released coordinate: with the owner's ChaCha20 streams (``csprng``), with OpenDP's exact
Gaussian (``exact``, on a subset of coordinates, then per coordinate), and with the PyTorch
Mersenne Twister the owner used before (for comparison only: its 32-bit seed voided the guarantee).
"""

from __future__ import annotations

import time

import torch

from deploy.presets import PRESETS
from distiller_node.config import SamplingConfig
from distiller_node.pipeline import peak_rss_mb
from owner_node.randomness import SecureRandom, noisy
from shared.compute.kip_shapes import moment_dim
from shared.measurement import cpu_model

CLASS_SIZES = [6000] * 10  # Fashion-MNIST's training classes: every record is sampled per draw


def _shape(preset: str) -> tuple[int, int, int, int]:
    """(draws per request, classes, numbers per class sum, draws per run) of a preset's request."""
    p = PRESETS[preset]
    dim = moment_dim(p["subspace_dim"]) if p["signal"] == "kip" else p["subspace_dim"]
    return SamplingConfig.draws_per_request, len(CLASS_SIZES), dim, p["draws"]


def _name(preset: str) -> str:
    per_request, classes, dim, _ = _shape(preset)
    return f"{preset} ({PRESETS[preset]['signal']}, {per_request} draws x {classes} classes x {dim} numbers)"


# The request shapes of the presets (Fashion-MNIST), read from them so a label never outlives a change.
SHAPES = {_name(p): _shape(p) for p in ("default", "kip-decoupled")}
# The default's sampling rate: its group size over a class of 6,000.
RATE = PRESETS["default"]["group_size"] / CLASS_SIZES[0]
EXACT_COORDINATES = 20_000


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _csprng_noise(draws: int, classes: int, dim: int) -> None:
    stream = SecureRandom()
    for _ in range(draws):
        noisy(torch.zeros(classes, dim, dtype=torch.float64), 1.0, "csprng", stream)


def _csprng_sample(draws: int) -> None:
    stream = SecureRandom()
    for _ in range(draws):
        for n in CLASS_SIZES:
            stream.bernoulli(n, RATE)


def _mt_noise(draws: int, classes: int, dim: int) -> None:
    torch.randn(draws, classes, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _mt_sample(draws: int) -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(draws):
        for n in CLASS_SIZES:
            _ = torch.rand(n, generator=g) < RATE


def randomness_costs() -> dict:
    results: dict = {"cpu_model": cpu_model(), "threads": torch.get_num_threads(), "requests": {}}
    for name, (draws, classes, dim, run_draws) in SHAPES.items():
        results["requests"][name] = {
            "coordinates": draws * classes * dim,
            "run_coordinates": run_draws * classes * dim,
            "records_sampled_per_draw": sum(CLASS_SIZES),
            "csprng_noise_s": _time(lambda d=draws, c=classes, k=dim: _csprng_noise(d, c, k)),
            "csprng_sample_s": _time(lambda d=draws: _csprng_sample(d)),
            "mersenne_twister_noise_s (old, insecure)": _time(lambda d=draws, c=classes, k=dim: _mt_noise(d, c, k)),
            "mersenne_twister_sample_s (old, insecure)": _time(lambda d=draws: _mt_sample(d)),
        }
    values = torch.zeros(EXACT_COORDINATES, dtype=torch.float64)
    exact_s = _time(lambda: noisy(values, 1.0, "exact", SecureRandom()), repeat=1)
    per = exact_s / EXACT_COORDINATES
    results["exact_s_per_coordinate"] = per
    for r in results["requests"].values():
        r["exact_noise_s (extrapolated)"] = per * r["coordinates"]
        r["exact_run_noise_s (extrapolated)"] = per * r["run_coordinates"]
    results["peak_rss_mb"] = peak_rss_mb()
    return results
