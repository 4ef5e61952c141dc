"""Quick cost figures for DP-KIP on scattering features (issue 4 groundwork): how long phi takes,
how long one synchronised per-example-gradient step takes, and what the decoupled release costs.

Random images stand in for data (the cost does not depend on the pixels). Usage:
    OMP_NUM_THREADS=1 python -m benchmarks.kip_measure --json runs/kip_measure.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from shared.compute.kip import centred_one_hot, clipped_gradient_sum, synthetic_labels
from shared.compute.kip_shapes import moment_dim
from shared.compute.moments import kip_projection, pack_moments
from shared.compute.scattering import scattering_features
from shared.compute.statistic import class_sums, clip_rows


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(phi_images: int, ipc: int, batch: int, passes: list[int], probe_batch: int, k: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    classes = 10
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}

    images = torch.randn(phi_images, 1, 28, 28, generator=g)
    scattering_features(images[:8])  # filter bank built once, outside the timing
    seconds, phi = _timed(lambda: scattering_features(images))
    out["phi"] = {"images": phi_images, "seconds": seconds, "ms_per_image": 1000 * seconds / phi_images}

    labels_s = synthetic_labels(ipc, classes)
    images_s, y_s = torch.randn(len(labels_s), 1, 28, 28, generator=g), centred_one_hot(labels_s, classes)
    labels_t = torch.randint(0, classes, (batch,), generator=g)
    phi_t, y_t = phi[:batch], centred_one_hot(labels_t, classes)

    probes = []
    for r in passes:
        seconds, _ = _timed(
            lambda r=r: clipped_gradient_sum(images_s, y_s, phi_t[:probe_batch], y_t[:probe_batch], 1.0, 1e-6, r)
        )
        probes.append({"examples_per_pass": r, "private": probe_batch, "seconds": seconds})
    best = min(probes, key=lambda p: p["seconds"])["examples_per_pass"]
    seconds, _ = _timed(lambda: clipped_gradient_sum(images_s, y_s, phi_t, y_t, 1.0, 1e-6, best))
    out["synchronised_step"] = {
        "synthetic": len(labels_s),
        "private": batch,
        "examples_per_pass": best,
        "seconds": seconds,
        "ms_per_private_example": 1000 * seconds / batch,
        "probes": probes,
        "note": "phi of the private batch excluded (see phi); one step = one sampled Gaussian release",
    }

    projection = kip_projection(phi[: max(k + 1, phi_images // 2)], k)  # k + 1 vectors: k directions after centring
    z = projection.project(phi)
    release_labels = labels_t.repeat(phi_images // batch + 1)[:phi_images]
    seconds, vec = _timed(lambda: class_sums(clip_rows(pack_moments(z), 1.0), release_labels, classes))
    out["decoupled_release"] = {
        "private": phi_images,
        "k": k,
        "released_floats": classes * moment_dim(k),
        "seconds_after_phi": seconds,
        "bytes_float32": 4 * vec.numel(),
    }
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phi-images", type=int, default=1000)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--passes", type=int, nargs="+", default=[1, 5])
    p.add_argument("--probe-batch", type=int, default=20)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    result = measure(a.phi_images, a.ipc, a.batch, a.passes, a.probe_batch, a.k, a.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
