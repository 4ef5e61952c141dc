"""The computation's names and defaults that settings refer to, in a module light enough for ``--help``.

Configs (the distiller's, the evaluation's, owner.toml's ``[compute]``) and the command line read
these; the modules that compute (``augmentation``, ``device``, ``networks``) use the same values.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse

# Augmentation families (``shared.compute.augmentation``); a strategy joins some with "_".
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "_".join(FAMILIES)

# Where the distiller computes: "auto" is a CUDA GPU when there is one, else the CPU (``shared.compute.device``).
DEFAULT_DEVICE = "auto"
# Precision of the network passes: "bf16" autocasts them, "auto" is bf16 where the hardware computes it
# natively (AVX512-BF16 or AMX CPUs, GPUs with bf16 tensor cores) and float32 elsewhere, where bf16 would be
# emulated slowly (``shared.compute.device.resolve_precision``). Accuracy is the same (README, "bf16 keeps
# the accuracy").
MEASURED_PRECISIONS = ("float32", "bf16")  # what "auto" resolves to; the speed benchmark times each
PRECISIONS = ("auto", *MEASURED_PRECISIONS)
DEFAULT_PRECISION = "auto"
PRECISION_HELP = (
    "auto (default): bf16 autocast where the hardware computes it natively (AMX / AVX512-BF16 CPUs, GPUs), "
    "else float32; or force float32 or bf16; see README"
)

# Activation memory of one network pass; larger batches are pushed through in chunks (``shared.compute.networks``).
DEFAULT_ACTIVATION_BUDGET_MB = 256


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def compute_options(p: argparse.ArgumentParser, who: str) -> None:
    """``--device`` and ``--precision``, as every command that computes offers them."""
    p.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help=f"where {who} compute: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"precision of the network passes: {PRECISION_HELP}",
    )
