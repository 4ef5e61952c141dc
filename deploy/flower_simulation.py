"""Flower's simulation engine as the transport: owner services on loopback, relays in Ray workers.

The owners are the real gRPC services (in this process) and the distiller is the same function
the deployed ServerApp runs, so only the transport differs from a deployment.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from deploy.flower_app.dpdistill_flower.client_app import SIMULATED_OWNERS_ENV
from deploy.flower_app.dpdistill_flower.client_app import app as relay_app
from deploy.flower_app.dpdistill_flower.server_app import distill_over_flower
from deploy.presets import PRESETS
from deploy.simulation import prepare_owners
from owner_node.config import OwnerConfig, ServiceConfig
from owner_node.grpc_server import start_server
from owner_node.service import OwnerService
from shared.datasets import public_split


def simulate_flower(
    out: Path, run_config: dict, data_root: str | None = None, private_subset: int | None = None
) -> dict:
    """``run_config`` has the keys of deploy/flower_app/pyproject.toml; ``out`` overrides its ``out``."""
    out = Path(out).resolve()
    num_owners = int(run_config.get("owners", 1))
    preset = str(run_config.get("preset", "default"))
    aux_per_class = int(run_config.get("aux-per-class", 0)) or PRESETS[preset]["aux_per_class"]
    aux, _ = public_split(aux_per_class, data_root)
    paths = prepare_owners(
        out,
        aux,
        float(run_config.get("epsilon", 1.0)),
        float(run_config.get("delta", 1e-5)),
        data_root,
        private_subset,
        num_owners,
        int(run_config.get("seed", 0)),
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
        results.update(distill_over_flower(grid, {**run_config, "out": str(out), "data-root": data_root or ""}))

    os.environ[SIMULATED_OWNERS_ENV] = json.dumps(addresses)
    try:
        run_simulation(
            server_app=server_app,
            client_app=relay_app,
            num_supernodes=num_owners,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
    finally:
        os.environ.pop(SIMULATED_OWNERS_ENV, None)
        for server in servers:
            server.stop(grace=5).wait()
        for service in services:
            service.close()
    if not results:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return results
