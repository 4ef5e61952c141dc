"""Flower's simulation starts Ray through ``start_ray``: a raylet that misses Ray's fixed 30 s
registration window on a loaded machine must cost a retry, not the run (it once failed CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray

from deploy import flower_simulation
from deploy.flower_simulation import start_ray

STARTUP_TIMEOUT = "The current node timed out during startup."


def leftover_raylet(tmp_path: Path) -> subprocess.Popen:
    """A child process whose command line looks like one of Ray's, as a failed start leaves them."""
    fake = tmp_path / "ray" / "raylet"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("import time\ntime.sleep(120)\n")
    return subprocess.Popen([sys.executable, str(fake)])


def test_a_failed_start_is_cleaned_up_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    leftovers: list[subprocess.Popen] = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            leftovers.append(leftover_raylet(tmp_path))
            raise Exception(STARTUP_TIMEOUT)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    start_ray({"num_cpus": 2, "include_dashboard": False})
    assert len(calls) == 2
    assert leftovers[0].wait(timeout=10) == -9, "the process a failed start left behind was not stopped"
    assert calls[1]["address"] == "local" and calls[1]["num_cpus"] == 2
    pythonpath = calls[1]["runtime_env"]["env_vars"]["PYTHONPATH"]
    assert pythonpath.endswith("/elsewhere") and sys.path[0] in pythonpath.split(":")


def test_giving_up_says_why_with_rays_own_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tmp_path / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.err").write_text("raylet: could not bind the object manager port\n")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "")
    attempts: list[int] = []

    def init(**kwargs):
        attempts.append(1)
        raise Exception(STARTUP_TIMEOUT)

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeError) as caught:
        start_ray({"num_cpus": 2}, attempts=2)
    assert len(attempts) == 2
    message = str(caught.value)
    assert "did not start after 2 attempts" in message and STARTUP_TIMEOUT in message
    assert "could not bind the object manager port" in message


def test_only_rays_children_are_stopped(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        flower_simulation.stop_ray_children()
        assert other.poll() is None, "a child that is not Ray's was killed"
    finally:
        other.kill()
        other.wait()
