"""How a synthetic set is scored (``shared.evaluation``): the settings alone, light enough for ``--help``.

``deploy.run_settings.RunSettings`` reads its defaults (the number of trainings) from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.compute.choices import DEFAULT_ACTIVATION_BUDGET_MB, DEFAULT_PRECISION, DEFAULT_STRATEGY
from shared.settings import bounded, check_settings


@dataclass(frozen=True)
class EvaluationConfig:
    runs: int = bounded(3, int, 1, 1000)
    epochs: int = bounded(300, int, 1, 10**6)
    width: int = bounded(128, int, 1, 4096)
    depth: int | None = bounded(
        None, int, 1, 12, optional=True
    )  # None: by image size (shared.compute.networks.depth_for_image_size)
    lr: float = bounded(0.01, float, 0, 1e3, low_open=True)
    momentum: float = bounded(0.9, float, 0, 1, high_open=True)
    weight_decay: float = bounded(5e-4, float, 0, 1)
    batch_size: int = bounded(256, int, 1, 10**6)
    augmentation: str = DEFAULT_STRATEGY
    seed: int = bounded(1000, int, 0, 2**63 - 1)
    # Activation memory of one pass: larger batches are split into micro-batches whose gradients add
    # up to the batch's (exact: the network has no batch statistics).
    activation_budget_mb: float = bounded(DEFAULT_ACTIVATION_BUDGET_MB, float, 0, 1 << 24, low_open=True)
    precision: str = DEFAULT_PRECISION  # "bf16" ("auto": where native) autocasts training and test passes

    def __post_init__(self) -> None:
        check_settings(self, "evaluation")
