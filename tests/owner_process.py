"""Run the owner service as its own process behind mutual TLS, for tests that talk to it over gRPC.

Shared by the gRPC, hostile-distiller and fault tests so that all of them start, probe and stop the
service the same way (``python -m deploy.cli owner-serve``, exactly as an operator runs it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from deploy.certs import make_certs
from owner_node.config import OwnerConfig, ServiceConfig, write_config
from shared.wire.messages import BudgetRequest
from shared.wire.protocol import encode
from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError
from tests.conftest import make_owner_config

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode_budget() -> bytes:
    return encode(BudgetRequest())


def start_owner_service(config_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "owner-serve", "--config", str(config_path)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(channel: OwnerChannel, proc: subprocess.Popen | ForkedOwner, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"owner service exited: {log.read_text()[-2000:]}")
        try:
            channel.call("Budget", encode_budget())
            return
        except OwnerCallError as exc:
            if exc.code != "owner_unavailable":
                raise
            time.sleep(0.3)
    raise AssertionError("owner service never became ready")


def stop_owner_service(proc: subprocess.Popen) -> None:
    """SIGTERM (the service's clean shutdown), SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class TlsOwnerSetup:
    """Everything needed to (re)start one owner service on the same config, certificates and ledger."""

    config: OwnerConfig
    config_path: Path
    endpoint: OwnerEndpoint
    log: Path

    def channel(self, timeout_s: float = 60) -> OwnerChannel:
        return OwnerChannel(self.endpoint, timeout_s=timeout_s)


def prepare_tls_owner(folder: Path, epsilon: float, **limits: Any) -> TlsOwnerSetup:
    """Certificates, a free port and an owner config demanding client certificates (mutual TLS)."""
    certs = folder / "certs"
    make_certs(certs, ["127.0.0.1", "localhost"], ["a"])
    port = free_port()
    config = replace(
        make_owner_config(folder / "owner", epsilon=epsilon, **limits),
        service=ServiceConfig(
            listen=f"127.0.0.1:{port}",
            tls_cert=certs / "owner-a.pem",
            tls_key=certs / "owner-a.key",
            client_ca=certs / "relay-ca-a.pem",
            client_names=("relay-a",),
        ),
    )
    config_path = folder / "owner" / "owner.toml"
    write_config(config_path, config)
    endpoint = OwnerEndpoint(
        f"127.0.0.1:{port}", str(certs / "ca.pem"), str(certs / "relay-a.pem"), str(certs / "relay-a.key")
    )
    return TlsOwnerSetup(config, config_path, endpoint, folder / "owner.log")


class OwnerProcess(NamedTuple):
    config: OwnerConfig
    endpoint: OwnerEndpoint
    channel: OwnerChannel
    proc: subprocess.Popen


@contextmanager
def running_tls_owners(folder: Path, **owners: dict[str, Any]) -> Iterator[dict[str, OwnerProcess]]:
    """Start one owner service per keyword (its value: ``epsilon`` and limits) at once, so their slow
    imports overlap; yield them by name once all are ready; stop them all afterwards."""
    started: dict[str, tuple[TlsOwnerSetup, subprocess.Popen, OwnerChannel]] = {}
    try:
        for name, spec in owners.items():
            setup = prepare_tls_owner(folder / name, **spec)
            started[name] = (setup, start_owner_service(setup.config_path, setup.log), setup.channel())
        for setup, proc, channel in started.values():
            wait_ready(channel, proc, setup.log)
        yield {name: OwnerProcess(s.config, s.endpoint, c, p) for name, (s, p, c) in started.items()}
    finally:
        for _, proc, channel in started.values():
            stop_owner_service(proc)
            channel.close()


def tls_owner_fixture(epsilon: float, **limits: Any) -> Callable[..., Iterator[OwnerProcess]]:
    """A module-scoped fixture: one owner service process with mutual TLS, shared by a module's tests."""

    @pytest.fixture(scope="module")
    def owner_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnerProcess]:
        with running_tls_owners(tmp_path_factory.mktemp("tls_owner"), owner=dict(epsilon=epsilon, **limits)) as owners:
            yield owners["owner"]

    return owner_process


# ---------------------------------------------------------------- fast restarts for fault injection

FORK_SERVER = r"""
import ctypes, os, signal, sys
import deploy.cli
import owner_node.grpc_server  # torch, opacus and grpc: imported once here, inherited by every child

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
children = set()
print("ready", flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "start":
        config, log = args
        pid = os.fork()
        if pid == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the fork server
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            status = 70
            try:
                status = deploy.cli.main(["owner-serve", "--config", config])
            finally:
                os._exit(status)
        children.add(pid)
        print(pid, flush=True)
    elif command == "poll":
        pid, status = os.waitpid(int(args[0]), os.WNOHANG)
        if pid:
            children.discard(pid)
        print(status if pid else "alive", flush=True)
    elif command == "wait":
        _, status = os.waitpid(int(args[0]), 0)
        children.discard(int(args[0]))
        print(status, flush=True)
for pid in children:  # stdin closed: stop what is left, cleanly
    os.kill(pid, signal.SIGTERM)
for pid in children:
    os.waitpid(pid, 0)
"""


class ForkedOwner:
    """One owner-service process forked by ``OwnerForkServer``; ``poll`` mirrors ``Popen.poll``."""

    def __init__(self, server: OwnerForkServer, pid: int):
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            answer = self.server.ask(f"poll {self.pid}")
            self.returncode = None if answer == "alive" else int(answer)
        return self.returncode

    def sigkill(self) -> None:
        """SIGKILL (no cleanup of any kind), then wait until it is gone so its port and files are free."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.returncode = int(self.server.ask(f"wait {self.pid}"))


class OwnerForkServer:
    """Starts owner-service processes in a second or so instead of the ~10 s a fresh interpreter needs.

    A helper process imports the owner's modules once; each owner is a fork of it that runs
    ``deploy.cli.main(["owner-serve", ...])``, so after the imports it is the operator's code path.
    Used where a test restarts the owner dozens of times (SIGKILL fault injection).
    """

    def __init__(self, log: Path):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
        )
        if self._read() != "ready":
            raise AssertionError(f"fork server failed to start: {log.read_text()[-2000:]}")

    def _read(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        answer = self._read()
        if not answer:
            raise AssertionError(f"fork server died while asked {command!r}")
        return answer

    def start(self, setup: TlsOwnerSetup) -> ForkedOwner:
        return ForkedOwner(self, int(self.ask(f"start {setup.config_path} {setup.log}")))

    def close(self) -> None:
        """Closing stdin makes the fork server SIGTERM its remaining owners and exit."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> OwnerForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
