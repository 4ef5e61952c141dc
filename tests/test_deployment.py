"""Deployment mode: every role its own process on 127.0.0.1, TLS and SuperNode authentication on.

One deployment (two owners) serves the tests of this module. Slow: run with ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deploy.cli import main
from deploy.local_deployment import LocalDeployment, free_port
from deploy.public_sets import PublicSets
from owner_node.ledger import Ledger
from shared.images.errors import DataNotFound
from shared.images.fashion_mnist import fashion_mnist_root
from shared.wire.protocol import decode

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(preset="quick", draws=20, iterations=60, eval_runs=1, eval_epochs=30, group_size=5.0)


def run_config(out: Path, **kw) -> dict:
    settings = {**SMALL, **kw}
    rc = {
        "out": str(out),
        "preset": settings["preset"],
        "owners": 2,
        "draws": settings["draws"],
        "iterations": settings["iterations"],
        "eval-runs": settings["eval_runs"],
        "eval-epochs": settings["eval_epochs"],
        "group-size": settings["group_size"],
        "draws-per-request": settings.get("draws_per_request", 10),
        "aux-per-class": 20,
    }
    return rc


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    try:
        fashion_mnist_root()
    except DataNotFound as exc:
        pytest.skip(str(exc))
    d = LocalDeployment(
        tmp_path_factory.mktemp("deployment"),
        num_owners=2,
        epsilon=10.0,
        public=PublicSets(aux_per_class=20),
        private_subset=4000,
        max_draws_per_request=50,
    )
    d.start()
    yield d
    d.stop()


def _ledger_rows(d: LocalDeployment, i: int):
    ledger = Ledger(d.owner_configs[i].parent / "ledger.sqlite")
    try:
        return ledger.rows(), {r.request_id: ledger.reply(r.request_id) for r in ledger.rows()}
    finally:
        ledger.close()


def test_full_distillation_over_tls_ends_with_the_in_process_artefacts(deployment, tmp_path: Path) -> None:
    out = tmp_path / "flower"
    run_id = deployment.submit(run_config(out))
    assert deployment.wait(run_id)["status"] == "finished:completed"
    log = (deployment.logs / "superlink.log").read_text()
    assert "Uvicorn running on https://" in log  # TLS between SuperNodes and SuperLink

    # The same small run in-process (one owner per share, same seeds) writes the same artefacts.
    local = tmp_path / "local"
    args = ["simulate", "--out", str(local), "--owners", "2", "--private-subset", "4000", "--aux-per-class", "20"]
    args += ["--preset", "quick", "--draws", "20", "--iterations", "60", "--eval-runs", "1", "--eval-epochs", "30"]
    assert main([*args, "--group-size", "5", "--draws-per-request", "10", "--no-progress"]) == 0

    flower, inproc = (json.loads((p / "distiller" / "results.json").read_text()) for p in (out, local))
    assert flower["artefacts"] == inproc["artefacts"]
    for name in [*flower["artefacts"].values(), "results.json", "privacy_report.txt"]:
        assert (out / "distiller" / name).exists(), name
    blob = torch.load(out / "distiller" / "synthetic.pt", weights_only=True)
    assert blob["images"].shape == (100, 1, 28, 28)
    assert flower["test_accuracy"]["mean"] > 0.3  # chance is 0.1
    report = json.loads((out / "distiller" / "privacy_report.json").read_text())
    assert sorted(o["owner_id"] for o in report["owners"]) == ["owner-1", "owner-2"]
    assert all(o["releases"] >= 20 for o in report["owners"])


def test_an_unregistered_supernode_is_refused(deployment, tmp_path: Path) -> None:
    from deploy.certs import make_certs

    make_certs(tmp_path / "stranger", ["127.0.0.1"], ["x"])
    log = tmp_path / "stranger.log"
    cmd = ["flower-supernode", "--root-certificates", str(deployment.certs / "ca.pem")]
    cmd += ["--superlink", f"127.0.0.1:{deployment.layout.superlink_port}", "--port", str(free_port())]
    cmd += ["--auth-supernode-private-key", str(tmp_path / "stranger" / "supernode-x.key")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "FLWR_HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    text = log.read_text(errors="replace")
    assert "SuperNode ID" not in text, text[-2000:]  # never admitted, whether it gave up or keeps trying


def test_killed_supernode_and_owner_service_mid_sampling(deployment, tmp_path: Path) -> None:
    out = tmp_path / "faults"
    run_id = deployment.submit(run_config(out, draws=60, iterations=5, eval_epochs=2))
    signals = out / "distiller" / "signals"
    deadline = time.time() + 600
    while not list(signals.glob("o*/batch_*.msg")) and time.time() < deadline:
        time.sleep(1)
    assert list(signals.glob("o*/batch_*.msg")), "sampling never started"
    deployment.kill("supernode-1")  # SIGKILL, with its ClientApp processes
    deployment.kill("owner-2")
    time.sleep(5)
    deployment.start_owner(1)
    deployment.start_supernode(0)  # the role script waits until the SuperLink accepts the node again
    assert deployment.wait(run_id)["status"] == "finished:completed"

    plan = json.loads((out / "distiller" / "plan.json").read_text())
    for o in range(2):
        rows, replies = _ledger_rows(deployment, o)
        mine = [r for r in rows if r.request_id.startswith(plan["run_id"])]
        assert len(mine) == 6 and all(r.state == "released" for r in mine)
        assert sum(r.event.count for r in mine) == 60  # nothing counted twice
        # Every reply the distiller holds is the one the owner recorded before sending it.
        for path in sorted((signals / f"o{o}").glob("batch_*.msg")):
            reply = decode(path.read_bytes())
            assert replies[reply.request_id] == path.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the owners' files to another uid")
def test_a_clientapp_cannot_read_the_data_but_can_ask_the_service(deployment, tmp_path: Path) -> None:
    owner_dir = deployment.owner_configs[0].parent
    paths = ":".join(str(owner_dir / name) for name in ("private.npz", "ledger.sqlite", "owner.toml"))
    out = tmp_path / "probe.json"
    run_id = deployment.submit({"out": str(out), "paths": paths}, app_dir=ROOT / "tests" / "hostile_app")
    assert deployment.wait(run_id)["status"] == "finished:completed"
    found = json.loads(out.read_text())
    assert len(found) == 2
    for node in found:
        for key in ("read0", "read1", "read2"):
            assert node[key].startswith("PermissionError"), node
        assert node["service"].startswith("answered"), node
