"""Flower's simulation engine as the transport: owner services on loopback, relays in Ray workers.

The owners are the real gRPC services (in this process) and the distiller is the same function
the deployed ServerApp runs, so only the transport differs from a deployment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import ray
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from ray._common.utils import get_default_ray_temp_dir

from deploy.flower_app.dpdistill_flower.client_app import SIMULATED_OWNERS_ENV
from deploy.flower_app.dpdistill_flower.client_app import app as relay_app
from deploy.flower_app.dpdistill_flower.server_app import distill_over_flower, run_settings
from deploy.simulation import check_subspace_fits, prepare_owners
from owner_node.config import OwnerConfig, ServiceConfig
from owner_node.grpc_server import start_server
from owner_node.service import OwnerService
from shared.images.source import ImageSource


def simulate_flower(
    out: Path,
    run_config: dict,
    private_subset: int | None = None,
    private: ImageSource | None = None,
    owner_settings: dict | None = None,
) -> dict:
    """``run_config`` has the keys of deploy/flower_app/pyproject.toml; ``out`` overrides its ``out``.

    ``private``: the simulated owner's own images (one owner); the public sets are the run config's.
    """
    out = Path(out).resolve()
    run_config = {**run_config, "out": str(out)}
    _, num_owners, public, settings = run_settings(run_config)
    aux, _ = public.load(show_progress=False)
    check_subspace_fits(settings.distiller_config(), aux)
    paths = prepare_owners(
        out,
        aux,
        settings.epsilon,
        settings.delta,
        public.data_root,
        private_subset,
        num_owners,
        settings.seed,
        private=private,
        owner_settings=owner_settings,
    )
    services, servers, addresses = [], [], []
    for path in paths:
        config = OwnerConfig.load(path)
        config = replace(config, service=ServiceConfig(listen="127.0.0.1:0"))
        service = OwnerService(config)
        server, port = start_server(service)
        services.append(service)
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    results: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        results.update(distill_over_flower(grid, run_config))

    os.environ[SIMULATED_OWNERS_ENV] = json.dumps(addresses)
    init_args = {"num_cpus": 2, "include_dashboard": False}
    try:
        start_ray(init_args)
        run_simulation(
            server_app=server_app,
            client_app=relay_app,
            num_supernodes=num_owners,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
        )
    finally:
        os.environ.pop(SIMULATED_OWNERS_ENV, None)
        if ray.is_initialized():
            ray.shutdown()
        for server in servers:
            server.stop(grace=5).wait()
        for service in services:
            service.close()
    if not results:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return results


RAY_START_ATTEMPTS = 3


def start_ray(init_args: dict, attempts: int = RAY_START_ATTEMPTS) -> None:
    """Start Ray before Flower would, retrying a failed start.

    Ray gives a new raylet a fixed 30 s to register with its GCS; a loaded machine can miss that,
    and Flower would then end the whole simulation. Flower uses a Ray that is already running (and
    shuts it down at the end), so starting it here changes nothing else. As Flower does, the
    workers get this process's import path.
    """
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception as error:  # Ray raises a bare Exception when its node does not start
            ray.shutdown()
            stopped = stop_ray_children()
            if attempt == attempts:
                raise RuntimeError(f"Ray did not start after {attempts} attempts: {error}\n{ray_log_tail()}") from error
            print(
                f"[simulate] Ray did not start (attempt {attempt} of {attempts}: {error}); "
                f"stopped {stopped} leftover Ray process(es), retrying. Ray's logs:\n{ray_log_tail()}",
                file=sys.stderr,
            )


def stop_ray_children() -> int:
    """Kill the Ray processes a failed start left behind: they are this process's children, and
    ``ray.shutdown()`` cannot reach them because the node object that owns them was never made."""
    stopped = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and "/ray/" in cmdline:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
                stopped += 1
            except ProcessLookupError:
                pass
    return stopped


def ray_log_tail(lines: int = 20) -> str:
    """The end of the last Ray session's raylet and GCS logs, for the error message."""
    logs = Path(get_default_ray_temp_dir()) / "session_latest" / "logs"
    parts = []
    for name in ("raylet.err", "raylet.out", "gcs_server.err", "gcs_server.out"):
        path = logs / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no Ray logs under {logs})"
