"""The distiller as a Flower ServerApp: the same pipeline as the in-process run, owners reached via relays.

Run config keys are those in deploy/flower_app/pyproject.toml; the public sets are the cloud's own
(``aux`` and ``test``: paths on the machine that runs the ServerApp; empty: Fashion-MNIST's split,
see ``deploy.public_sets``). The run's own settings are ``deploy.run_settings.RunSettings``, the
same table the command line fills: numbers left at 0 take the preset's value, except
``subspace-dim``, where 0 asks for no projection (as on the command line) and -1 takes the preset's.
``out`` should be an absolute path on the machine that runs the ServerApp (a relative one is taken
from that process's working directory). Re-running with the same ``out`` resumes the run.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from deploy.presets import PRESETS
from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings
from distiller_node.client import OwnerClient
from distiller_node.flower_transport import GridRouter
from distiller_node.pipeline import run_distillation

app = ServerApp()


def run_settings(rc: dict) -> tuple[Path, int, PublicSets, RunSettings]:
    """(out, owners, the distiller's public sets, the run's settings) of a run config."""
    settings = RunSettings.from_run_config(rc)
    return (
        Path(str(rc.get("out", "runs/flower"))).resolve(),
        int(rc.get("owners", 1)),
        PublicSets.from_run_config(rc, PRESETS[settings.preset]["aux_per_class"]),
        settings,
    )


def distill_over_flower(grid: Grid, run_config: dict, run_id: int | str = "") -> dict:
    """The distiller's whole run with owners reached through ``grid`` (deployment or simulation)."""
    out, num_owners, public, settings = run_settings(run_config)
    cfg = settings.distiller_config()
    print(f"[distiller] run {run_id}: writing to {out}; waiting for {num_owners} owner(s)", flush=True)
    router = GridRouter(grid)
    owners = router.discover(num_owners)
    if len(owners) != num_owners:
        raise ValueError(f"the run expects {num_owners} owner(s) but {len(owners)} are connected: {owners}")
    print(f"[distiller] owners: {owners} via nodes {router.node_of}", flush=True)
    clients = [OwnerClient(router.transport(o), o) for o in owners]
    aux, held_out = public.load(show_progress=False)
    device = settings.device
    results = run_distillation(clients, cfg, out / "distiller", aux, held_out, show_progress=False, device=device)
    print(f"[distiller] done: artefacts in {out / 'distiller'}", flush=True)
    return results


@app.main()
def main(grid: Grid, context: Context) -> None:
    distill_over_flower(grid, dict(context.run_config), context.run_id)
