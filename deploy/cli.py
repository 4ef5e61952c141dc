"""``dpdistill``: command-line entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deploy.presets import PRESETS, distiller_config
from distiller_node.optimisation import INITS
from distiller_node.pipeline import DistillerConfig
from shared.evaluation import EvaluationConfig
from shared.statistic import KIP_SYNC, METHODS


def _distiller_config(a: argparse.Namespace) -> DistillerConfig:
    return distiller_config(
        a.preset,
        epsilon=a.epsilon,
        delta=a.delta,
        ipc=a.ipc,
        draws_per_request=a.draws_per_request,
        group_size=a.group_size,
        seed=a.seed,
        pea=a.pea,
        eval_runs=a.eval_runs,
        precision=a.precision,
        **{k: getattr(a, k) for k in PRESETS["default"] if k != "aux_per_class"},
    )


def _run_config(a: argparse.Namespace, out: Path, public) -> dict:
    """The CLI options as a Flower run config (keys of deploy/flower_app/pyproject.toml)."""
    rc = {
        "out": str(out.resolve()),
        "preset": a.preset,
        "owners": a.owners,
        "epsilon": a.epsilon,
        "ipc": a.ipc,
        "draws-per-request": a.draws_per_request or 0,
        "group-size": a.group_size or 0.0,
        "eval-runs": a.eval_runs,
        "seed": a.seed,
        "device": getattr(a, "device", "auto"),
        "precision": getattr(a, "precision", "float32"),
        **public.run_config(),
    }
    for key in (
        "width",
        "draws",
        "iterations",
        "lr",
        "eval_epochs",
        "eval_width",
        "signal",
        "steps_per_draw",
        "init",
    ):
        if getattr(a, key, None):
            rc[key.replace("_", "-")] = getattr(a, key)
    if getattr(a, "subspace_dim", None) is not None:  # 0 is a choice here: no projection
        rc["subspace-dim"] = a.subspace_dim
    return rc


def cmd_simulate(a: argparse.Namespace) -> int:
    import time

    from deploy.benchmark import cpu_model, write
    from deploy.simulation import simulate

    cfg = _distiller_config(a)
    public, private = _user_sets(a)
    t0 = time.perf_counter()
    if a.transport == "flower":
        from deploy.flower_simulation import simulate_flower

        rc = _run_config(a, Path(a.out), public)
        results = simulate_flower(Path(a.out), rc, a.private_subset, private, _owner_settings(a))
    else:
        results = simulate(
            Path(a.out),
            cfg,
            public,
            private,
            a.private_subset,
            not a.no_progress,
            a.owners,
            owner_settings=_owner_settings(a),
            device=a.device,
        )
    print(f"\nall artefacts are in {Path(a.out) / 'distiller'}")
    if a.benchmark_json:
        bench = {
            "benchmark": "run",
            "preset": a.preset,
            "wall_s": time.perf_counter() - t0,
            "test_accuracy_mean": (results["test_accuracy"] or {}).get("mean"),
            "test_accuracy_std": (results["test_accuracy"] or {}).get("std"),
            "validation_accuracy_mean": (results.get("validation_accuracy") or {}).get("mean"),
            "validation_accuracy_std": (results.get("validation_accuracy") or {}).get("std"),
            "krr_accuracy": results.get("krr_accuracy"),
            "epsilon_prv": results["epsilon_prv"],
            "epsilon_rdp": results["epsilon_rdp"],
            "delta": results["delta"],
            "stage_s": results["timings_s"],
            "peak_rss_mb": results["peak_rss_mb"],
            "peak_rss_mb_by_stage": results["peak_rss_mb_by_stage"],
            "config": results["config"],
            "epsilon_by_owner": results["epsilon_by_owner"],
            "public_sets": public.run_config(),
            "private": a.data or "fashion-mnist",
            "cpu": cpu_model(),
        }
        write(a.benchmark_json, bench)
    return 0


def _owner_settings(a: argparse.Namespace) -> dict:
    """The simulated owners' own choices (their owner.toml) that the command line sets."""
    settings: dict = {
        "privacy_unit": a.unit,
        "patient_column": a.patient_column,
        "holdout": a.holdout or 0.0,
        "device": a.device,
        "precision": a.precision,
    }
    if a.class_counts_epsilon:
        settings |= {"class_counts": "dp", "class_counts_epsilon": a.class_counts_epsilon}
    return settings


def _user_sets(a: argparse.Namespace):
    """(PublicSets, the owner's own ImageSource or None) from ``--data``, ``--aux``, ``--test``."""
    from deploy.public_sets import PublicSets
    from shared.images.source import source_for_path

    aux_per_class = getattr(a, "aux_per_class", None) or PRESETS[a.preset]["aux_per_class"]
    data, aux, test = getattr(a, "data", None), getattr(a, "aux", None), getattr(a, "test", None)
    validation = getattr(a, "validation", None)
    if validation is not None and getattr(a, "transport", "in-process") != "in-process":
        raise ValueError("--validation is scored by the in-process simulation only")
    if data is not None and aux is None:
        raise ValueError(
            "--data needs --aux: a public auxiliary set with the same classes (SER subspaces are built from it)"
        )
    if test is not None and aux is None:
        raise ValueError("--test goes with --aux (the public auxiliary set it is compared with)")

    def absolute(path: str | None) -> str | None:  # run configs travel to other processes
        return str(Path(path).resolve()) if path is not None else None

    public = PublicSets(
        aux=absolute(aux),
        test=absolute(test),
        validation=absolute(validation),
        image_size=a.image_size,
        channels=a.channels,
        resize=a.resize,
        aux_per_class=aux_per_class,
        data_root=a.data_root,
        download=getattr(a, "download", False),
    )
    private = source_for_path(data, a.image_size, a.channels, a.resize, "train") if data is not None else None
    return public, private


def cmd_example_images(a: argparse.Namespace) -> int:
    from deploy.example_images import write_example

    summary = write_example(
        a.kind,
        Path(a.out),
        a.image_size,
        a.channels,
        a.aux_per_class,
        a.data_root,
        show_progress=not a.no_progress,
        imbalance=a.imbalance,
    )
    counts = ", ".join(f"{split} {n}" for split, n in summary["images"].items())
    print(f"{a.kind} at {a.image_size}px, {a.channels} channel(s) in {a.out}: {counts} images")
    print(f"folders {a.out}/<split>/<class>/ and manifests {a.out}/<split>.csv (path,label,patient_id)")
    return 0


def cmd_compare_runs(a: argparse.Namespace) -> int:
    from deploy.compare_runs import compare_runs

    runs = {}
    for item in a.run:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--run takes LABEL=PATH (a results.json or an evaluate --json file), got {item!r}")
        runs[label] = path
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_runs(runs, out / "recall.json", out / "recall.png", a.title)
    for label, row in table.items():
        print(f"{label:<20} accuracy {100 * row['accuracy']:.2f}%  balanced {100 * row['balanced_accuracy']:.2f}%")
    print(f"written: {out / 'recall.json'}, {out / 'recall.png'}")
    return 0


def cmd_speed(a: argparse.Namespace) -> int:
    from benchmarks.speed import speed
    from deploy.benchmark import write

    public, private = _user_sets(a)
    write(
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
        ),
    )
    return 0


def cmd_bench_kip(a: argparse.Namespace) -> int:
    from deploy.kip_benchmark import kip_benchmark

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


def cmd_bench_frontier(a: argparse.Namespace) -> int:
    from benchmarks.frontier import frontier

    result = frontier(Path(a.out), a.eval_runs, a.threads, a.max_points, a.data_root)
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


def cmd_bench_randomness(a: argparse.Namespace) -> int:
    from deploy.benchmark import write
    from deploy.randomness_benchmark import randomness_costs

    write(a.json, randomness_costs())
    return 0


def cmd_bench_signals(a: argparse.Namespace) -> int:
    from deploy.signal_benchmark import compare_signals

    result = compare_signals(Path(a.out), a.epsilon, a.ipc, a.eval_runs, a.only)
    for name, r in result["runs"].items():
        print(
            f"{name:<24} {100 * r['accuracy_mean']:6.2f}% +- {100 * r['accuracy_std']:.2f}  "
            f"eps {r['epsilon_prv']:.3f}  {r['wall_s'] / 60:5.1f} min  peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"\nwritten: {Path(a.out) / 'signals.json'}, {Path(a.out) / 'signals.png'}")
    return 0


def cmd_bench_owner_memory(a: argparse.Namespace) -> int:
    from deploy.benchmark import write
    from deploy.signal_benchmark import owner_memory

    write(a.json, owner_memory(Path(a.config)))
    return 0


def cmd_bench_transport(a: argparse.Namespace) -> int:
    from deploy.benchmark import write
    from deploy.transport_benchmark import transport_overhead

    result = transport_overhead(Path(a.out), a.draws, a.draws_per_request, a.preset, a.data_root)
    write(a.json, result)
    print(
        f"sampling {a.draws} draws: in-process {result['in_process']['sampling_s']:.1f} s, "
        f"deployment {result['deployment']['sampling_s']:.1f} s (overhead {100 * result['overhead_fraction']:.1f}%)"
    )
    return 0


def cmd_budget(a: argparse.Namespace) -> int:
    from owner_node.budget import budget_report, format_budget
    from owner_node.config import OwnerConfig
    from owner_node.ledger import Ledger

    config = OwnerConfig.load(a.config)
    if not config.ledger_path.exists():
        print(f"no ledger yet at {config.ledger_path}: nothing released")
    ledger = Ledger(config.ledger_path)
    if a.cancel_plan:
        plan = ledger.cancel_plan(a.cancel_plan)
        print(f"cancelled plan {plan.plan_id}: {plan.used} of {plan.event.count} releases made stay spent\n")
    rows = ledger.rows()
    print(format_budget(budget_report(config, [r.event for r in rows], ledger.outstanding())))
    plans = ledger.plans()
    if plans:
        print("\nrun plans:")
        print(f"  {'plan id':<20} {'made':>6} {'planned':>7} {'sigma':>8} {'q':>9}  state")
        for p in plans:
            state = "cancelled" if p.cancelled else ("open" if p.outstanding else "complete")
            print(
                f"  {p.plan_id:<20} {p.used:>6} {p.event.count:>7} {p.event.noise_multiplier:>8.4f} "
                f"{p.event.sample_rate:>9.6f}  {state}"
            )
    if rows:
        print("\nledger:")
        print(f"  {'request id':<28} {'state':<9} {'draws':>5} {'sigma':>8} {'q':>9}")
        for r in rows:
            print(
                f"  {r.request_id:<28} {r.state:<9} {r.event.count:>5} "
                f"{r.event.noise_multiplier:>8.4f} {r.event.sample_rate:>9.6f}"
            )
    ledger.close()
    return 0


def cmd_ledger_backup(a: argparse.Namespace) -> int:
    from owner_node.config import OwnerConfig
    from owner_node.ledger_backup import backup_ledger

    s = backup_ledger(OwnerConfig.load(a.config).ledger_path, Path(a.destination))
    print(
        f"backed up {s['source']} to {s['destination']}: {s['rows']} releases "
        f"({s['released']} released, {s['reserved']} reserved), {s['bytes']} bytes, integrity ok"
    )
    return 0


def cmd_owner_serve(a: argparse.Namespace) -> int:
    import logging

    from owner_node.config import OwnerConfig
    from owner_node.grpc_server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(OwnerConfig.load(a.config))
    return 0


def cmd_flower_run(a: argparse.Namespace) -> int:
    from deploy import flower_runs

    run_id = flower_runs.submit(a.federation, a.run_config)
    print(f"submitted run {run_id} to federation '{a.federation}'; waiting for it to finish")
    flower_runs.wait(a.federation, run_id)
    return 0


def cmd_deploy_local(a: argparse.Namespace) -> int:
    from deploy.local_deployment import LocalDeployment

    public, private = _user_sets(a)
    d = LocalDeployment(
        Path(a.out),
        num_owners=a.owners,
        epsilon=a.epsilon,
        public=public,
        private=private,
        private_subset=a.private_subset,
        max_draws_per_request=max(a.draws_per_request or 100, 1),
    )
    try:
        print(f"starting {a.owners} owner service(s), a SuperLink and {a.owners} SuperNode(s); logs in {d.logs}")
        d.start()
        run_id = d.submit(_run_config(a, d.root, public))
        print(f"run {run_id} submitted; FLWR_HOME={d.root / 'flwr-cli'} flwr log {run_id} shows the distiller's log")
        d.wait(run_id)
        print(f"all artefacts are in {d.root / 'distiller'}")
    finally:
        d.stop()
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from shared.datasets import load_fashion_mnist, split_auxiliary
    from shared.evaluation import evaluate
    from shared.images.classes import check_same_classes
    from shared.images.source import load_source, source_for_path
    from shared.metrics import format_metrics

    blob = torch.load(a.synthetic, weights_only=True)
    images = blob["images"]
    if a.test is None:
        test = load_fashion_mnist(train=False, root=a.data_root, download=a.download)
        _, held_out = split_auxiliary(test, a.aux_per_class)
    else:  # the synthetic set's own size and channels unless told otherwise
        size, channels = a.image_size or images.shape[-1], a.channels or images.shape[1]
        held_out = load_source(source_for_path(a.test, size, channels, a.resize, "test"), cache=False).data
    if tuple(held_out.images.shape[1:]) != tuple(images.shape[1:]):
        raise ValueError(
            f"test images are {tuple(held_out.images.shape[1:])}, the synthetic ones {tuple(images.shape[1:])}: "
            "give --image-size and --channels matching the synthetic set"
        )
    check_same_classes(tuple(blob["class_names"]), held_out, names=("synthetic set", "test set"))
    cfg = EvaluationConfig(runs=a.eval_runs, epochs=a.eval_epochs, width=a.eval_width)
    result = evaluate(
        images,
        blob["labels"],
        held_out.images,
        held_out.labels,
        len(blob["class_names"]),
        cfg,
        normalization=tuple(blob["normalization"]),
        class_names=tuple(blob["class_names"]),
    )
    print(f"test accuracy: {100 * result.mean:.2f}% +- {100 * result.std:.2f} over {len(result.accuracies)} trainings")
    print(format_metrics(result.metrics))
    if a.json:
        from deploy.benchmark import cpu_model, write

        write(
            a.json,
            {
                "synthetic": str(Path(a.synthetic).resolve()),
                "test": a.test or "fashion-mnist",
                "test_images": len(held_out),
                "test_accuracy": result.to_dict(),
                "test_metrics": result.metrics,
                "evaluation": {"runs": cfg.runs, "epochs": cfg.epochs, "width": cfg.width},
                "cpu": cpu_model(),
            },
        )
    return 0


def cmd_owner_evaluate(a: argparse.Namespace) -> int:
    from owner_node.config import OwnerConfig
    from owner_node.evaluation import NOTICE, owner_evaluate
    from shared.metrics import format_metrics

    cfg = EvaluationConfig(runs=a.eval_runs, epochs=a.eval_epochs, width=a.eval_width)
    report = owner_evaluate(OwnerConfig.load(a.config), a.synthetic, cfg, a.out, not a.no_progress)
    acc = report["accuracy"]
    print(f"\nowner's held-out split ({report['held_out_images']} images), {cfg.runs} trainings:")
    print(f"accuracy {100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f}")
    print(format_metrics(report["metrics"]))
    print(f"\nwritten: {report['out']}/owner_evaluation.json, {report['out']}/confusion_matrix.png")
    print(NOTICE)
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from owner_node.audit import AuditConfig, CanaryGame, KipStepCanaryGame, audit_subset, format_audit, write_audit
    from owner_node.config import OwnerConfig
    from owner_node.data import (
        PrivateData,
        load_auxiliary,
        load_private_images,
        normalization_for,
        public_normalization,
    )
    from shared.datasets import FASHION_MNIST_NORMALIZATION, load_fashion_mnist, to_float
    from shared.images.source import load_source
    from shared.networks import NetworkSpec, depth_for_image_size

    if a.config:
        if a.data or a.aux:
            raise ValueError("--config names the owner's data and auxiliary set; --data and --aux go without it")
        owner = OwnerConfig.load(a.config)
        data = load_private_images(owner, progress=not a.no_progress)
        aux, clip_norm, delta = load_auxiliary(owner), owner.clip_norm, owner.delta
        norm = normalization_for(owner, aux)
    else:
        public, private = _user_sets(a)
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
        network=NetworkSpec(
            width=a.width,
            depth=a.depth or depth_for_image_size(data.images.shape[-1]),
            channels=data.images.shape[1],
            image_size=data.images.shape[-1],
            num_classes=data.num_classes,
        ),
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
    from deploy.membership import format_membership, membership_benchmark

    public, private = _user_sets(a)
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


def _own_image_options(p: argparse.ArgumentParser, data_help: str, test: bool = True) -> None:
    """--data (private), --aux and --test (public) and their pixel format: any labelled image collection."""
    kinds = "a folder of class folders, a CSV manifest (path,label,...) or an npz"
    p.add_argument("--data", help=f"{data_help}: {kinds}")
    p.add_argument(
        "--aux", help="the public auxiliary set (same classes; folder, CSV or npz); default: Fashion-MNIST's"
    )
    if test:
        p.add_argument("--test", help="a public test set (same classes); with --aux and without it, no evaluation")
    p.add_argument("--image-size", type=int, help="image side in pixels (public; needed for folders and CSV)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (gray) or 3 (RGB) (public; folders and CSV)")
    p.add_argument("--resize", choices=("crop", "pad"), default="crop", help="shorter side + centre crop, or pad")


def _compute_options(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help=f"where {who} compute: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bf16"),
        default="float32",
        help="network passes in float32, or autocast to bfloat16 (AMX / AVX-512-BF16 CPUs, GPUs); see README",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdistill", description="Two-party differentially private dataset distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "simulate",
        help="run owner and distiller in one process on Fashion-MNIST or your own images (--data, --aux, --test)",
    )
    s.add_argument("--out", default="runs/default", help="output folder (an existing run there is resumed)")
    s.add_argument("--preset", choices=sorted(PRESETS), default="default")
    s.add_argument("--epsilon", type=float, default=1.0)
    s.add_argument("--delta", type=float, default=1e-5)
    s.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    s.add_argument("--draws", type=int, help="number of noisy releases (sampling stage)")
    s.add_argument(
        "--draws-per-request", type=int, help="draws (kip-sync: steps) per owner request (default: preset's, or 25)"
    )
    s.add_argument(
        "--group-size", type=float, help="expected Poisson sample per class and draw (default: preset's, or 50)"
    )
    s.add_argument(
        "--signal",
        choices=METHODS,
        help="what the owner releases: network embeddings (features), per-example loss gradients (gradients), "
        "or moments of projected scattering features for decoupled DP-KIP (kip; preset kip-decoupled)",
    )
    s.add_argument("--subspace-dim", type=int, help="SER subspace dimension k (0: no projection)")
    s.add_argument("--steps-per-draw", type=int, help="optimisation steps on one stored draw before the next")
    s.add_argument("--init", choices=INITS, help="synthetic images start from noise or public auxiliary images")
    s.add_argument("--width", type=int, help="width of the embedding ConvNets")
    s.add_argument("--iterations", type=int, help="optimisation iterations (free of privacy cost)")
    s.add_argument("--lr", type=float, help="learning rate for the synthetic images (SGD, momentum 0.5)")
    s.add_argument("--pea", action="store_true", help="store each image as 4 upsampled quadrants")
    s.add_argument("--aux-per-class", type=int, help="public auxiliary images per class (from the test split)")
    s.add_argument("--eval-runs", type=int, default=3)
    s.add_argument("--eval-epochs", type=int)
    s.add_argument("--eval-width", type=int)
    s.add_argument("--owners", type=int, default=1, help="split the private data among this many simulated owners")
    s.add_argument(
        "--transport",
        choices=("in-process", "flower"),
        default="in-process",
        help="in-process calls, or Flower's simulation engine with the owners as gRPC services",
    )
    s.add_argument("--private-subset", type=int, help="use only this many private training images (for quick tries)")
    s.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files (default: Debian package or cache)")
    s.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if not found")
    _own_image_options(s, "the simulated owner's own images")
    s.add_argument(
        "--validation",
        help="a public validation set (same classes, with --test): the same trainings are scored on it too, "
        "so settings can be chosen without looking at the test set",
    )
    s.add_argument(
        "--unit",
        choices=("image", "patient"),
        default="image",
        help="the owner's privacy unit: each image, or each patient (all its images; --data as a CSV manifest)",
    )
    s.add_argument("--patient-column", default="patient_id", help="with --unit patient: the manifest's column")
    s.add_argument(
        "--holdout", type=float, help="the owner keeps this share of its data out of every release (owner-evaluate)"
    )
    s.add_argument(
        "--class-counts-epsilon",
        type=float,
        help="the owner publishes its class counts with DP, for this share of its budget (default: public counts)",
    )
    s.add_argument("--seed", type=int, default=0, help="public seed for networks and augmentations")
    _compute_options(s, "the distiller and the simulated owners")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--benchmark-json", help="also write wall time, accuracy, epsilon and peak RSS to this JSON file")
    s.set_defaults(func=cmd_simulate)

    ex = sub.add_parser(
        "example-images",
        help="write an example collection as PNG class folders and CSV manifests (train, aux, test) to try --data on",
    )
    ex.add_argument("kind", choices=("fashion-mnist", "digits"))
    ex.add_argument("--out", required=True)
    ex.add_argument("--image-size", type=int, default=64)
    ex.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ex.add_argument("--aux-per-class", type=int, default=50, help="public auxiliary images per class")
    ex.add_argument("--data-root", help="fashion-mnist: folder with the IDX files (default: Debian package)")
    ex.add_argument(
        "--imbalance", type=float, default=1.0, help="largest/smallest class ratio of the train split (geometric)"
    )
    ex.add_argument("--no-progress", action="store_true")
    ex.set_defaults(func=cmd_example_images)

    cr = sub.add_parser("compare-runs", help="per-class recall of several runs side by side (JSON, PNG)")
    cr.add_argument("--run", action="append", required=True, help="LABEL=results.json (repeat)")
    cr.add_argument("--out", required=True)
    cr.add_argument("--title", default="")
    cr.set_defaults(func=cmd_compare_runs)

    sp = sub.add_parser("speed", help="benchmark: seconds per draw and per optimisation iteration (JSON)")
    sp.add_argument("--json", default="runs/bench/speed.json")
    sp.add_argument("--width", type=int, default=128)
    sp.add_argument("--aux-per-class", type=int, default=100)
    sp.add_argument("--subspace-dim", type=int, default=200)
    sp.add_argument("--draws", type=int, default=10)
    sp.add_argument("--iterations", type=int, default=50)
    sp.add_argument("--data-root")
    sp.add_argument("--precisions", nargs="+", choices=("float32", "bf16"), default=["float32", "bf16"])
    sp.add_argument("--no-baseline", action="store_true", help="skip the straightforward implementation")
    sp.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    _own_image_options(sp, "time on these images instead of Fashion-MNIST's", test=False)
    sp.set_defaults(func=cmd_speed)

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

    bf = sub.add_parser(
        "bench-frontier",
        help="benchmark: accuracy against epsilon for DOS+SER and DP-KIP, with references (JSON, PNG; resumes)",
    )
    bf.add_argument("--out", default="runs/bench/frontier")
    bf.add_argument("--eval-runs", type=int, default=3)
    bf.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of each point's process")
    bf.add_argument("--max-points", type=int, help="run at most this many new points, then stop (run again to go on)")
    bf.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files (default: Debian package or cache)")
    bf.set_defaults(func=cmd_bench_frontier)

    bs = sub.add_parser(
        "bench-signals",
        help="benchmark: gradient vs feature signals, with and without the subspace, same budget (JSON, PNG)",
    )
    bs.add_argument("--out", default="runs/bench/signals")
    bs.add_argument("--epsilon", type=float, default=1.0)
    bs.add_argument("--ipc", type=int, default=10)
    bs.add_argument("--eval-runs", type=int, default=3)
    bs.add_argument("--only", nargs="+", help="run only these configurations (names as in signals.json)")
    bs.set_defaults(func=cmd_bench_signals)

    br = sub.add_parser(
        "bench-randomness", help="benchmark: cost of the owner's noise and Poisson sampling per request (JSON)"
    )
    br.add_argument("--json", default="runs/bench/randomness.json")
    br.set_defaults(func=cmd_bench_randomness)

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

    b = sub.add_parser("budget", help="print an owner's ledger and remaining budget")
    b.add_argument("--config", required=True, help="the owner's config file (TOML)")
    b.add_argument(
        "--cancel-plan", metavar="PLAN_ID", help="free what an abandoned run plan still holds in reserve (operator)"
    )
    b.set_defaults(func=cmd_budget)

    lb = sub.add_parser(
        "ledger-backup", help="copy an owner's ledger consistently, even while its service runs (never overwrites)"
    )
    lb.add_argument("--config", required=True, help="the owner's config file (TOML)")
    lb.add_argument("destination", help="the backup file to create (must not exist)")
    lb.set_defaults(func=cmd_ledger_backup)

    o = sub.add_parser("owner-serve", help="run the owner service (gRPC) with the limits in the owner's config")
    o.add_argument("--config", required=True, help="the owner's config file (TOML)")
    o.set_defaults(func=cmd_owner_serve)

    f = sub.add_parser("flower-run", help="start a distillation on a SuperLink (flwr CLI) and wait for its outcome")
    f.add_argument("--federation", default="dpdistill", help="connection name in $FLWR_HOME/config.toml")
    f.add_argument("--run-config", default="", help="keys as in deploy/flower_app/pyproject.toml")
    f.set_defaults(func=cmd_flower_run)

    d = sub.add_parser(
        "deploy-local",
        help="every role as its own process on 127.0.0.1 (owner services, SuperLink, SuperNodes, distiller), TLS on",
    )
    d.add_argument("--out", default="runs/deployment")
    d.add_argument("--owners", type=int, default=1)
    d.add_argument("--preset", choices=sorted(PRESETS), default="default")
    d.add_argument("--epsilon", type=float, default=1.0, help="each owner's budget")
    d.add_argument("--draws-per-request", type=int, help="draws per Flower message (default: the preset's, or 25)")
    d.add_argument("--group-size", type=float, help="default: the preset's, or 50")
    d.add_argument("--ipc", type=int, default=10)
    d.add_argument("--eval-runs", type=int, default=3)
    d.add_argument("--eval-epochs", type=int)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--draws", type=int)
    d.add_argument("--signal", choices=METHODS)
    d.add_argument("--iterations", type=int)
    d.add_argument("--aux-per-class", type=int)
    d.add_argument("--private-subset", type=int)
    d.add_argument("--data-root")
    _own_image_options(d, "the owners' own images (split among --owners)")
    _compute_options(d, "the distiller (the owners' owner.toml [compute] device: cpu)")
    d.set_defaults(func=cmd_deploy_local)

    au = sub.add_parser(
        "audit",
        help="empirical privacy audit: a canary distinguishing game on the real mechanism (exit 1 if it leaks)",
    )
    au.add_argument("--out", default="runs/audit")
    au.add_argument("--config", help="audit this owner's data, auxiliary set and clip norm (default: Fashion-MNIST)")
    _own_image_options(au, "without --config: the private set audited", test=False)
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
    m.add_argument("--epsilon", type=float, default=1.0)
    m.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    m.add_argument("--group-size", type=float, default=4.0, help="expected sample per class (owner caps q at 0.05)")
    m.add_argument("--draws", type=int)
    m.add_argument("--eval-epochs", type=int, default=100)
    m.add_argument("--eval-width", type=int, default=64)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--data-root")
    m.add_argument("--aux-per-class", type=int, default=20, help="Fashion-MNIST: auxiliary images per class")
    _own_image_options(m, "the members are drawn from these images")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_membership)

    oe = sub.add_parser(
        "owner-evaluate",
        help="at the owner: train on a synthetic.pt, test on the owner's held-out split ([data] holdout); "
        "figures stay at the owner",
    )
    oe.add_argument("synthetic", help="the synthetic.pt the distiller produced")
    oe.add_argument("--config", required=True, help="the owner's config file (TOML)")
    oe.add_argument("--out", help="default: owner_evaluation/<name> beside the owner's ledger")
    oe.add_argument("--eval-runs", type=int, default=3)
    oe.add_argument("--eval-epochs", type=int, default=300)
    oe.add_argument("--eval-width", type=int, default=128)
    oe.add_argument("--no-progress", action="store_true")
    oe.set_defaults(func=cmd_owner_evaluate)

    e = sub.add_parser("evaluate", help="train ConvNets on an exported synthetic.pt and test them")
    e.add_argument("synthetic")
    e.add_argument("--test", help="a labelled test set (folder, CSV manifest or npz); default: Fashion-MNIST's")
    e.add_argument("--image-size", type=int, help="with --test: image side (default: the synthetic images')")
    e.add_argument("--channels", type=int, choices=(1, 3), help="with --test: default: the synthetic images'")
    e.add_argument("--resize", choices=("crop", "pad"), default="crop", help="with --test: resize policy")
    e.add_argument("--json", help="also write accuracy and per-class metrics to this JSON file")
    e.add_argument("--data-root")
    e.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if not found")
    e.add_argument(
        "--aux-per-class", type=int, default=100, help="test images per class excluded (the auxiliary slice)"
    )
    e.add_argument("--eval-runs", type=int, default=3)
    e.add_argument("--eval-epochs", type=int, default=300)
    e.add_argument("--eval-width", type=int, default=128)
    e.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"dpdistill: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
