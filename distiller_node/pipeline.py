"""A whole distiller run against one owner: plan, sample, optimise, evaluate, export.

Every stage leaves its state in the run folder (plan, stored replies, checkpoints), so running the
same command again resumes where a crash stopped it.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from distiller_node.aux_prior import prior_words
from distiller_node.client import OwnerClient
from distiller_node.config import DistillerConfig
from distiller_node.export import export_synthetic, plot_loss
from distiller_node.methods import Run, distillation_method
from distiller_node.optimisation import initial_state, training_images
from distiller_node.plan_summary import estimate_seconds, format_plan, plan_summary
from distiller_node.report import format_report, privacy_report, write_report
from distiller_node.sampling import SamplingPlan, make_plan
from distiller_node.signal_store import atomic_write
from shared.compute.device import use_device
from shared.compute.subspace import content_hash
from shared.datasets import to_float
from shared.evaluation import evaluate
from shared.images.image_set import ImageSet
from shared.metrics import format_metrics, plot_confusion


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, whereas ru_maxrss
    carries over the parent's peak into a child started by fork and exec (e.g. from a test runner)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Readable ``key: saved -> now`` lines for every setting that differs (nested keys dotted)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _check_resume(out: Path, cfg: DistillerConfig, write: bool = True) -> None:
    path = out / "config.json"
    current = json.loads(json.dumps(cfg.to_dict()))  # through JSON, as saved (tuples become lists)
    if path.exists():
        differences = config_differences(json.loads(path.read_text()), current)
        if differences:
            raise ValueError(
                f"{out} holds a run with a different configuration ({'; '.join(differences)}); "
                "resume it with the same options or choose a new --out"
            )
    elif write:
        atomic_write(path, json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())


def _ordered_by_plan(clients: list[OwnerClient], infos: list, plan: SamplingPlan) -> tuple[list, list]:
    """Match reconnected owners to the plan's order by owner id (transports may list them in any order)."""
    by_id = {info.owner_id: (c, info) for c, info in zip(clients, infos, strict=True)}
    wanted = [o.owner_id for o in plan.owners]
    if sorted(by_id) != sorted(wanted):
        raise ValueError(f"this run was planned with owners {wanted}, but the owners now are {sorted(by_id)}")
    pairs = [by_id[w] for w in wanted]
    return [c for c, _ in pairs], [i for _, i in pairs]


def run_distillation(
    clients: OwnerClient | list[OwnerClient],
    cfg: DistillerConfig,
    out: Path,
    aux: ImageSet,
    test: ImageSet | None,
    show_progress: bool = True,
    validation: ImageSet | None = None,
    device: str = "cpu",
    dry_run: bool = False,
) -> dict:
    """``cfg.epsilon`` is what each owner is asked to spend (at most its remaining budget); with no
    public ``test`` set the evaluation is skipped (the synthetic set is still written). A public
    ``validation`` set is scored by the same trainings (``validation_accuracy``), to choose settings by.
    ``device`` (auto, cpu, cuda[:N]) runs networks, bases, optimisation and evaluation there.

    The plan, each class's expected signal-to-noise (a warning when it is low) and a rough wall time
    are printed before any owner is asked to hold budget; ``dry_run`` stops there, having reserved,
    released and written nothing, and returns ``{"dry_run": True, "plan": ...}``."""
    torch_device, compute = use_device(device, cfg.optimisation.precision)
    clients = [clients] if isinstance(clients, OwnerClient) else list(clients)
    method = distillation_method(cfg.sampling.signal)
    method.check(cfg.sampling.augmentation, len(clients), cfg.optimisation.aux_prior)
    out = Path(out)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg, write=not dry_run)
    timings: dict[str, float] = {}
    rss = {"at_start": peak_rss_mb()}
    infos = [c.describe() for c in clients]
    for c, info in zip(clients, infos, strict=True):
        c.name = info.owner_id
        if content_hash(aux.images) != info.aux_hash:
            raise ValueError(
                f"the distiller's auxiliary set differs from owner '{info.owner_id}''s (content hashes disagree)"
            )

    plan_path = out / "plan.json"
    if plan_path.exists():
        plan = SamplingPlan.load(plan_path)
        clients, infos = _ordered_by_plan(clients, infos, plan)
        print(f"resuming run {plan.run_id} in {out}")
    else:
        targets = []
        for c, info in zip(clients, infos, strict=True):
            remaining = c.budget().epsilon_remaining
            if remaining <= 0:
                raise ValueError(
                    f"owner '{info.owner_id}' has no privacy budget left (remaining epsilon {remaining:.4f})"
                )
            targets.append(min(cfg.epsilon, remaining))
        plan = make_plan(cfg.sampling, infos, targets, cfg.delta, cfg.accountant)
        if not dry_run:
            plan.save(plan_path)
    info = infos[0]
    opt_cfg = cfg.optimisation
    synthetic = opt_cfg.ipc * len(info.class_names) * (4 if opt_cfg.pea else 1)
    depth_by_size = cfg.sampling.depth is None
    prior = method.uses_aux_prior(opt_cfg, plan)
    seconds = estimate_seconds(
        plan, infos, len(aux), synthetic, opt_cfg.iterations, cfg.evaluation, compute["precision"], prior
    )
    summary = plan_summary(plan, infos, depth_by_size, seconds)
    for line in format_plan(summary, cfg.delta):
        print(line)
    if prior:
        print(
            f"auxiliary prior (weight {opt_cfg.aux_prior:g}): the directions each projection leaves out are fitted "
            "to the public auxiliary set's class means"
        )
    if dry_run:
        print("dry run: no owner was asked to hold budget, nothing was released and nothing written")
        return {"dry_run": True, "plan": summary}

    aux_float = to_float(aux.images, info.normalization)
    state = initial_state(
        len(info.class_names),
        opt_cfg.ipc,
        info.image_shape,
        opt_cfg.seed,
        opt_cfg.init,
        (aux_float, aux.labels),
        opt_cfg.pea,
    )
    # Every owner accepts (and holds budget for) the whole run before its first release, so a run
    # never stops half-spent for a reason known at its start; a resumed run repeats this as a no-op.
    for o, client in enumerate(clients):
        accepted = client.reserve(plan.reservation(o, method.first_request(plan, state.images, opt_cfg.lr)))
        print(
            f"owner '{plan.owners[o].owner_id}' accepted the plan: {accepted.event.count} releases held; "
            f"committed epsilon {accepted.epsilon_committed:.4f} ({accepted.accountant.upper()}, "
            f"delta {accepted.delta:g})"
        )
    run = Run(
        clients, plan, out, (aux_float, aux.labels), opt_cfg, info.clip_norm, torch_device, show_progress,
        cfg.sampling.in_flight,
    )  # fmt: skip
    t0 = time.perf_counter()
    state = method.release(run, state)
    timings["sampling_s"] = time.perf_counter() - t0
    rss["after_sampling"] = peak_rss_mb()
    t0 = time.perf_counter()
    state = method.optimise(run, state)
    timings["optimisation_s"] = time.perf_counter() - t0
    rss["after_optimisation"] = peak_rss_mb()

    t0 = time.perf_counter()
    train_x, train_y = training_images(state.ema, state.labels, cfg.optimisation.pea)
    result = None
    if test is not None:
        result = evaluate(
            train_x,
            train_y,
            test.images,
            test.labels,
            len(info.class_names),
            cfg.evaluation,
            show_progress,
            info.normalization,
            info.class_names,
            {"validation": (validation.images, validation.labels)} if validation is not None else None,
            torch_device,
        )
    krr = None
    if test is not None:
        krr = method.own_scores(train_x, train_y, test, info.normalization, len(info.class_names))
    timings["evaluation_s"] = time.perf_counter() - t0
    rss["after_evaluation"] = peak_rss_mb()

    budgets = [c.budget() for c in clients]
    public_fit = prior_words(opt_cfg.aux_prior) if prior else None
    report = privacy_report(plan, budgets, infos, public_fit)
    write_report(out, report)
    artefacts = export_synthetic(
        out,
        state.ema,
        train_x,
        train_y,
        info.class_names,
        info.normalization,
        {
            "epsilon_prv": report["epsilon_prv"],
            "delta": report["delta"],
            "owners": [o["owner_id"] for o in report["owners"]],
            "ipc": cfg.optimisation.ipc,
            "pea": cfg.optimisation.pea,
        },
    )
    plot_loss(out / "loss_curve.png", state.losses, ylabel=method.loss_label)
    artefacts |= {"loss_curve": "loss_curve.png", "privacy_report": "privacy_report.json"}
    if result is not None and result.metrics is not None:
        title = f"public test set, {len(test)} images, {len(result.accuracies)} trainings"
        plot_confusion(out / "confusion_matrix.png", result.metrics, title)
        artefacts["confusion_matrix"] = "confusion_matrix.png"
    results = {
        "test_accuracy": result.to_dict() if result is not None else None,
        "test_metrics": result.metrics if result is not None else None,
        "validation_accuracy": result.other("validation") if result is not None and validation is not None else None,
        "krr_accuracy": krr,
        # What was matched: the per-example statistic each release summed, and the plan that released it.
        "statistic": {
            "signal": plan.signal,
            "sensitivity": report["sensitivity"],
            "released_dim": summary.get("released_dim"),
            "releases": len(plan.network_seeds),
            "expected_group_size": plan.group_size,
            "step_scale": plan.step_scale,
            "public_fit": public_fit,
        },
        "epsilon_prv": report["epsilon_prv"],
        "epsilon_rdp": report["epsilon_rdp"],
        "delta": report["delta"],
        "epsilon_by_owner": {o["owner_id"]: o["epsilon_prv"] for o in report["owners"]},
        "timings_s": timings,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_by_stage": rss,
        "cache": method.cache_stats,
        "artefacts": artefacts,
        "test_images": len(test) if test is not None else 0,
        "compute": compute,
        "config": cfg.to_dict(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(format_report(report))
    print()
    if result is None:
        print("no public test set was given: evaluation skipped (the synthetic set is in the run folder)")
    else:
        print(
            f"test accuracy (ConvNet trained on the synthetic set, {len(result.accuracies)} runs, "
            f"{len(test)} test images): "
            f"{100 * result.mean:.2f}% +- {100 * result.std:.2f}"
        )
        print(format_metrics(result.metrics))
    if krr is not None:
        print(method.format_scores(krr, plan.subspace_dim))
    return results
