"""Benchmark: the sampling stage in deployment mode (Flower, TLS, separate processes) against
in-process, on the same configuration; with the peak RSS of every process of the deployment.

Both runs go through the same pipeline with optimisation and evaluation cut to a minimum; the
figure compared is the pipeline's own ``sampling_s``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from deploy.local_deployment import LocalDeployment, descendants
from deploy.presets import PRESETS
from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings
from deploy.simulation import simulate
from owner_node.config import Limits


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:4] if a]
    for w in words:
        if w.startswith(("flower-", "flwr-")) or w in ("cli", "deploy.cli"):
            return w
    return " ".join(words[:3])


class RssMonitor:
    """Polls /proc for every process of the deployment (each role and its descendants); keeps each one's peak."""

    def __init__(self, deployment: LocalDeployment, every_s: float = 1.0):
        self.d = deployment
        self.every_s = every_s
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for role, proc in list(self.d.procs.items()):
                for pid in [proc.pid, *descendants(proc.pid)]:
                    key = f"{role}: {_name(pid)}"
                    self.peaks[key] = max(self.peaks.get(key, 0.0), _vm_hwm_mb(pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def transport_overhead(
    out: Path, draws: int = 1000, draws_per_request: int = 250, preset: str = "default", data_root: str | None = None
) -> dict:
    out = Path(out).resolve()
    aux_per_class = PRESETS[preset]["aux_per_class"]
    settings = dict(draws=draws, iterations=1, eval_epochs=1, eval_runs=1, draws_per_request=draws_per_request)
    cfg = RunSettings(preset=preset, **settings).distiller_config()

    t0 = time.perf_counter()
    limits = Limits(max_draws_per_request=draws_per_request)
    public = PublicSets(aux_per_class=aux_per_class, data_root=data_root)
    local = simulate(out / "in-process", cfg, public, show_progress=False, limits=limits)
    local_wall = time.perf_counter() - t0

    d = LocalDeployment(out / "deployment", public=public, max_draws_per_request=draws_per_request)
    rc = {
        "out": str(d.root),
        "preset": preset,
        "draws": draws,
        "iterations": 1,
        "eval-epochs": 1,
        "eval-runs": 1,
        "draws-per-request": draws_per_request,
        **public.run_config(),
    }
    try:
        t0 = time.perf_counter()
        d.start()
        startup = time.perf_counter() - t0
        with RssMonitor(d) as monitor:
            t0 = time.perf_counter()
            run_id = d.submit(rc)
            d.wait(run_id)
            run_wall = time.perf_counter() - t0
    finally:
        d.stop()
    remote = json.loads((d.root / "distiller" / "results.json").read_text())
    s_local, s_remote = local["timings_s"]["sampling_s"], remote["timings_s"]["sampling_s"]
    return {
        "benchmark": "transport_overhead",
        "preset": preset,
        "draws": draws,
        "draws_per_request": draws_per_request,
        "in_flight_per_owner": cfg.sampling.in_flight,
        "in_process": {"sampling_s": s_local, "wall_s": local_wall, "peak_rss_mb": local["peak_rss_mb"]},
        "deployment": {
            "sampling_s": s_remote,
            "startup_s": startup,
            "run_wall_s": run_wall,
            "distiller_serverapp_peak_rss_mb": remote["peak_rss_mb"],
            "peak_rss_mb_by_process": dict(sorted(monitor.peaks.items())),
        },
        "overhead_fraction": s_remote / s_local - 1.0,
        "epsilon": {"in_process": local["epsilon_prv"], "deployment": remote["epsilon_prv"]},
    }
