"""The main job end to end on real Fashion-MNIST (small settings), and crash-resume of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deploy.cli import main
from distiller_node.pipeline import config_differences
from owner_node.ledger import Ledger
from shared.images.errors import DataNotFound
from shared.images.fashion_mnist import fashion_mnist_root
from shared.wire.protocol import decode
from tests.second_accountant import check_reported

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_SMALL_FLOOR = 0.45  # measured 0.61 (2 trainings)
SMALL = [
    "--preset",
    "quick",
    "--private-subset",
    "2000",
    "--group-size",
    "8",
    "--draws",
    "20",
    "--draws-per-request",
    "5",
    "--iterations",
    "200",
    "--eval-runs",
    "3",
    "--eval-epochs",
    "60",
    "--no-progress",
]


@pytest.fixture(scope="module", autouse=True)
def fashion_mnist() -> None:
    try:
        fashion_mnist_root()
    except DataNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST must be installed for CI: {exc}")
        pytest.skip(str(exc))


def test_small_run_learns_far_above_chance_and_writes_every_artefact(tmp_path: Path) -> None:
    bench_json = tmp_path / "bench.json"
    run = ["simulate", "--out", str(tmp_path), *SMALL, "--aux-prior", "1", "--benchmark-json", str(bench_json)]
    assert main(run) == 0
    out = tmp_path / "distiller"
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"]["mean"] > 0.45, results["test_accuracy"]  # chance is 0.10
    # The auxiliary prior: named in the results and the privacy report as public data the set was fitted to.
    assert "weight 1)" in results["statistic"]["public_fit"] and results["config"]["optimisation"]["aux_prior"] == 1
    assert "also fitted to public data: " in (out / "privacy_report.txt").read_text()
    # The precision "auto" resolved to on this machine, with its reason, in results.json and the benchmark JSON.
    bench = json.loads(bench_json.read_text())
    assert bench["compute"] == results["compute"] and results["compute"]["precision"] in ("float32", "bf16")
    assert results["compute"]["precision_because"].startswith("auto: ")
    assert len(results["test_accuracy"]["runs"]) == 3
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["epsilon_prv"] <= 1.0 and report["releases"] == 20 and report["clip_norm"] == 1.0
    assert report["epsilon_rdp"] >= report["epsilon_prv"] * 0.9
    # The reported figures, recomputed by dp-accounting over the owner's ledger.
    ledger = Ledger(tmp_path / "owner" / "ledger.sqlite")
    try:
        events = ledger.events()
    finally:
        ledger.close()
    check_reported(events, report["delta"], report["epsilon_prv"], report["epsilon_rdp"])
    assert results["epsilon_prv"] == report["epsilon_prv"]
    assert "class names" in report["treated_as_public"]
    blob = torch.load(out / "synthetic.pt", weights_only=True)
    assert blob["images"].shape == (100, 1, 28, 28) and blob["labels"].bincount().tolist() == [10] * 10
    assert len(list((out / "synthetic_png").glob("*/*.png"))) == 100
    for name in ("synthetic_grid.png", "loss_curve.png", "privacy_report.txt"):
        assert (out / name).stat().st_size > 0
    # Test images used for the public subspace are excluded from evaluation.
    assert results["test_images"] == 10000 - 200


GRADIENTS_SMALL = [
    "--preset",
    "gradients",
    "--private-subset",
    "6000",
    "--group-size",
    "25",
    "--draws",
    "20",
    "--draws-per-request",
    "5",
    "--subspace-dim",
    "32",
    "--aux-per-class",
    "20",
    "--iterations",
    "200",
    "--eval-runs",
    "2",
    "--eval-epochs",
    "60",
    "--no-progress",
]


def test_small_gradient_signal_run_learns_far_above_chance(tmp_path: Path) -> None:
    assert main(["simulate", "--out", str(tmp_path), *GRADIENTS_SMALL]) == 0
    out = tmp_path / "distiller"
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"]["mean"] > GRADIENT_SMALL_FLOOR, results["test_accuracy"]  # chance is 0.10
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["signal"] == "gradients" and report["plan"]["subspace_dim"] == 32
    statistic = results["statistic"]  # the results name what was matched, as the privacy report does
    assert statistic["signal"] == "gradients" and statistic["sensitivity"] == report["sensitivity"]
    assert statistic["releases"] == 20 and statistic["released_dim"] == 32
    assert statistic["public_fit"] is None and report["public_fit"] is None  # the gradients preset has no prior
    assert report["epsilon_prv"] <= 1.0 and report["releases"] == 20
    ledger = Ledger(tmp_path / "owner" / "ledger.sqlite")
    try:
        check_reported(ledger.events(), report["delta"], report["epsilon_prv"], report["epsilon_rdp"])
    finally:
        ledger.close()
    reply = decode((out / "signals" / "o0" / "batch_00000.msg").read_bytes())
    assert reply.noisy_sums.shape == (5, 10, 32)


def test_killed_run_resumes_without_spending_twice(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "deploy.cli", "simulate", "--out", str(tmp_path), *SMALL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "distiller" / "signals" / "o0" / "batch_00000.msg"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run never stored its first reply"
    stored_before = len(list(first.parent.glob("batch_*.msg")))
    assert stored_before < 4, "the run finished sampling before it could be killed"

    assert main(["simulate", "--out", str(tmp_path), *SMALL]) == 0
    ledger = Ledger(tmp_path / "owner" / "ledger.sqlite")
    rows = ledger.rows()
    ledger.close()
    assert len(rows) == 4 and all(r.state == "released" for r in rows)
    assert sum(r.event.count for r in rows) == 20  # no draw asked for or counted twice
    report = json.loads((tmp_path / "distiller" / "privacy_report.json").read_text())
    assert report["epsilon_prv"] <= 1.0


# Sampling only matters here: later arguments override SMALL's.
TINY = [*SMALL, "--iterations", "5", "--eval-runs", "1", "--eval-epochs", "2"]


def test_budget_command_prints_the_ledger(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --out, as in the README
    assert main(["simulate", "--out", "run", *TINY]) == 0
    capsys.readouterr()
    assert main(["budget", "--config", "run/owner/owner.toml"]) == 0
    text = capsys.readouterr().out
    assert "remaining" in text and "released" in text and text.count("-b0000") == 4


def test_resume_with_different_settings_is_refused(tmp_path: Path, capsys) -> None:
    args = ["simulate", "--out", str(tmp_path), *TINY]
    assert main(args) == 0
    assert main([*args, "--ipc", "5"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "optimisation.ipc: 10 -> 5" in err


@pytest.mark.parametrize("signal, dim", [("features", 288), ("gradients", 21_898)])
def test_run_without_projection_releases_the_whole_signal(tmp_path: Path, signal: str, dim: int) -> None:
    """--subspace-dim 0: the owner releases unprojected (still clipped) vectors and the distiller uses them."""
    assert main(["simulate", "--out", str(tmp_path), *TINY, "--subspace-dim", "0", "--signal", signal]) == 0
    out = tmp_path / "distiller"
    reply = decode((out / "signals" / "o0" / "batch_00000.msg").read_bytes())
    assert reply.noisy_sums.shape == (5, 10, dim)  # quick preset: width 32, depth 3
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["plan"]["subspace_dim"] == 0 and report["signal"] == signal and report["epsilon_prv"] <= 1.0
    assert (out / "synthetic.pt").exists()


def test_config_differences_name_every_changed_and_missing_setting() -> None:
    saved = {"epsilon": 1.0, "optimisation": {"ipc": 10, "lr": 0.3}}
    now = {"epsilon": 1.0, "optimisation": {"ipc": 10, "lr": 0.1, "init": "noise"}}
    assert config_differences(saved, now) == ["optimisation.init: (absent) -> noise", "optimisation.lr: 0.3 -> 0.1"]
    assert config_differences(now, now) == []
