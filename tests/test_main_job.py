"""The README's main job at its default settings (about 12 minutes): run by CI after the default suite."""

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
    # Measured 80.92% with the auxiliary prior (auto, bf16 on a Zen 4); before it 79.85-80.13% (bf16) and
    # 79.15-80.44% (float32) (README); the owner's fresh noise moves a run by up to a point.
    assert results["test_accuracy"]["mean"] >= 0.77, results["test_accuracy"]
    assert results["epsilon_prv"] <= 1.0
    assert results["peak_rss_mb"] < 1500
