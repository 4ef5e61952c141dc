"""Commands that run the system: ``simulate`` (owners and distiller in one process, or through Flower's
simulation engine), ``deploy-local`` (every role its own process), ``flower-run``, and the helpers
``example-images`` and ``compare-runs``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deploy.cli_options import (
    distiller_config_from_args,
    own_image_options,
    owner_settings_from_args,
    run_config_from_args,
    user_sets,
)
from deploy.presets import PRESETS
from deploy.run_settings import RunSettings
from shared.compute.choices import compute_options
from shared.images.policy import PATIENT_SOURCES
from shared.run_choices import INITS, METHODS
from shared.wire.messages import PRIVACY_UNITS

DRY_RUN_HELP = (
    "print the plan (epsilon, sigma, q, releases, group size, expected signal-to-noise per class, rough wall "
    "time) and stop: nothing is reserved, released or spent"
)


def cmd_simulate(a: argparse.Namespace) -> int:
    import time

    import torch

    from deploy.simulation import simulate
    from shared.measurement import cpu_model, write_json

    cfg = distiller_config_from_args(a)
    public, private = user_sets(a)
    t0 = time.perf_counter()
    if a.transport == "flower" and not a.dry_run:  # a dry run makes the same plan in this process
        from deploy.flower_simulation import simulate_flower

        rc = run_config_from_args(a, Path(a.out), public)
        results = simulate_flower(Path(a.out), rc, a.private_subset, private, owner_settings_from_args(a))
    else:
        results = simulate(
            Path(a.out),
            cfg,
            public,
            private,
            a.private_subset,
            not a.no_progress,
            a.owners,
            owner_settings=owner_settings_from_args(a),
            device=a.device,
            dry_run=a.dry_run,
        )
    if a.dry_run:
        return 0
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
            "threads": torch.get_num_threads(),
            "compute": results["compute"],  # device and the precision "auto" chose, with its reason
        }
        write_json(a.benchmark_json, bench)
    return 0


def cmd_deploy_local(a: argparse.Namespace) -> int:
    from deploy.local_deployment import LocalDeployment, dry_run_local

    public, private = user_sets(a)
    max_draws = max(a.draws_per_request or 100, 1)
    if a.dry_run:
        rc = run_config_from_args(a, Path(a.out), public)
        dry_run_local(Path(a.out), rc, a.owners, a.epsilon, private, a.private_subset, max_draws, 0)
        return 0
    d = LocalDeployment(
        Path(a.out),
        num_owners=a.owners,
        epsilon=a.epsilon,
        delta=a.delta,
        public=public,
        private=private,
        private_subset=a.private_subset,
        max_draws_per_request=max_draws,
        owner_settings=owner_settings_from_args(a),
    )
    try:
        print(f"starting {a.owners} owner service(s), a SuperLink and {a.owners} SuperNode(s); logs in {d.logs}")
        d.start()
        run_id = d.submit(run_config_from_args(a, d.root, public))
        print(f"run {run_id} submitted; FLWR_HOME={d.root / 'flwr-cli'} flwr log {run_id} shows the distiller's log")
        d.wait(run_id)
        print(f"all artefacts are in {d.root / 'distiller'}")
    finally:
        d.stop()
    return 0


def cmd_flower_run(a: argparse.Namespace) -> int:
    from deploy import flower_runs

    run_id = flower_runs.submit(a.federation, a.run_config)
    print(f"submitted run {run_id} to federation '{a.federation}'; waiting for it to finish")
    flower_runs.wait(a.federation, run_id)
    return 0


def cmd_example_images(a: argparse.Namespace) -> int:
    from deploy.example_images import write_example

    if a.kind == "dicom":
        from deploy.dicom_example import write_dicom_example

        summary = write_dicom_example(Path(a.out))
        print(f"DICOM collection in {a.out}/<split>/<modality>/: {json.dumps(summary['files'])}")
        print(
            f"volumes (train only): {summary['volumes_in_train']}; awkward files: {summary['awkward_files_in_train']}"
        )
        return 0
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


def method_options(p: argparse.ArgumentParser) -> None:
    """The method's settings (RunSettings fields) that simulate and deploy-local both take."""
    p.add_argument("--subspace-dim", type=int, help="SER subspace dimension k (0: no projection)")
    p.add_argument("--steps-per-draw", type=int, help="optimisation steps on one stored draw before the next")
    p.add_argument(
        "--aux-prior",
        type=float,
        help="weight of the auxiliary prior: the directions each projection leaves out are fitted to the public "
        "auxiliary set's class means (0: off)",
    )
    p.add_argument("--init", choices=INITS, help="synthetic images start from noise or public auxiliary images")
    p.add_argument("--width", type=int, help="width of the embedding ConvNets")
    p.add_argument("--lr", type=float, help="learning rate for the synthetic images (SGD, momentum 0.5)")
    p.add_argument(
        "--pea",
        action=argparse.BooleanOptionalAction,
        help="store each image as four half-size ones, each read back enlarged (PEA; default: the preset's)",
    )
    p.add_argument("--eval-width", type=int)


def owner_options(p: argparse.ArgumentParser) -> None:
    """The simulated owners' own choices (their owner.toml) that simulate and deploy-local take."""
    p.add_argument(
        "--unit",
        choices=PRIVACY_UNITS,
        help="the owner's privacy unit: each image (the owner's default), or each patient (all its images; see "
        "--patient-from)",
    )
    p.add_argument("--patient-column", help="with --unit patient: the manifest's column (default: the owner's)")
    p.add_argument(
        "--patient-from",
        choices=PATIENT_SOURCES,
        help="with --unit patient: each image's patient from the manifest's column (the owner's default), its "
        "DICOM PatientID, or its file (a volume's slices are one patient)",
    )
    p.add_argument(
        "--holdout", type=float, help="the owner keeps this share of its data out of every release (owner-evaluate)"
    )
    p.add_argument(
        "--class-counts-epsilon",
        type=float,
        help="the owner publishes its class counts with DP, for this share of its budget (default: public counts)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """simulate, deploy-local, flower-run, example-images, compare-runs"""
    s = sub.add_parser(
        "simulate",
        help="run owner and distiller in one process on Fashion-MNIST or your own images (--data, --aux, --test)",
    )
    s.add_argument("--out", default="runs/default", help="output folder (an existing run there is resumed)")
    s.add_argument("--preset", choices=sorted(PRESETS), default=RunSettings.preset)
    s.add_argument("--epsilon", type=float, default=RunSettings.epsilon)
    s.add_argument("--delta", type=float, default=RunSettings.delta)
    s.add_argument("--ipc", type=int, default=RunSettings.ipc, help="synthetic images per class")
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
    s.add_argument("--iterations", type=int, help="optimisation iterations (free of privacy cost)")
    method_options(s)
    s.add_argument("--aux-per-class", type=int, help="public auxiliary images per class (from the test split)")
    s.add_argument("--eval-runs", type=int, default=RunSettings.eval_runs)
    s.add_argument("--eval-epochs", type=int)
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
    own_image_options(s, "the simulated owner's own images")
    s.add_argument(
        "--validation",
        help="a public validation set (same classes, with --test): the same trainings are scored on it too, "
        "so settings can be chosen without looking at the test set",
    )
    owner_options(s)
    s.add_argument("--seed", type=int, default=RunSettings.seed, help="public seed for networks and augmentations")
    compute_options(s, "the distiller and the simulated owners")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--benchmark-json", help="also write wall time, accuracy, epsilon and peak RSS to this JSON file")
    s.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser(
        "deploy-local",
        help="every role as its own process on 127.0.0.1 (owner services, SuperLink, SuperNodes, distiller), TLS on",
    )
    d.add_argument("--out", default="runs/deployment")
    d.add_argument("--owners", type=int, default=1)
    d.add_argument("--preset", choices=sorted(PRESETS), default=RunSettings.preset)
    d.add_argument("--epsilon", type=float, default=RunSettings.epsilon, help="each owner's budget")
    d.add_argument("--delta", type=float, default=RunSettings.delta, help="each owner's delta (the run plans with it)")
    d.add_argument("--draws-per-request", type=int, help="draws per Flower message (default: the preset's, or 25)")
    d.add_argument("--group-size", type=float, help="default: the preset's, or 50")
    d.add_argument("--ipc", type=int, default=RunSettings.ipc)
    d.add_argument("--eval-runs", type=int, default=RunSettings.eval_runs)
    d.add_argument("--eval-epochs", type=int)
    d.add_argument("--seed", type=int, default=RunSettings.seed)
    d.add_argument("--draws", type=int)
    d.add_argument("--signal", choices=METHODS)
    d.add_argument("--iterations", type=int)
    method_options(d)
    d.add_argument("--aux-per-class", type=int)
    d.add_argument("--private-subset", type=int)
    owner_options(d)
    d.add_argument("--data-root")
    own_image_options(d, "the owners' own images (split among --owners)")
    compute_options(d, "the distiller (the owners' owner.toml [compute] device: cpu)")
    d.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    d.set_defaults(func=cmd_deploy_local)

    f = sub.add_parser("flower-run", help="start a distillation on a SuperLink (flwr CLI) and wait for its outcome")
    f.add_argument("--federation", default="dpdistill", help="connection name in $FLWR_HOME/config.toml")
    f.add_argument("--run-config", default="", help="keys as in deploy/flower_app/pyproject.toml")
    f.set_defaults(func=cmd_flower_run)

    ex = sub.add_parser(
        "example-images",
        help="write an example collection as PNG class folders and CSV manifests (train, aux, test) to try --data on",
    )
    ex.add_argument("kind", choices=("fashion-mnist", "digits", "dicom"))
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
