"""Measurement commands: speed, the privacy-utility frontier and the other benchmarks, the empirical
privacy audit and membership inference. Each writes JSON (and a PNG where there is a picture)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli_options import own_image_options, user_sets
from deploy.presets import PRESETS
from deploy.run_settings import RunSettings
from shared.compute.choices import MEASURED_PRECISIONS
from shared.run_choices import INITS, KIP_SYNC, METHODS


def cmd_speed(a: argparse.Namespace) -> int:
    from benchmarks.speed import speed
    from shared.measurement import write_json

    public, private = user_sets(a)
    write_json(
        a.json,
        speed(
            width=a.width,
            aux_per_class=a.aux_per_class,
            subspace_dim=a.subspace_dim,
            draws=a.draws,
            iterations=a.iterations,
            data_root=a.data_root,
            public=public,
            private=private,
            precisions=tuple(a.precisions),
            baseline=not a.no_baseline,
            device=a.device,
            repeats=a.repeats,
        ),
    )
    return 0


def cmd_bench_frontier(a: argparse.Namespace) -> int:
    import torch

    from benchmarks.frontier import frontier

    result = frontier(
        Path(a.out),
        a.eval_runs,
        a.threads or torch.get_num_threads(),
        a.max_points,
        a.data_root,
        Path(a.published) if a.published else None,
        a.jobs,
    )
    for name, r in result["runs"].items():
        eps = "-" if r["epsilon_prv"] is None else f"{r['epsilon_prv']:.3f}"
        print(
            f"{name:>34}: test {100 * r['test_accuracy_mean']:.2f}% +- {100 * r['test_accuracy_std']:.2f}, "
            f"validation {100 * r['validation_accuracy_mean']:.2f}%, eps {eps}, {r['wall_s'] / 60:.1f} min, "
            f"{r['peak_rss_mb']:.0f} MB"
        )
    if result["pending"]:
        print(f"\n{len(result['pending'])} points still to run (run the same command again): {result['pending']}")
    print(f"\nwritten: {Path(a.out) / 'frontier.json'}, {Path(a.out) / 'frontier.png'}")
    return 0


def cmd_bench_kip(a: argparse.Namespace) -> int:
    from benchmarks.kip import kip_benchmark

    result = kip_benchmark(
        Path(a.out), a.epsilons, a.ipcs, a.inits, a.eval_runs, not a.no_baseline, tuple(a.methods), a.sync_steps
    )
    for name, r in result["runs"].items():
        print(
            f"{name:>22}: ConvNet {100 * r['convnet_accuracy_mean']:.2f}%, "
            f"KRR {100 * r['krr_accuracy_scattering']:.2f}% (full) / "
            f"{100 * (r['krr_accuracy_projected'] or 0):.2f}% (projected), eps {r['epsilon_prv']:.3f}, "
            f"{r['wall_s'] / 60:.1f} min, {r['peak_rss_mb']:.0f} MB"
        )
    print(f"\nwritten: {Path(a.out) / 'kip.json'}, {Path(a.out) / 'kip.png'}")
    return 0


def cmd_bench_signals(a: argparse.Namespace) -> int:
    from benchmarks.signals import compare_signals

    result = compare_signals(Path(a.out), a.epsilon, a.ipc, a.eval_runs, a.only)
    for name, r in result["runs"].items():
        print(
            f"{name:<24} {100 * r['accuracy_mean']:6.2f}% +- {100 * r['accuracy_std']:.2f}  "
            f"eps {r['epsilon_prv']:.3f}  {r['wall_s'] / 60:5.1f} min  peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"\nwritten: {Path(a.out) / 'signals.json'}, {Path(a.out) / 'signals.png'}")
    return 0


def cmd_bench_randomness(a: argparse.Namespace) -> int:
    from benchmarks.randomness import randomness_costs
    from shared.measurement import write_json

    write_json(a.json, randomness_costs())
    return 0


def cmd_bench_accounting(a: argparse.Namespace) -> int:
    from benchmarks.accounting_bound import accounting_bounds
    from shared.measurement import write_json

    write_json(a.json, accounting_bounds())
    return 0


def cmd_bench_owner_memory(a: argparse.Namespace) -> int:
    from benchmarks.signals import owner_memory
    from shared.measurement import write_json

    write_json(a.json, owner_memory(Path(a.config)))
    return 0


def cmd_bench_transport(a: argparse.Namespace) -> int:
    from benchmarks.transport import transport_overhead
    from shared.measurement import write_json

    result = transport_overhead(Path(a.out), a.draws, a.draws_per_request, a.preset, a.data_root)
    write_json(a.json, result)
    print(
        f"sampling {a.draws} draws: in-process {result['in_process']['sampling_s']:.1f} s, "
        f"deployment {result['deployment']['sampling_s']:.1f} s (overhead {100 * result['overhead_fraction']:.1f}%)"
    )
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from owner_node.audit import AuditConfig, CanaryGame, KipStepCanaryGame, audit_subset
    from owner_node.audit_verdict import format_audit, write_audit
    from owner_node.config import OwnerConfig
    from owner_node.data import (
        PrivateData,
        load_auxiliary,
        load_private_images,
        normalization_for,
        public_normalization,
    )
    from shared.compute.networks import NetworkSpec
    from shared.datasets import to_float
    from shared.images.fashion_mnist import FASHION_MNIST_NORMALIZATION, load_fashion_mnist
    from shared.images.source import load_source

    if a.config:
        if a.data or a.aux:
            raise ValueError("--config names the owner's data and auxiliary set; --data and --aux go without it")
        owner = OwnerConfig.load(a.config)
        data = load_private_images(owner, progress=not a.no_progress)
        aux, clip_norm, delta = load_auxiliary(owner), owner.clip_norm, owner.delta
        norm = normalization_for(owner, aux)
    else:
        public, private = user_sets(a)
        aux, _ = public.load(show_progress=not a.no_progress)
        clip_norm, delta = 1.0, a.delta
        if private is None:
            data, norm = load_fashion_mnist(train=True, root=a.data_root), FASHION_MNIST_NORMALIZATION
        else:
            data, norm = load_source(private, progress=not a.no_progress).data, public_normalization(aux)
    config = AuditConfig(
        trials=a.trials,
        draws=a.draws,
        noise_multiplier=a.sigma,
        expected_group_size=a.group_size,
        network=NetworkSpec.for_images(a.width, tuple(data.images.shape[1:]), data.num_classes, a.depth or None),
        subspace_dim=a.subspace_dim,
        augmentation=a.augmentation,
        signal=a.signal,
        kip_ipc=a.kip_ipc,
        delta=delta,
        confidence=a.confidence,
        seed=a.seed,
    )
    private = PrivateData.from_image_set(audit_subset(data, a.private_per_class, a.seed), norm)
    if config.signal == KIP_SYNC:
        game = KipStepCanaryGame(private, clip_norm, config)
    else:
        game = CanaryGame(private, to_float(aux.images, norm), clip_norm, config, aux_labels=aux.labels)
    result = game.play(show_progress=not a.no_progress)
    write_audit(result, Path(a.out))
    print(format_audit(result))
    print(f"\nwritten: {Path(a.out) / 'audit.json'}, {Path(a.out) / 'audit.png'}")
    return 0 if result.consistent else 1


def cmd_membership(a: argparse.Namespace) -> int:
    from benchmarks.membership import format_membership, membership_benchmark

    public, private = user_sets(a)
    results = membership_benchmark(
        Path(a.out),
        members=a.members,
        epsilon=a.epsilon,
        preset=a.preset,
        group_size=a.group_size,
        draws=a.draws,
        eval_epochs=a.eval_epochs,
        eval_width=a.eval_width,
        seed=a.seed,
        show_progress=not a.no_progress,
        public=public,
        private=private,
    )
    print(format_membership(results))
    print(f"\nwritten: {Path(a.out) / 'membership.json'}, {Path(a.out) / 'membership.png'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """speed, bench-*, audit, membership"""
    sp = sub.add_parser("speed", help="benchmark: seconds per draw and per optimisation iteration (JSON)")
    sp.add_argument("--json", default="runs/bench/speed.json")
    sp.add_argument("--width", type=int, default=128)
    sp.add_argument("--aux-per-class", type=int, default=100)
    sp.add_argument("--subspace-dim", type=int, default=200)
    sp.add_argument("--draws", type=int, default=10)
    sp.add_argument("--iterations", type=int, default=50)
    sp.add_argument("--repeats", type=int, default=3, help="each measurement in turn this many times; the fastest kept")
    sp.add_argument("--data-root")
    sp.add_argument("--precisions", nargs="+", choices=MEASURED_PRECISIONS, default=list(MEASURED_PRECISIONS))
    sp.add_argument("--no-baseline", action="store_true", help="skip the straightforward implementation")
    sp.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    own_image_options(sp, "time on these images instead of Fashion-MNIST's", test=False)
    sp.set_defaults(func=cmd_speed)

    bf = sub.add_parser(
        "bench-frontier",
        help="benchmark: accuracy against epsilon for DOS+SER and DP-KIP, with references (JSON, PNG; resumes)",
    )
    bf.add_argument("--out", default="runs/bench/frontier")
    bf.add_argument("--eval-runs", type=int, default=3)
    bf.add_argument(
        "--threads", type=int, help="threads of each point's process (default: this process's torch threads)"
    )
    bf.add_argument("--max-points", type=int, help="run at most this many new points, then stop (run again to go on)")
    bf.add_argument(
        "--jobs", type=int, default=1, help="points run at once, each its own process (e.g. 2 with --threads 1)"
    )
    bf.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files (default: Debian package or cache)")
    bf.add_argument(
        "--published",
        help="e.g. docs/bench/frontier: points published there count as measured; new ones are published there",
    )
    bf.set_defaults(func=cmd_bench_frontier)

    bk = sub.add_parser("bench-kip", help="benchmark: DP-KIP, both variants, at several epsilons and IPCs (JSON, PNG)")
    bk.add_argument("--out", default="runs/bench/kip")
    bk.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
    bk.add_argument("--ipcs", type=int, nargs="+", default=[10])
    bk.add_argument("--inits", nargs="+", choices=INITS, default=["noise", "aux"])
    bk.add_argument("--eval-runs", type=int, default=1)
    bk.add_argument("--no-baseline", action="store_true", help="skip the unoptimised auxiliary-image baseline")
    bk.add_argument("--methods", nargs="+", choices=("decoupled", "sync"), default=["decoupled", "sync"])
    bk.add_argument("--sync-steps", type=int, help="steps (releases) of each synchronised run (default: preset's)")
    bk.set_defaults(func=cmd_bench_kip)

    bs = sub.add_parser(
        "bench-signals",
        help="benchmark: gradient vs feature signals, with and without the subspace, same budget (JSON, PNG)",
    )
    bs.add_argument("--out", default="runs/bench/signals")
    bs.add_argument("--epsilon", type=float, default=RunSettings.epsilon)
    bs.add_argument("--ipc", type=int, default=10)
    bs.add_argument("--eval-runs", type=int, default=3)
    bs.add_argument("--only", nargs="+", help="run only these configurations (names as in signals.json)")
    bs.set_defaults(func=cmd_bench_signals)

    br = sub.add_parser(
        "bench-randomness", help="benchmark: cost of the owner's noise and Poisson sampling per request (JSON)"
    )
    br.add_argument("--json", default="runs/bench/randomness.json")
    br.set_defaults(func=cmd_bench_randomness)

    ba = sub.add_parser(
        "bench-accounting", help="benchmark: the owner's accountant work for the worst plans within its limits (JSON)"
    )
    ba.add_argument("--json", default="runs/bench/accounting.json")
    ba.set_defaults(func=cmd_bench_accounting)

    bm = sub.add_parser(
        "bench-owner-memory",
        help="benchmark: an owner's peak RSS answering gradient requests of growing size (spends its budget)",
    )
    bm.add_argument("--config", required=True, help="a scratch owner.toml (the probes spend from its ledger)")
    bm.add_argument("--json", default="runs/bench/owner_memory.json")
    bm.set_defaults(func=cmd_bench_owner_memory)

    bt = sub.add_parser("bench-transport", help="benchmark: sampling stage in deployment mode vs in-process (JSON)")
    bt.add_argument("--out", default="runs/bench/transport")
    bt.add_argument("--json", default="runs/bench/transport.json")
    bt.add_argument("--draws", type=int, default=1000)
    bt.add_argument("--draws-per-request", type=int, default=250)
    bt.add_argument("--preset", choices=sorted(PRESETS), default="default")
    bt.add_argument("--data-root")
    bt.set_defaults(func=cmd_bench_transport)

    au = sub.add_parser(
        "audit",
        help="empirical privacy audit: a canary distinguishing game on the real mechanism (exit 1 if it leaks)",
    )
    au.add_argument("--out", default="runs/audit")
    au.add_argument("--config", help="audit this owner's data, auxiliary set and clip norm (default: Fashion-MNIST)")
    own_image_options(au, "without --config: the private set audited", test=False)
    au.add_argument("--private-per-class", type=int, default=20, help="private records per class in the game")
    au.add_argument(
        "--aux-per-class", type=int, default=10, help="Fashion-MNIST: public auxiliary images per class (no --config)"
    )
    au.add_argument("--trials", type=int, default=1000, help="releases per world (with and without the canary)")
    au.add_argument("--sigma", type=float, default=1.0, help="noise multiplier of the audited release")
    au.add_argument("--draws", type=int, default=1, help="draws per audited release")
    au.add_argument("--group-size", type=float, help="expected Poisson sample per class (default: all, q = 1)")
    au.add_argument("--width", type=int, default=16)
    au.add_argument("--depth", type=int, help="default: by image size (28-32 px: 3, 64: 4, 128: 5, 224: 6)")
    au.add_argument("--subspace-dim", type=int, default=32)
    au.add_argument("--augmentation", default="none")
    au.add_argument(
        "--signal",
        choices=METHODS,
        default="features",
        help="the release audited: a feature request's signal kind, or kip-sync (one synchronised KIP step)",
    )
    au.add_argument("--kip-ipc", type=int, default=1, help="kip-sync: synthetic images per class in the message")
    au.add_argument("--delta", type=float, default=1e-5, help="delta of the claim (no --config)")
    au.add_argument("--confidence", type=float, default=0.95)
    au.add_argument("--seed", type=int, default=0, help="public seed: subset, networks, canary, threshold split")
    au.add_argument("--data-root")
    au.add_argument("--no-progress", action="store_true")
    au.set_defaults(func=cmd_audit)

    m = sub.add_parser(
        "membership",
        help="benchmark: loss-based membership inference on models trained on private vs near-non-private output",
    )
    m.add_argument("--out", default="runs/membership")
    m.add_argument("--members", type=int, default=1000, help="private records (the attack's members)")
    m.add_argument("--epsilon", type=float, default=RunSettings.epsilon)
    m.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    m.add_argument("--group-size", type=float, default=4.0, help="expected sample per class (owner caps q at 0.05)")
    m.add_argument("--draws", type=int)
    m.add_argument("--eval-epochs", type=int, default=100)
    m.add_argument("--eval-width", type=int, default=64)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--data-root")
    m.add_argument("--aux-per-class", type=int, default=20, help="Fashion-MNIST: auxiliary images per class")
    own_image_options(m, "the members are drawn from these images")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_membership)
