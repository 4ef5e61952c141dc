"""The README's main job at its default settings (11 minutes alone on a 2-core CPU with BF16, more beside
others or in float32): run by CI after the default suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_run_reaches_the_reference_accuracy(tmp_path: Path) -> None:
    # Its own process, as the README runs it: peak RSS is then the job's, not the test session's.
    cmd = [sys.executable, "-m", "deploy.cli", "simulate", "--out", str(tmp_path), "--no-progress"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
    results = json.loads((tmp_path / "distiller" / "results.json").read_text())
    # Measured 82.22% with PEA at 1,000 iterations (bf16 by auto on a Zen 5, 11 minutes alone; README), 80.86%
    # before PEA; the owner's fresh noise moves a run by about half a point, a float32 CPU by as much.
    assert results["test_accuracy"]["mean"] >= 0.79, results["test_accuracy"]
    assert results["epsilon_prv"] <= 1.0
    assert results["peak_rss_mb"] < 1500
