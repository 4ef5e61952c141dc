"""Start a run on a SuperLink with the flwr CLI and wait for its real outcome.

``flwr run --stream`` exits 0 even when the ServerApp fails, so the outcome is read from
``flwr ls --run-id`` ("finished:completed" or "finished:failed" with the exception text).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from shared.wire.rpc.relay_config import toml_string

APP_DIR = Path(__file__).resolve().parent / "flower_app"


def _flwr(args: list[str], env: dict | None = None, timeout_s: float = 120) -> dict:
    exe = shutil.which("flwr", path=(env or os.environ).get("PATH")) or "flwr"
    proc = subprocess.run([exe, *args, "--format", "json"], capture_output=True, text=True, env=env, timeout=timeout_s)
    text = proc.stdout.strip()
    try:
        out = json.loads(text[text.index("{") :]) if "{" in text else {}
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or not out.get("success", True):
        raise RuntimeError(f"flwr {' '.join(args)} failed: {text or proc.stderr.strip()}")
    return out


def format_run_config(rc: dict) -> str:
    """A dict as ``flwr run --run-config`` text that Flower's parser reads back exactly: strings as
    escaped TOML strings (any path: spaces, quotes, backslashes, non-ASCII), booleans and numbers as TOML."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return toml_string(str(v))

    return " ".join(f"{k}={value(v)}" for k, v in rc.items())


def submit(federation: str, run_config: str | dict, env: dict | None = None, app_dir: Path = APP_DIR) -> int:
    if isinstance(run_config, dict):
        run_config = format_run_config(run_config)
    args = ["run", str(app_dir), federation]
    if run_config:
        args += ["--run-config", run_config]
    out = _flwr(args, env)
    return int(out["run-id"])


def status(federation: str, run_id: int, env: dict | None = None) -> dict:
    out = _flwr(["ls", federation, "--run-id", str(run_id)], env)
    return out["runs"][0]


def wait(federation: str, run_id: int, env: dict | None = None, poll_s: float = 5.0, log=print) -> dict:
    """Block until the run finishes; raise with Flower's details if it did not complete."""
    last = None
    while True:
        run = status(federation, run_id, env)
        state = str(run.get("status", ""))
        if state != last:
            log(f"[flower] run {run_id}: {state}")
            last = state
        if state.startswith("finished"):
            if state != "finished:completed":
                raise RuntimeError(f"run {run_id} {state}: {run.get('status-details', '')}")
            return run
        time.sleep(poll_s)
