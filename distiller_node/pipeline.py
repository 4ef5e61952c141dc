"""A whole distiller run against one owner: plan, sample, optimise, evaluate, export.

Every stage leaves its state in the run folder (plan, stored replies, checkpoints), so running the
same command again resumes where a crash stopped it.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distiller_node.client import OwnerClient
from distiller_node.evaluation import EvaluationConfig, evaluate
from distiller_node.export import export_synthetic, plot_loss
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, OptimisationConfig, initial_state, training_images
from distiller_node.report import format_report, privacy_report, write_report
from distiller_node.sampling import SamplingConfig, SamplingPlan, make_plan, run_sampling
from distiller_node.signal_store import SignalStore, atomic_write
from shared.datasets import ImageSet, to_float
from shared.subspace import content_hash


@dataclass(frozen=True)
class DistillerConfig:
    epsilon: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optimisation: OptimisationConfig = field(default_factory=OptimisationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_resume(out: Path, cfg: DistillerConfig) -> None:
    path = out / "config.json"
    current = json.dumps(cfg.to_dict(), sort_keys=True)
    if path.exists():
        saved = json.dumps(json.loads(path.read_text()), sort_keys=True)
        if saved != current:
            raise ValueError(
                f"{out} holds a run with a different configuration; "
                "resume it with the same options or choose a new --out"
            )
    else:
        atomic_write(path, json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())


def run_distillation(
    client: OwnerClient, cfg: DistillerConfig, out: Path, aux: ImageSet, test: ImageSet, show_progress: bool = True
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    timings: dict[str, float] = {}
    rss = {"at_start": peak_rss_mb()}
    info = client.describe()
    if content_hash(aux.images) != info.aux_hash:
        raise ValueError("the distiller's auxiliary set differs from the owner's (content hashes disagree)")

    plan_path = out / "plan.json"
    if plan_path.exists():
        plan = SamplingPlan.load(plan_path)
        print(f"resuming run {plan.run_id} in {out}")
    else:
        remaining = client.budget().epsilon_remaining
        target = min(cfg.epsilon, remaining)
        if target <= 0:
            raise ValueError(f"the owner has no privacy budget left (remaining epsilon {remaining:.4f})")
        plan = make_plan(cfg.sampling, info, target, cfg.delta, cfg.accountant)
        plan.save(plan_path)
    print(
        f"plan: {len(plan.network_seeds)} draws, sigma={plan.noise_multiplier:.4f}, q={plan.sample_rate:.5f}, "
        f"planned epsilon={plan.planned_epsilon('prv'):.4f} (PRV) at delta={plan.delta:g}"
    )

    t0 = time.perf_counter()
    signals = run_sampling(client, plan, SignalStore(out / "signals"), show_progress)
    timings["sampling_s"] = time.perf_counter() - t0
    rss["after_sampling"] = peak_rss_mb()

    t0 = time.perf_counter()
    aux_float = to_float(aux.images, info.normalization)
    cache = NetworkCache(plan.network, aux_float, plan.subspace_dim, cfg.optimisation.cache_mb * 2**20)
    distiller = Distiller(signals, cache, plan.augmentation, info.clip_norm, cfg.optimisation)
    state = initial_state(len(info.class_names), cfg.optimisation.ipc, info.image_shape, cfg.optimisation.seed)
    state = distiller.run(state, checkpoint=out / "checkpoint.pt", show_progress=show_progress)
    timings["optimisation_s"] = time.perf_counter() - t0
    rss["after_optimisation"] = peak_rss_mb()

    t0 = time.perf_counter()
    train_x, train_y = training_images(state.ema, state.labels, cfg.optimisation.pea)
    result = evaluate(
        train_x,
        train_y,
        to_float(test.images, info.normalization),
        test.labels,
        len(info.class_names),
        cfg.evaluation,
        show_progress,
    )
    timings["evaluation_s"] = time.perf_counter() - t0
    rss["after_evaluation"] = peak_rss_mb()

    budget = client.budget()
    report = privacy_report(plan, budget, info)
    write_report(out, report)
    artefacts = export_synthetic(
        out,
        state.ema,
        train_x,
        train_y,
        info.class_names,
        info.normalization,
        {
            "epsilon_prv": budget.epsilon_prv,
            "delta": budget.delta,
            "ipc": cfg.optimisation.ipc,
            "pea": cfg.optimisation.pea,
        },
    )
    plot_loss(out / "loss_curve.png", state.losses)
    artefacts |= {"loss_curve": "loss_curve.png", "privacy_report": "privacy_report.json"}
    results = {
        "test_accuracy": result.to_dict(),
        "epsilon_prv": budget.epsilon_prv,
        "epsilon_rdp": budget.epsilon_rdp,
        "delta": budget.delta,
        "timings_s": timings,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_by_stage": rss,
        "cache": {"hits": cache.hits, "misses": cache.misses, "bytes": cache.nbytes},
        "artefacts": artefacts,
        "test_images": len(test),
        "config": cfg.to_dict(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(format_report(report))
    print()
    print(
        f"test accuracy (ConvNet trained on the synthetic set, {len(result.accuracies)} runs, "
        f"{len(test)} test images): "
        f"{100 * result.mean:.2f}% +- {100 * result.std:.2f}"
    )
    return results
