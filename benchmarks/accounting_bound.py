"""Benchmark: the owner's accountant work for the worst plans within its default limits (JSON).

Each case runs the owner's own budget rule (``owner_node.budget.Budget.check``, what a PlanRequest
costs the owner before it is accepted or refused) in a fresh process, and records the decision, the
wall time and the memory the check added beyond the imports (peak RSS minus RSS before it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from shared.measurement import cpu_model

# (name, budget epsilon, [(sigma, q, count), ...]); sigma 0.3 and q 0.05 are the default floors/caps,
# 10,000 the default max_releases_per_plan.
CASES = [
    ("hostile plan at the floors, budget 1", 1.0, [(0.3, 0.05, 10_000)]),
    ("hostile plan at the floors, budget 10", 10.0, [(0.3, 0.05, 10_000)]),
    ("hostile plan at the floors, budget 1000 (the largest allowed)", 1000.0, [(0.3, 0.05, 10_000)]),
    ("a default run (1,000 draws at sigma 1.26, q 50/6000), budget 1", 1.0, [(1.26, 50 / 6000, 1000)]),
    ("10,000 draws at sigma 3.23, q 50/6000, budget 1", 1.0, [(3.23, 50 / 6000, 10_000)]),
    (
        "a ledger of 200 distinct noise levels, budget 10",
        10.0,
        [(1.25 * (1 + i / 1000), 50 / 6000, 5) for i in range(200)],
    ),
]


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(budget: float, events: list[tuple[float, float, int]]) -> dict:
    """One case in this process (the child's side)."""
    from owner_node.budget import AccountingRefused, Budget, BudgetExceeded
    from owner_node.config import OwnerConfig
    from shared.accounting import epsilon
    from shared.wire.privacy_event import SampledGaussianEvent

    epsilon([SampledGaussianEvent(1.0, 0.01, 1)], 1e-5, "prv")  # imports and first-call set-up, not measured
    config = OwnerConfig(
        owner_id="bench",
        data_source="npz",
        data_path=Path("x.npz"),
        aux_path=Path("aux.npz"),
        ledger_path=Path("ledger.sqlite"),
        epsilon=budget,
        delta=1e-5,
    )
    rule = Budget(config)
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    try:
        value = rule.check([SampledGaussianEvent(s, q, n) for s, q, n in events])
        decision = f"accepted (epsilon {value:.4f})"
    except BudgetExceeded as exc:
        decision = f"refused: budget_exceeded ({exc})"
    except AccountingRefused as exc:
        decision = f"refused: {exc.code} ({exc})"
    seconds = time.perf_counter() - start
    return {"decision": decision, "seconds": seconds, "added_peak_mb": _rss_mb("VmHWM") - before}


def accounting_bounds() -> dict:
    results = []
    for name, budget, events in CASES:
        code = (
            "import json, sys; from benchmarks.accounting_bound import run_case; "
            f"print(json.dumps(run_case({budget!r}, {events!r})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        row = {"case": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(f"{name}: {row['decision'][:90]}; {row['seconds']:.2f} s, +{row['added_peak_mb']:.0f} MB", flush=True)
        results.append(row)
    return {"cpu_model": cpu_model(), "cases": results}
