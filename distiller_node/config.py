"""The distiller's settings: sampling (what it asks owners for), optimisation, evaluation, privacy.

Plain dataclasses with checked numbers, light enough for every command's ``--help``;
``deploy.run_settings.RunSettings`` builds them from a preset and the command line, and reads the
defaults it shares with them (seed, ipc, precision, ...) from here.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field

from shared.accounting import MAX_EPSILON, MIN_DELTA
from shared.compute.choices import DEFAULT_ACTIVATION_BUDGET_MB, DEFAULT_PRECISION, DEFAULT_STRATEGY
from shared.evaluation_config import EvaluationConfig
from shared.settings import bounded, check_settings
from shared.wire.messages import DEFAULT_SIGNAL


@dataclass(frozen=True)
class SamplingConfig:
    draws: int = bounded(200, int, 1, 10**6)
    draws_per_request: int = bounded(25, int, 1, 100_000)
    group_size: float = bounded(50.0, float, 0, 1e9, low_open=True)
    # Where the owners' caps lower the group below ``group_size`` (a small class; see
    # ``distiller_node.sampling.effective_group_size``), the run keeps what the settings were chosen
    # for, counting the group as at least this size: draws x group (the records a class gives over the
    # run) and lr x group^2 (the step: the loss compares class sums rescaled to the group, so its
    # gradient grows as group^2). The draws grow by planned / group, the step by its square. 0: neither.
    scale_down_to: float = bounded(0.0, float, 0, 1e9)
    subspace_dim: int = bounded(200, int, 0, 10**6)
    width: int = bounded(128, int, 1, 4096)
    depth: int | None = bounded(
        None, int, 1, 12, optional=True
    )  # None: by image size (shared.compute.networks.depth_for_image_size)
    augmentation: str = DEFAULT_STRATEGY
    seed: int = bounded(0, int, 0, 2**63 - 1)
    signal: str = DEFAULT_SIGNAL  # or "gradients": per-example loss gradients of each draw's network
    # Requests each owner has in flight: the next one already waits at the owner while the current
    # one is computed, hiding transport latency (seconds per message over Flower).
    in_flight: int = bounded(2, int, 1, 64)

    def __post_init__(self) -> None:
        check_settings(self, "sampling")


@dataclass(frozen=True)
class OptimisationConfig:
    ipc: int = bounded(10, int, 1, 100_000)
    iterations: int = bounded(2000, int, 0, 10**9)
    lr: float = bounded(1.0, float, 0, 1e6, low_open=True)
    momentum: float = bounded(0.5, float, 0, 1, high_open=True)
    ema_decay: float = bounded(0.99, float, 0, 1, high_open=True)
    pea: bool = False
    seed: int = bounded(0, int, 0, 2**63 - 1)
    cache_mb: int = bounded(512, int, 0, 1 << 24)
    checkpoint_every: int = bounded(200, int, 1, 10**9)
    # Consecutive iterations on one stored draw. 1 suits feature signals; gradient signals, whose
    # bases are large and slow to rebuild, fit many more draws per second with a few steps per draw.
    steps_per_draw: int = bounded(1, int, 1, 10**6)
    # Where the synthetic images start: "noise" (N(0, 1)) or "aux" (the first ipc public auxiliary
    # images of each class). Never from private images.
    init: str = "noise"
    # Activation memory of one pass: a synthetic set whose pass would need more is pushed through in
    # chunks, with the exact gradient of the whole-set loss (two passes; see ``Distiller.step``).
    activation_budget_mb: float = bounded(DEFAULT_ACTIVATION_BUDGET_MB, float, 0, 1 << 24, low_open=True)
    # "bf16" ("auto": where native) autocasts the network passes (shared.compute.device); the loss and the
    # images stay float32/64.
    precision: str = DEFAULT_PRECISION
    # Weight of the auxiliary prior (``distiller_node.aux_prior``): in the directions each draw's
    # projection leaves out, the synthetic class means are held to the public auxiliary set's. Public
    # data only, so no privacy cost. 0: off (and nothing is left out without a projection).
    aux_prior: float = bounded(0.0, float, 0, 1e6)

    def __post_init__(self) -> None:
        check_settings(self, "optimisation")


@dataclass(frozen=True)
class DistillerConfig:
    # No defaults here: deploy.run_settings.RunSettings states the run's (the command line, Flower, benchmarks).
    epsilon: float = bounded(MISSING, float, 0, MAX_EPSILON, low_open=True)
    delta: float = bounded(MISSING, float, MIN_DELTA, 1, high_open=True)
    accountant: str = "prv"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optimisation: OptimisationConfig = field(default_factory=OptimisationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        check_settings(self, "")

    def to_dict(self) -> dict:
        return asdict(self)
