"""The distiller as a Flower ServerApp: the same pipeline as the in-process run, owners reached via relays.

Run config keys are those in deploy/flower_app/pyproject.toml; the public sets are the cloud's own
(``aux`` and ``test``: paths on the machine that runs the ServerApp; empty: Fashion-MNIST's split,
see ``deploy.public_sets``). Numbers left at 0 take the preset's
value, except ``subspace-dim``, where 0 asks for no projection (as on the command line) and -1 takes
the preset's. ``out`` should be an absolute path on the machine that runs the ServerApp (a relative one is
taken from that process's working directory). Re-running with the same ``out`` resumes the run.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from deploy.presets import PRESETS, distiller_config
from deploy.public_sets import PublicSets
from distiller_node.client import OwnerClient
from distiller_node.flower_transport import GridRouter
from distiller_node.pipeline import run_distillation

app = ServerApp()

PRESET_SUBSPACE = -1  # the run-config value of subspace-dim that takes the preset's (0 means no projection)

OVERRIDABLE = (
    "width",
    "draws",
    "iterations",
    "lr",
    "eval-epochs",
    "eval-width",
    "signal",
    "steps-per-draw",
    "init",
)


def run_settings(rc: dict) -> tuple[Path, int, PublicSets, dict]:
    """(out, owners, the distiller's public sets, distiller_config arguments) of a run config."""
    preset = str(rc.get("preset", "default"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    overrides = {}
    for key in OVERRIDABLE:
        value = rc.get(key, 0)
        if value:
            overrides[key.replace("-", "_")] = value
    subspace_dim = int(rc.get("subspace-dim", PRESET_SUBSPACE))
    if subspace_dim < PRESET_SUBSPACE:
        raise ValueError(f"subspace-dim must be -1 (the preset's), 0 (no projection) or k >= 1, not {subspace_dim}")
    if subspace_dim != PRESET_SUBSPACE:
        overrides["subspace_dim"] = subspace_dim
    kwargs = dict(
        epsilon=float(rc.get("epsilon", 1.0)),
        delta=float(rc.get("delta", 1e-5)),
        ipc=int(rc.get("ipc", 10)),
        draws_per_request=int(rc.get("draws-per-request", 0)) or None,
        group_size=float(rc.get("group-size", 0.0)) or None,
        seed=int(rc.get("seed", 0)),
        eval_runs=int(rc.get("eval-runs", 3)),
        precision=str(rc.get("precision", "") or "float32"),
        **overrides,
    )
    return (
        Path(str(rc.get("out", "runs/flower"))).resolve(),
        int(rc.get("owners", 1)),
        PublicSets.from_run_config(rc, PRESETS[preset]["aux_per_class"]),
        {
            "preset": preset,
            **kwargs,
        },
    )


def distill_over_flower(grid: Grid, run_config: dict, run_id: int | str = "") -> dict:
    """The distiller's whole run with owners reached through ``grid`` (deployment or simulation)."""
    out, num_owners, public, settings = run_settings(run_config)
    cfg = distiller_config(settings.pop("preset"), **settings)
    print(f"[distiller] run {run_id}: writing to {out}; waiting for {num_owners} owner(s)", flush=True)
    router = GridRouter(grid)
    owners = router.discover(num_owners)
    if len(owners) != num_owners:
        raise ValueError(f"the run expects {num_owners} owner(s) but {len(owners)} are connected: {owners}")
    print(f"[distiller] owners: {owners} via nodes {router.node_of}", flush=True)
    clients = [OwnerClient(router.transport(o), o) for o in owners]
    aux, held_out = public.load(show_progress=False)
    device = str(run_config.get("device", "") or "auto")
    results = run_distillation(clients, cfg, out / "distiller", aux, held_out, show_progress=False, device=device)
    print(f"[distiller] done: artefacts in {out / 'distiller'}", flush=True)
    return results


@app.main()
def main(grid: Grid, context: Context) -> None:
    distill_over_flower(grid, dict(context.run_config), context.run_id)
