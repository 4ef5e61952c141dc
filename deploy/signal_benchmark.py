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

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

# name: (preset, extra simulate options)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "features + subspace": ("default", []),
    "features, no subspace": ("default", ["--subspace-dim", "0"]),
    "gradients + subspace": ("gradients", []),
    "gradients, no subspace": ("gradients", ["--subspace-dim", "0"]),
}


def run_one(out: Path, preset: str, extra: list[str], common: list[str]) -> dict:
    bench = out / "run.json"
    if not bench.exists():  # finished configurations are kept, so the benchmark resumes
        cmd = [sys.executable, "-m", "deploy.cli", "simulate", "--out", str(out), "--preset", preset]
        cmd += [*extra, *common, "--no-progress", "--benchmark-json", str(bench)]
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(bench.read_text())


def compare_signals(out: Path, epsilon: float, ipc: int, eval_runs: int, only: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = ["--epsilon", str(epsilon), "--ipc", str(ipc), "--eval-runs", str(eval_runs)]
    names = only or list(CONFIGS)
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown configurations {sorted(unknown)}; known: {list(CONFIGS)}")
    runs = {}
    for name in tqdm(names, desc="signal benchmark", unit="run"):
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
