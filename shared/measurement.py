"""How a measured figure is recorded: the machine it ran on (wall times compare only within one machine
kind), and the JSON file it is written to. Benchmarks, the simulation's ``--benchmark-json`` and
``evaluate --json`` all use it."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, family/model and the vector extensions that matter here (AVX-512, AMX):
    benchmark wall times compare only within one machine kind."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields['model name']} (family {family}, model {model}; {' '.join(extensions) or 'no AVX2'})"


def write_json(path: str | Path, result: dict, echo: bool = True) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    if echo:
        print(json.dumps(result, indent=2))


def run_log(folder: str | Path) -> Path:
    """Where a benchmark run folder's log goes: beside it, named after the whole folder name
    (``with_suffix`` would cut ``dos-ser_eps0.5`` at its dot, and two runs would share one log)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.log"
