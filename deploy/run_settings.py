"""One typed table of a distillation run's settings, and the one path from it to a run.

The command line (``simulate``, ``deploy-local``), a Flower run config (``flwr run``, the ServerApp,
``simulate --transport flower``) and the benchmarks all build a ``RunSettings`` and ask it for the
``DistillerConfig``; so the in-process route and the Flower route cannot drift apart (before, the
Flower route silently dropped ``--delta``, ``--pea`` and others). A field's run-config key is its
name with '-' for '_'; deploy/flower_app/pyproject.toml lists every key with the value
``to_run_config`` gives the defaults (tests/test_run_settings.py checks both).

``None`` in a preset field means "the preset's value"; a run config cannot carry None, so there it is
0, 0.0 or "" (and -1 for ``subspace_dim``, where 0 asks for no projection; "" for ``pea``, a bool).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

from deploy.presets import PRESETS
from distiller_node.config import DistillerConfig, OptimisationConfig, SamplingConfig
from shared.accounting import DEFAULT_DELTA, MAX_EPSILON, MIN_DELTA
from shared.compute.choices import DEFAULT_DEVICE, check_precision
from shared.evaluation_config import EvaluationConfig
from shared.settings import bounded, check_settings, same_as

# Fields that override a preset's value when set (None: the preset's).
PRESET_FIELDS = (
    "width",
    "draws",
    "subspace_dim",
    "iterations",
    "lr",
    "eval_epochs",
    "eval_width",
    "signal",
    "steps_per_draw",
    "init",
    "draws_per_request",
    "group_size",
    "aux_prior",
    "pea",
)
# How a run config says "unset" for a field whose value would otherwise be None (where 0 means something).
UNSET_IN_RUN_CONFIG = {"subspace_dim": -1, "aux_prior": -1.0, "pea": ""}


@dataclass(frozen=True)
class RunSettings:
    preset: str = "default"
    epsilon: float = bounded(1.0, float, 0, MAX_EPSILON, low_open=True, key="epsilon")
    delta: float = bounded(DEFAULT_DELTA, float, MIN_DELTA, 1, high_open=True, key="delta")
    # Settings the built configs carry too: their defaults and ranges are those configs' (same_as).
    ipc: int = same_as(OptimisationConfig, "ipc", key="ipc")
    seed: int = same_as(SamplingConfig, "seed", key="seed")
    pea: bool | None = None
    eval_runs: int = same_as(EvaluationConfig, "runs", key="eval-runs")
    precision: str = same_as(OptimisationConfig, "precision")
    device: str = DEFAULT_DEVICE
    width: int | None = same_as(SamplingConfig, "width", key="width", unset=True)
    draws: int | None = same_as(SamplingConfig, "draws", key="draws", unset=True)
    subspace_dim: int | None = same_as(SamplingConfig, "subspace_dim", key="subspace-dim", unset=True)
    iterations: int | None = same_as(OptimisationConfig, "iterations", key="iterations", unset=True)
    lr: float | None = same_as(OptimisationConfig, "lr", key="lr", unset=True)
    eval_epochs: int | None = same_as(EvaluationConfig, "epochs", key="eval-epochs", unset=True)
    eval_width: int | None = same_as(EvaluationConfig, "width", key="eval-width", unset=True)
    signal: str | None = None
    steps_per_draw: int | None = same_as(OptimisationConfig, "steps_per_draw", key="steps-per-draw", unset=True)
    init: str | None = None
    draws_per_request: int | None = same_as(SamplingConfig, "draws_per_request", key="draws-per-request", unset=True)
    group_size: float | None = same_as(SamplingConfig, "group_size", key="group-size", unset=True)
    aux_prior: float | None = same_as(OptimisationConfig, "aux_prior", key="aux-prior", unset=True)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.pea is not None and not isinstance(self.pea, bool):
            raise ValueError(f"pea must be true or false (or unset: the preset's), got {self.pea!r}")
        check_precision(self.precision)
        check_settings(self)

    def distiller_config(self) -> DistillerConfig:
        """The run these settings describe: the preset's values, each replaced by a field that is set."""
        from distiller_node.methods import distillation_method

        # The configs' own values where a preset states none, then the preset's, then the fields that are set.
        base = {
            "group_size": SamplingConfig.group_size,
            "scale_down_to": SamplingConfig.scale_down_to,
            "draws_per_request": SamplingConfig.draws_per_request,
            "cache_mb": OptimisationConfig.cache_mb,
            "aux_prior": OptimisationConfig.aux_prior,
            "pea": OptimisationConfig.pea,
        } | PRESETS[self.preset]
        p = {k: v if getattr(self, k, None) is None else getattr(self, k) for k, v in base.items()}
        method = distillation_method(p["signal"])
        if self.aux_prior is None and not method.takes_aux_prior:
            p["aux_prior"] = 0.0  # the preset's prior is for the methods that fit one; asked for, KIP refuses it
        return DistillerConfig(
            epsilon=self.epsilon,
            delta=self.delta,
            sampling=SamplingConfig(
                draws=p["draws"],
                draws_per_request=p["draws_per_request"],
                group_size=p["group_size"],
                scale_down_to=p["scale_down_to"],
                subspace_dim=p["subspace_dim"],
                width=p["width"],
                seed=self.seed,
                signal=p["signal"],
                # KIP matches moments of the images themselves (DSA belongs to the ConvNet-matching methods).
                augmentation=SamplingConfig.augmentation if method.augmentable else "none",
            ),
            optimisation=OptimisationConfig(
                ipc=self.ipc,
                iterations=p["iterations"],
                lr=p["lr"],
                pea=p["pea"],
                seed=self.seed,
                steps_per_draw=p["steps_per_draw"],
                init=p["init"],
                precision=self.precision,
                cache_mb=p["cache_mb"],
                aux_prior=p["aux_prior"],
            ),
            evaluation=EvaluationConfig(
                runs=self.eval_runs, epochs=p["eval_epochs"], width=p["eval_width"], precision=self.precision
            ),
        )

    # ------------------------------------------------------------ the entry points' forms

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> RunSettings:
        """From command-line options named like the fields (``--eval-runs`` is ``eval_runs``); absent: default."""
        given = {f.name: getattr(a, f.name) for f in fields(cls) if getattr(a, f.name, None) is not None}
        return cls(**given)

    def to_run_config(self) -> dict[str, Any]:
        """As Flower run-config entries (``None`` becomes the run config's "unset" value)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = UNSET_IN_RUN_CONFIG.get(f.name, _unset(f.type))
            out[f.name.replace("_", "-")] = value
        return out

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> RunSettings:
        """From a run config; keys it lacks take the defaults, "unset" values the preset's."""
        given: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in rc:
                continue
            value = rc[key]
            if value == UNSET_IN_RUN_CONFIG.get(f.name, _unset(f.type)) and f.name in PRESET_FIELDS:
                continue
            if f.name == "subspace_dim" and isinstance(value, int) and value < UNSET_IN_RUN_CONFIG[f.name]:
                raise ValueError(
                    f"{key} must be {UNSET_IN_RUN_CONFIG[f.name]} (the preset's), 0 (no projection) or k >= 1, "
                    f"not {value}"
                )
            given[f.name] = value
        return cls(**given)


def _unset(annotation: object) -> object:
    """The run config's "unset" value for a field of this annotation."""
    text = str(annotation)
    if "str" in text:
        return ""
    if "float" in text:
        return 0.0
    return 0
