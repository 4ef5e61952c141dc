"""Which hardware a node computes on, and the numerics it promises there.

Both nodes take a device name: ``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``. Randomness never moves: networks are drawn by the CPU generator and then
moved (``shared.compute.networks.build_network``), augmentation parameters are drawn on the CPU, and the
owner's sample and noise come from its CPU CSPRNG. Released sums are returned to the CPU in
float64 before noise is added.

On a GPU, settings outside the project's code could change a released statistic silently: TF32
matrix products (10-bit mantissa) and cuDNN's autotuner (which picks kernels by timing, so results
can differ run to run). ``use_device`` turns both off and says so in the description it returns,
which the owner logs and the distiller writes into ``results.json``.

``precision`` is ``float32`` or ``bf16``: bf16 autocasts the network passes (convolutions on
oneDNN, which uses AMX or AVX-512-BF16 where the CPU has them; tensor cores on a GPU). Subspaces
are always fitted from float32 passes, so both parties' bases stay within the fingerprint
tolerance whatever precision either side uses for its statistics, and clipping is in float64.
"""

from __future__ import annotations

import contextlib

import torch

from shared.compute.choices import DEFAULT_DEVICE, DEFAULT_PRECISION, check_precision


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """The device for ``name``; a clear error when it is not there (nothing falls back silently)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU that torch can use")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def use_device(name: str = DEFAULT_DEVICE, precision: str = DEFAULT_PRECISION) -> tuple[torch.device, dict]:
    """Resolve ``name`` and fix its numerics; returns the device and a description to report."""
    check_precision(precision)
    device = resolve_device(name)
    described = {"device": str(device), "precision": precision}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        described |= {
            "gpu": torch.cuda.get_device_name(device),
            "tf32": False,
            "cudnn_benchmark": False,
        }
    if precision == "bf16":
        described["autocast"] = f"{device.type} bfloat16 for network passes (subspaces fitted in float32)"
    return device, described


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision`` "bf16"; otherwise nothing changes."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
