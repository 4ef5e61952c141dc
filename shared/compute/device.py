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

``precision`` is ``float32``, ``bf16`` or ``auto``: bf16 autocasts the network passes (convolutions on
oneDNN, which uses AMX or AVX-512-BF16 where the CPU has them; tensor cores on a GPU); ``auto`` is bf16
only where the hardware computes it natively, since elsewhere it is emulated and slower. Subspaces
are always fitted from float32 passes, so both parties' bases stay within the fingerprint
tolerance whatever precision either side uses for its statistics, and clipping is in float64.
"""

from __future__ import annotations

import contextlib
import functools

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


@functools.cache
def native_bf16(device_type: str, index: int | None = None) -> tuple[bool, str]:
    """Whether ``device_type`` computes bf16 natively, and why: on a CPU the AVX512-BF16 or AMX
    instructions (as torch detects them), on a GPU bf16 support without emulation."""
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(index)} computes bf16 natively"
        return False, f"{torch.cuda.get_device_name(index)} has no native bf16"
    found = [
        name
        for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        if getattr(torch.cpu, check, lambda: False)()
    ]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated, slower than float32)"


def resolve_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """The precision ``precision`` means on ``device`` ("float32" or "bf16") and why."""
    check_precision(precision)
    if precision != "auto":
        return precision, "asked for"
    native, why = native_bf16(device.type, device.index)
    return ("bf16" if native else "float32"), f"auto: {why}"


def use_device(name: str = DEFAULT_DEVICE, precision: str = DEFAULT_PRECISION) -> tuple[torch.device, dict]:
    """Resolve ``name`` and fix its numerics; returns the device and a description to report."""
    device = resolve_device(name)
    precision, why = resolve_precision(device, precision)
    described = {"device": str(device), "precision": precision, "precision_because": why}
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
    """bf16 autocast on ``device`` where ``precision`` resolves to "bf16"; otherwise nothing changes."""
    if resolve_precision(device, precision)[0] == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
