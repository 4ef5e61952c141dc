"""Benchmark (issue 5): gradient signals against feature signals, each with and without the subspace.

Every configuration is a whole ``dpdistill simulate`` run in its own process, at the same budget
(epsilon, delta, group size), so accuracy, wall time and peak RSS are measured alike. In these
in-process runs the owner computes inside the same process, so the peak RSS at the end of the
sampling stage is an upper bound on the owner's own peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from shared.measurement import run_log
from shared.progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]

# name: (preset, extra simulate options)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "features + subspace": ("default", []),
    "features, no subspace": ("default", ["--subspace-dim", "0"]),
    "gradients + subspace": ("gradients", []),
    "gradients, no subspace": ("gradients", ["--subspace-dim", "0"]),
    "gradients + subspace k=256": ("gradients", ["--subspace-dim", "256"]),
}


def run_one(out: Path, preset: str, extra: list[str], common: list[str]) -> dict:
    bench = out / "run.json"
    if not bench.exists():  # finished configurations are kept, so the benchmark resumes
        cmd = [sys.executable, "-m", "deploy.cli", "simulate", "--out", str(out), "--preset", preset]
        cmd += [*extra, *common, "--no-progress", "--benchmark-json", str(bench)]
        with open(run_log(out), "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(bench.read_text())


def previous_runs(path: Path, epsilon: float, ipc: int, eval_runs: int) -> dict:
    """Results of an earlier benchmark in the same folder at the same settings (else none)."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    same = (earlier.get("epsilon"), earlier.get("ipc"), earlier.get("eval_runs")) == (epsilon, ipc, eval_runs)
    return dict(earlier.get("runs", {})) if same else {}


def compare_signals(out: Path, epsilon: float, ipc: int, eval_runs: int, only: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = ["--epsilon", str(epsilon), "--ipc", str(ipc), "--eval-runs", str(eval_runs)]
    names = only or list(CONFIGS)
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown configurations {sorted(unknown)}; known: {list(CONFIGS)}")
    runs = previous_runs(out / "signals.json", epsilon, ipc, eval_runs)  # a partial rerun keeps the others
    for name in progress_bar(names, desc="signal benchmark", unit="run"):
        preset, extra = CONFIGS[name]
        t0 = time.perf_counter()
        r = run_one(out / name.replace(" ", "_").replace(",", "").replace("+", "with"), preset, extra, common)
        runs[name] = {
            "accuracy_mean": r["test_accuracy_mean"],
            "accuracy_std": r["test_accuracy_std"],
            "epsilon_prv": r["epsilon_prv"],
            "delta": r["delta"],
            "wall_s": r["wall_s"],
            "stage_s": r["stage_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "peak_rss_mb_during_sampling": r.get("peak_rss_mb_by_stage", {}).get("after_sampling"),
            "signal": r["config"]["sampling"]["signal"],
            "subspace_dim": r["config"]["sampling"]["subspace_dim"],
            "width": r["config"]["sampling"]["width"],
            "draws": r["config"]["sampling"]["draws"],
            "iterations": r["config"]["optimisation"]["iterations"],
            "steps_per_draw": r["config"]["optimisation"]["steps_per_draw"],
            "measured_now_s": time.perf_counter() - t0,
        }
    result = {"benchmark": "signals", "epsilon": epsilon, "ipc": ipc, "eval_runs": eval_runs, "runs": runs}
    (out / "signals.json").write_text(json.dumps(result, indent=2))
    plot(out / "signals.png", result)
    return result


# (width, k, draws): the gradients preset's request, then wide networks near the default max_basis_mb.
MEMORY_PROBES = ((32, 64, 5), (128, 64, 2), (128, 200, 1))


def owner_memory(config_path: Path, probes: tuple[tuple[int, int, int], ...] = MEMORY_PROBES) -> dict:
    """Peak RSS of an owner service (this process) answering gradient requests of growing size.

    Run it in a fresh process: the peak is the process's high-water mark. Each probe spends budget
    from the owner's ledger like any request, so point it at a scratch owner config.
    """
    from distiller_node.pipeline import peak_rss_mb
    from owner_node.config import OwnerConfig
    from owner_node.service import OwnerService
    from shared.compute.augmentation import DEFAULT_STRATEGY
    from shared.compute.networks import NetworkSpec
    from shared.compute.signals import get_signal_kind
    from shared.wire.messages import FeatureRequest
    from shared.wire.protocol import decode, encode

    service = OwnerService(OwnerConfig.load(config_path))
    result = {"benchmark": "owner_memory", "after_load_mb": peak_rss_mb(), "num_aux": service.num_aux, "probes": []}
    try:
        for width, k, draws in probes:
            spec = NetworkSpec.for_images(width, tuple(service.data.image_shape), len(service.data.class_names))
            request = FeatureRequest(
                f"memory-probe-{time.time_ns()}",
                spec,
                tuple(range(draws)),
                tuple(range(draws)),
                DEFAULT_STRATEGY,
                k,
                service.aux_hash,
                50.0,
                1.0,
                "gradients",
            )
            t0 = time.perf_counter()
            reply = decode(service.handle(encode(request)))
            params = get_signal_kind("gradients").signal_dim(spec)
            result["probes"].append(
                {
                    "width": width,
                    "parameters": params,
                    "subspace_dim": k,
                    "estimate_mb": (service.num_aux * params * 4 + params * k * 12) / 2**20,
                    "reply": reply.kind,
                    "refusal": getattr(reply, "message", None),
                    "s_per_draw": (time.perf_counter() - t0) / draws,
                    "peak_rss_mb_so_far": peak_rss_mb(),
                }
            )
    finally:
        service.close()
    return result


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["runs"])
    acc = [100 * result["runs"][n]["accuracy_mean"] for n in names]
    err = [100 * result["runs"][n]["accuracy_std"] for n in names]
    wall = [result["runs"][n]["wall_s"] / 60 for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.barh(names, acc, xerr=err, color="tab:blue")
    a.axvline(10, color="grey", ls=":", label="chance")
    a.set_xlabel("test accuracy (%)")
    a.legend(loc="lower right")
    b.barh(names, wall, color="tab:orange")
    b.set_xlabel("wall time (min)")
    b.set_yticks([])
    fig.suptitle(f"Fashion-MNIST, epsilon {result['epsilon']}, IPC {result['ipc']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
