"""The in-process route and the Flower route build the same run from the same options (issue 28.1)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.cli import build_parser
from deploy.cli_options import distiller_config_from_args, run_config_from_args, user_sets
from deploy.flower_app.dpdistill_flower.server_app import run_settings
from deploy.presets import PRESETS
from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]

OPTION_SETS = [
    [],
    ["--delta", "1e-6", "--pea", "--epsilon", "2.5"],
    ["--preset", "quick", "--ipc", "3", "--width", "16", "--draws", "12", "--subspace-dim", "0", "--lr", "0.1"],
    ["--preset", "gradients", "--group-size", "7.5", "--draws-per-request", "5", "--seed", "4", "--init", "noise"],
    ["--eval-runs", "1", "--eval-epochs", "20", "--eval-width", "32", "--iterations", "7", "--precision", "bf16"],
    ["--aux-prior", "0"],
    ["--preset", "quick", "--aux-prior", "2.5"],
    ["--preset", "kip-decoupled"],
    ["--no-pea"],
    ["--preset", "quick", "--pea"],
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_the_flower_route_builds_the_same_run_as_the_in_process_route(options: list[str], tmp_path: Path) -> None:
    """Before, ``simulate --transport flower --delta 1e-6 --pea`` ran at delta 1e-5 without PEA, silently."""
    a = build_parser().parse_args(["simulate", "--out", str(tmp_path), *options])
    in_process = distiller_config_from_args(a)
    public, _ = user_sets(a)
    rc = run_config_from_args(a, tmp_path, public)
    _, owners, from_rc_public, settings = run_settings(rc)
    over_flower = settings.distiller_config()
    assert asdict(over_flower) == asdict(in_process)  # field by field
    assert owners == a.owners and settings.device == a.device
    assert from_rc_public == PublicSets.from_run_config(public.run_config(), public.aux_per_class)


def test_the_flower_app_config_lists_every_setting_with_its_default() -> None:
    table = tomllib.loads((ROOT / "deploy" / "flower_app" / "pyproject.toml").read_text())
    config = table["tool"]["flwr"]["app"]["config"]
    for key, value in RunSettings().to_run_config().items():
        assert key in config, key
        assert config[key] == value and type(config[key]) is type(value), key
    assert RunSettings.from_run_config(config) == RunSettings()
    public = PublicSets().run_config()
    assert set(config) == set(RunSettings().to_run_config()) | set(public) | {"out", "owners"}
    assert PublicSets.from_run_config(config, PublicSets().aux_per_class) == PublicSets()


def test_run_config_values_are_checked() -> None:
    with pytest.raises(ValueError, match="subspace-dim must be"):
        RunSettings.from_run_config({"subspace-dim": -2})
    with pytest.raises(ValueError, match="epsilon"):
        RunSettings.from_run_config({"epsilon": float("inf")})
    with pytest.raises(ValueError, match="unknown preset"):
        RunSettings.from_run_config({"preset": "fastest"})
    with pytest.raises(ValueError, match="pea must be true or false"):
        RunSettings.from_run_config({"pea": "yes"})


def test_pea_is_the_presets_unless_a_run_asks_either_way(tmp_path: Path) -> None:
    """PEA is a preset's setting like the others: ``--pea`` / ``--no-pea`` (a run config's true / false)
    override it both ways, and nothing said (a run config's "") keeps the preset's."""

    def pea(*options: str) -> bool:
        a = build_parser().parse_args(["simulate", "--out", str(tmp_path), *options])
        return distiller_config_from_args(a).optimisation.pea

    assert pea() is PRESETS["default"].get("pea", False)
    assert pea("--no-pea") is False and pea("--pea") is True
    assert pea("--preset", "quick") is False and pea("--preset", "quick", "--pea") is True
    for value, expected in (("", PRESETS["default"].get("pea", False)), (True, True), (False, False)):
        assert RunSettings.from_run_config({"pea": value}).distiller_config().optimisation.pea is expected


# Each RunSettings field that the configs it builds also carry, and the config field it fills.
SHARED_WITH_CONFIGS = {
    "ipc": ("optimisation", "ipc"),
    "seed": ("sampling", "seed"),
    "pea": ("optimisation", "pea"),
    "eval_runs": ("evaluation", "runs"),
    "precision": ("optimisation", "precision"),
    "width": ("sampling", "width"),
    "draws": ("sampling", "draws"),
    "subspace_dim": ("sampling", "subspace_dim"),
    "iterations": ("optimisation", "iterations"),
    "lr": ("optimisation", "lr"),
    "eval_epochs": ("evaluation", "epochs"),
    "eval_width": ("evaluation", "width"),
    "steps_per_draw": ("optimisation", "steps_per_draw"),
    "draws_per_request": ("sampling", "draws_per_request"),
    "group_size": ("sampling", "group_size"),
    "aux_prior": ("optimisation", "aux_prior"),
}


def test_settings_the_run_shares_with_its_configs_are_stated_once() -> None:
    """Issue 28.1: a default or range RunSettings shares with DistillerConfig's parts is the config's own
    (``same_as``), not a copy that can drift; fields without a preset value take the config's default."""
    from dataclasses import fields

    from distiller_node.config import OptimisationConfig, SamplingConfig
    from shared.evaluation_config import EvaluationConfig

    configs = {"optimisation": OptimisationConfig, "sampling": SamplingConfig, "evaluation": EvaluationConfig}
    run_fields = {f.name: f for f in fields(RunSettings)}
    for name, (part, field_name) in SHARED_WITH_CONFIGS.items():
        source = {f.name: f for f in fields(configs[part])}[field_name]
        mine = run_fields[name]
        if "bound" in source.metadata:
            bound, theirs = mine.metadata["bound"], source.metadata["bound"]
            assert (bound.kind, bound.low, bound.high, bound.low_open, bound.high_open) == (
                theirs.kind,
                theirs.low,
                theirs.high,
                theirs.low_open,
                theirs.high_open,
            ), name
        assert mine.default in (None, source.default), name
    built = RunSettings().distiller_config()
    for name, (part, field_name) in SHARED_WITH_CONFIGS.items():
        if getattr(RunSettings(), name) is not None:
            assert getattr(getattr(built, part), field_name) == getattr(RunSettings(), name), name
