"""The frontier's reference points, computed in the benchmark harness itself, not through an owner.

- ``no-noise``: the DOS+SER pipeline with sigma 0, an upper bound on what the noise costs. An owner
  never releases without noise, so this drives the mechanism directly (like ``dpdistill-bench speed``),
  with the same sampling, networks, subspaces, optimisation and evaluation as a real run.
- ``dm``: plain distribution matching (DM, Zhao & Bilen, WACV 2023), the non-private method DOS+SER
  is derived from, at the same budget (iterations, network width, images per class per step): what
  the private statistic and its decoupling cost, apart from the noise.
- ``aux-only``: the public auxiliary images themselves as the synthetic set (the unoptimised start).

Run as ``python -m benchmarks.reference_points KIND --out DIR --settings JSON`` so that each point is
a process of its own, as every other point of the frontier is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from deploy.run_settings import RunSettings
from distiller_node.aux_prior import AuxPrior
from distiller_node.config import DistillerConfig
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, SyntheticState, initial_state, training_images
from distiller_node.pipeline import peak_rss_mb
from distiller_node.sampling import plan_seeds
from distiller_node.signal_store import Signals
from owner_node.data import PrivateData
from owner_node.mechanism import FeatureMechanism
from shared.compute.augmentation import augment
from shared.compute.device import autocast, use_device
from shared.compute.networks import NetworkSpec, build_network, freeze
from shared.compute.statistic import class_sums
from shared.compute.subspace import content_hash
from shared.datasets import to_float
from shared.evaluation import evaluate
from shared.images.fashion_mnist import FASHION_MNIST_NORMALIZATION, load_fashion_mnist
from shared.images.image_set import ImageSet
from shared.images.npz import load_npz
from shared.measurement import cpu_model, write_json
from shared.progress import progress_bar
from shared.wire.messages import FeatureRequest

KINDS = ("no-noise", "dm", "aux-only")
# Settings a reference does not read, as (section, key) of the run's config: a point measured under
# one value of them stands for every other (plain DM neither projects nor fits the auxiliary prior).
UNREAD: dict[str, tuple[tuple[str, str], ...]] = {
    "dm": (("sampling", "subspace_dim"), ("optimisation", "aux_prior"), ("optimisation", "pea")),
}
DM_LR, DM_MOMENTUM = 1.0, 0.5  # DM's published optimiser for the synthetic images


class NoiseFreeMechanism(FeatureMechanism):
    """The owner's mechanism with sigma 0: for this benchmark's upper bound only, never in a service."""

    def noise_std(self, request: FeatureRequest) -> float:
        return 0.0


def embedding_spec(cfg: DistillerConfig, image_shape: tuple[int, ...], num_classes: int) -> NetworkSpec:
    """The run's embedding network for images of ``image_shape`` (C, H, W): width and depth from its sampling."""
    return NetworkSpec.for_images(cfg.sampling.width, image_shape, num_classes, cfg.sampling.depth)


def no_noise_state(cfg: DistillerConfig, aux: ImageSet, data_root: str | None, show_progress: bool) -> tuple:
    """(synthetic state, stage timings): sampling at sigma 0, then the usual optimisation."""
    train = load_fashion_mnist(train=True, root=data_root)
    norm = FASHION_MNIST_NORMALIZATION
    data = PrivateData.from_image_set(train, norm)
    aux_f = to_float(aux.images, norm)
    mechanism = NoiseFreeMechanism(data, aux_f, clip_norm=1.0, aux_labels=aux.labels)
    s = cfg.sampling
    spec = embedding_spec(cfg, data.image_shape, train.num_classes)
    seeds = plan_seeds(s.seed, s.draws).tolist()
    timings = {}
    t0 = time.perf_counter()
    sums = []
    with progress_bar(total=s.draws, desc="sampling (sigma 0)", unit="draw", disable=not show_progress) as bar:
        for lo in range(0, s.draws, s.draws_per_request):
            hi = min(lo + s.draws_per_request, s.draws)
            request = FeatureRequest(
                f"no-noise-{lo}",
                spec,
                tuple(seeds[0][lo:hi]),
                tuple(seeds[1][lo:hi]),
                s.augmentation,
                s.subspace_dim,
                content_hash(aux.images),
                s.group_size,
                0.0,
                s.signal,
            )
            sums.append(torch.from_numpy(mechanism.release(request, progress=bar.update).noisy_sums))
    timings["sampling_s"] = time.perf_counter() - t0
    rate = data.sample_rate(s.group_size)
    counts = torch.tensor([rate * n for n in data.published_counts], dtype=torch.float64)
    signals = Signals(torch.cat(sums), counts, seeds[0], seeds[1])
    t0 = time.perf_counter()
    cache = NetworkCache(spec, aux_f, s.subspace_dim, cfg.optimisation.cache_mb * 2**20, s.signal, aux.labels)
    opt = cfg.optimisation
    state = initial_state(
        train.num_classes, opt.ipc, data.image_shape, opt.seed, opt.init, (aux_f, aux.labels), opt.pea
    )
    prior = AuxPrior.for_run(opt, s.subspace_dim, cache, aux.labels, train.num_classes)
    state = Distiller(signals, cache, s.augmentation, 1.0, opt, prior=prior).run(state, show_progress=show_progress)
    timings["optimisation_s"] = time.perf_counter() - t0
    return state, timings


def distribution_matching_state(
    cfg: DistillerConfig, aux: ImageSet, train: ImageSet, show_progress: bool
) -> tuple[SyntheticState, dict]:
    """(synthetic state, stage timings) of plain DM on the private ``train`` set, without privacy.

    Every iteration: a fresh network (the run's width and depth) and augmentation seed, a fresh batch
    of ``group_size`` private images per class (without replacement), and the squared distance between
    the real and synthetic class means of the raw embedding (no projection, clip or noise), stepped by
    DM's optimiser. Same start (``init``), iterations, augmentation, precision and seed as the run.
    """
    s, opt_cfg = cfg.sampling, cfg.optimisation
    norm = FASHION_MNIST_NORMALIZATION
    data = to_float(train.images, norm)
    num_classes, batch = train.num_classes, max(1, round(s.group_size))
    by_class = [data[train.labels == c] for c in range(num_classes)]
    spec = embedding_spec(cfg, tuple(data.shape[1:]), num_classes)
    aux_f = to_float(aux.images, norm)
    first = initial_state(
        num_classes, opt_cfg.ipc, tuple(data.shape[1:]), opt_cfg.seed, opt_cfg.init, (aux_f, aux.labels)
    )
    images = first.images.clone().requires_grad_(True)
    labels = first.labels
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)[:, None]  # synthetic images per class
    opt = torch.optim.SGD([images], lr=DM_LR, momentum=DM_MOMENTUM)
    g = torch.Generator().manual_seed(opt_cfg.seed)
    device = torch.device("cpu")
    losses = []
    t0 = time.perf_counter()
    with progress_bar(total=opt_cfg.iterations, desc="DM (no privacy)", unit="it", disable=not show_progress) as bar:
        for _ in range(opt_cfg.iterations):
            net_seed, aug_seed = (int(v) for v in torch.randint(2**62, (2,), generator=g))
            net = freeze(build_network(spec, net_seed))
            real = [c[torch.randperm(len(c), generator=g)[: min(batch, len(c))]] for c in by_class]
            with torch.no_grad(), autocast(device, opt_cfg.precision):
                target = torch.stack([net.embed(augment(x, aug_seed, s.augmentation)).float().mean(0) for x in real])
            with autocast(device, opt_cfg.precision):
                emb = net.embed(augment(images, aug_seed, s.augmentation)).float()
            mine = class_sums(emb, labels, num_classes) / counts
            loss = (mine - target).square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
    final = images.detach()
    state = SyntheticState(final, final.clone(), labels, opt_cfg.iterations, losses)
    return state, {"sampling_s": 0.0, "optimisation_s": time.perf_counter() - t0}


def _distiller_config(settings: dict) -> DistillerConfig:
    """The run's config for ``--settings`` (``{"preset", "ipc", "overrides"}``)."""
    return RunSettings(
        preset=settings["preset"], ipc=settings["ipc"], **settings.get("overrides", {})
    ).distiller_config()


def _recorded(cfg: DistillerConfig) -> dict:
    """A config as ``run.json`` records it (through JSON: tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict()))


def reference_config(settings: dict) -> dict:
    """The run's config for ``--settings`` as its ``run.json`` records it, without running anything."""
    return _recorded(_distiller_config(settings))


def same_reference(kind: str, config_a: dict, config_b: dict) -> bool:
    """Whether reference ``kind`` computes the same thing under two configs (differing at most in what
    it does not read, ``UNREAD``), so one measurement stands for both."""

    def read(config: dict) -> dict:
        kept = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
        for section, key in UNREAD.get(kind, ()):
            kept.get(section, {}).pop(key, None)
        return kept

    return read(config_a) == read(config_b)


def run_reference(kind: str, out: Path, settings: dict, public: Path, data_root: str | None, progress: bool) -> dict:
    """One reference point; writes ``out/run.json`` in the shape ``dpdistill simulate --benchmark-json`` uses."""
    if kind not in KINDS:
        raise ValueError(f"unknown reference {kind!r}; choose one of {KINDS}")
    t_start = time.perf_counter()
    cfg = _distiller_config(settings)
    aux, test, val = (load_npz(public / f"{n}.npz") for n in ("aux", "test", "validation"))
    norm = FASHION_MNIST_NORMALIZATION
    if kind == "no-noise":
        state, timings = no_noise_state(cfg, aux, data_root, progress)
        images, labels = training_images(state.ema, state.labels, cfg.optimisation.pea)
    elif kind == "dm":
        train = load_fashion_mnist(train=True, root=data_root)
        state, timings = distribution_matching_state(cfg, aux, train, progress)
        images, labels = state.images, state.labels
    else:
        timings = {"sampling_s": 0.0, "optimisation_s": 0.0}
        aux_f = to_float(aux.images, norm)
        first = initial_state(
            aux.num_classes, settings["ipc"], tuple(aux.images.shape[1:]), 0, "aux", (aux_f, aux.labels)
        )
        images, labels = first.images, first.labels
    t0 = time.perf_counter()
    result = evaluate(
        images,
        labels,
        test.images,
        test.labels,
        aux.num_classes,
        cfg.evaluation,
        progress,
        norm,
        aux.class_names,
        {"validation": (val.images, val.labels)},
    )
    timings["evaluation_s"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "labels": labels}, out / "synthetic.pt")
    run = {
        "benchmark": "run",
        "reference": kind,
        "preset": settings["preset"],
        "wall_s": time.perf_counter() - t_start,
        "test_accuracy_mean": result.mean,
        "test_accuracy_std": result.std,
        "validation_accuracy_mean": result.other("validation")["mean"],
        "validation_accuracy_std": result.other("validation")["std"],
        "krr_accuracy": None,
        # no noise has no finite epsilon (null); the auxiliary images alone release nothing (0).
        "epsilon_prv": 0.0 if kind == "aux-only" else None,
        "epsilon_rdp": 0.0 if kind == "aux-only" else None,
        "delta": cfg.delta,
        "stage_s": timings,
        "peak_rss_mb": peak_rss_mb(),
        "config": _recorded(cfg),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "compute": use_device("cpu", cfg.optimisation.precision)[1],  # what "auto" chose here, and why
    }
    write_json(out / "run.json", run)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_points", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", required=True, help='JSON: {"preset": ..., "ipc": ..., "overrides": {...}}')
    p.add_argument("--public", required=True, help="folder with aux.npz, validation.npz and test.npz")
    p.add_argument("--data-root")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    run_reference(a.kind, Path(a.out), json.loads(a.settings), Path(a.public), a.data_root, not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
