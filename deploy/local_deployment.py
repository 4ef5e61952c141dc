"""A whole Flower deployment on one machine, every role its own process, started by the role scripts.

The same scripts (deploy/roles/) are what a hospital and a cloud operator run on their own machines;
this launcher gives them 127.0.0.1 addresses, makes certificates, registers the SuperNodes, and
(when run as root) puts the owners' data and ledgers where the relays cannot read them. Used by
``dpdistill deploy-local``, the deployment tests and the transport benchmark.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy import flower_runs
from deploy.certs import make_certs
from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings
from deploy.simulation import owner_dirs, prepare_owners
from owner_node.config import Limits, ServiceConfig
from shared.images.source import ImageSource
from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError

ROLES = Path(__file__).resolve().parent / "roles"
FEDERATION = "dpdistill"
UNPRIVILEGED_UID = 65534  # who owns the owners' folders when run as root: not the relay's uid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


@dataclass
class Layout:
    num_owners: int
    superlink_port: int
    owner_ports: list[int]
    runtime_ports: list[int]

    @classmethod
    def new(cls, num_owners: int) -> Layout:
        ports = [free_port() for _ in range(1 + 2 * num_owners)]
        return cls(num_owners, ports[0], ports[1 : 1 + num_owners], ports[1 + num_owners :])


def owner_limits(max_draws_per_request: int) -> Limits:
    """The limits each local deployment's owner is given (its owner.toml)."""
    return Limits(max_draws_per_request=max_draws_per_request)


def owner_folder(root: Path) -> Path:
    """Where a local deployment keeps its owners' folders (one per owner, ``deploy.simulation.owner_dirs``)."""
    return Path(root) / "owners"


@dataclass
class LocalDeployment:
    root: Path
    num_owners: int = 1
    epsilon: float = RunSettings.epsilon  # each owner's budget: the run's epsilon unless told otherwise
    delta: float = RunSettings.delta
    public: PublicSets = field(default_factory=PublicSets)
    private: ImageSource | None = None  # one owner's own images (default: Fashion-MNIST's training set)
    private_subset: int | None = None
    max_draws_per_request: int = 1000
    seed: int = 0
    owner_settings: dict | None = None  # further OwnerConfig fields for every owner (privacy unit, holdout, ...)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.certs = self.root / "certs"
        self.logs = self.root / "logs"
        layout_path = self.root / "deployment.json"
        if layout_path.exists():
            self.layout = Layout(**json.loads(layout_path.read_text()))
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.layout = Layout.new(self.num_owners)
            layout_path.write_text(json.dumps(asdict(self.layout)))
        self.names = [str(i + 1) for i in range(self.num_owners)]

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        if not (self.certs / "ca.pem").exists():
            make_certs(self.certs, ["127.0.0.1", "localhost"], self.names)
        aux, _ = self.public.load(show_progress=False)
        services = [
            ServiceConfig(
                listen=f"127.0.0.1:{port}",
                tls_cert=self.certs / f"owner-{n}.pem",
                tls_key=self.certs / f"owner-{n}.key",
                client_ca=self.certs / f"relay-ca-{n}.pem",  # this owner's own relay CA
                client_names=(f"relay-{n}",),
            )
            for n, port in zip(self.names, self.layout.owner_ports, strict=True)
        ]
        self.owner_configs = prepare_owners(
            owner_folder(self.root),
            aux,
            self.epsilon,
            self.delta,
            self.public.data_root,
            self.private_subset,
            self.num_owners,
            self.seed,
            services=services,
            limits=owner_limits(self.max_draws_per_request),
            private=self.private,
            owner_settings=self.owner_settings,
        )
        if os.geteuid() == 0:
            # The relays run as root without capabilities: a folder owned by another uid, mode 0700,
            # is closed to them, while the owner service (full root) still reads and writes it.
            for config in self.owner_configs:
                for path in [config.parent, *config.parent.iterdir()]:
                    os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
                config.parent.chmod(0o700)
        self.logs.mkdir(exist_ok=True)

    def _env(self, **extra: str) -> dict:
        return {**os.environ, **{k: str(v) for k, v in extra.items()}}

    def _start(self, name: str, script: str, **env: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            ["bash", str(ROLES / script)],
            env=self._env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
        self.procs[name] = proc
        return proc

    def _wait_log(self, name: str, text: str, timeout_s: float = 180) -> None:
        path = self.logs / f"{name}.log"
        start = path.stat().st_size if path.exists() else 0
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if path.exists() and text in path.read_text(errors="replace")[start:]:
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"{name} not ready after {timeout_s} s (no {text!r} in {path})")

    def owner_endpoint(self, i: int) -> OwnerEndpoint:
        n = self.names[i]
        return OwnerEndpoint(
            f"127.0.0.1:{self.layout.owner_ports[i]}",
            str(self.certs / "ca.pem"),
            str(self.certs / f"relay-{n}.pem"),
            str(self.certs / f"relay-{n}.key"),
        )

    def start_owner(self, i: int) -> None:
        name = f"owner-{self.names[i]}"
        proc = self._start(name, "owner-service.sh", OWNER_CONFIG=str(self.owner_configs[i]))
        channel = OwnerChannel(self.owner_endpoint(i), timeout_s=10)
        deadline = time.time() + 180
        try:
            while True:
                try:
                    channel.wait_ready(2.0)
                    return
                except OwnerCallError:
                    if proc.poll() is not None or time.time() > deadline:
                        log = (self.logs / f"{name}.log").read_text()[-3000:]
                        raise RuntimeError(f"{name} did not start: {log}") from None
        finally:
            channel.close()

    def start_superlink(self) -> None:
        self._start(
            "superlink",
            "superlink.sh",
            CERTS=str(self.certs),
            STATE=str(self.root / "superlink-state"),
            SUPERLINK_LISTEN=f"127.0.0.1:{self.layout.superlink_port}",
        )
        self._wait_log("superlink", "Uvicorn running")

    @property
    def cli_env(self) -> dict:
        # The flwr CLI of the environment running this launcher.
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return self._env(FLWR_HOME=str(self.root / "flwr-cli"), PATH=path)

    def register_supernodes(self) -> None:
        marker = self.root / "flwr-cli" / "registered"
        if marker.exists():
            return
        keys = [str(self.certs / f"supernode-{n}.pub") for n in self.names]
        subprocess.run(
            ["bash", str(ROLES / "connect.sh"), *keys],
            env=self._env(
                FLWR_HOME=str(self.root / "flwr-cli"),
                SUPERLINK_ADDRESS=f"127.0.0.1:{self.layout.superlink_port}",
                CA=str(self.certs / "ca.pem"),
                FEDERATION=FEDERATION,
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        marker.write_text("\n".join(keys))

    def start_supernode(self, i: int) -> None:
        n = self.names[i]
        endpoint = self.owner_endpoint(i)
        self._start(
            f"supernode-{n}",
            "supernode.sh",
            CA=str(self.certs / "ca.pem"),
            NODE_KEY=str(self.certs / f"supernode-{n}.key"),
            SUPERLINK_ADDRESS=f"127.0.0.1:{self.layout.superlink_port}",
            OWNER_ADDRESS=endpoint.address,
            OWNER_CA=endpoint.root_cert,
            RELAY_CERT=endpoint.client_cert,
            RELAY_KEY=endpoint.client_key,
            RUNTIME_PORT=str(self.layout.runtime_ports[i]),
            FLWR_HOME=str(self.root / f"supernode-{n}-home"),
        )
        self._wait_log(f"supernode-{n}", "SuperNode ID", timeout_s=300)

    def start(self) -> None:
        self.prepare()
        for i in range(self.num_owners):
            self.start_owner(i)
        self.start_superlink()
        self.register_supernodes()
        for i in range(self.num_owners):
            self.start_supernode(i)

    # ------------------------------------------------------------ runs and faults

    def submit(self, run_config: str | dict, app_dir: Path = flower_runs.APP_DIR) -> int:
        return flower_runs.submit(FEDERATION, run_config, self.cli_env, app_dir)

    def wait(self, run_id: int, log=print) -> dict:
        return flower_runs.wait(FEDERATION, run_id, self.cli_env, log=log)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a role's process group and every descendant (Flower starts some in new sessions)."""
        proc = self.procs.pop(name)
        family = descendants(proc.pid)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in family:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        deadline = time.time() + 15
        while family and time.time() < deadline:
            family = [p for p in family if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            time.sleep(0.5)
        for pid in family:  # a straggler (e.g. a ServerApp still polling its SuperLink)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for name in (
            [n for n in self.procs if n.startswith("supernode")]
            + ["superlink"]
            + [n for n in self.procs if n.startswith("owner")]
        ):
            if name in self.procs:
                self.kill(name, signal.SIGTERM)


def dry_run_local(
    root: Path,
    run_config: dict,
    num_owners: int,
    epsilon: float,
    private,
    private_subset: int | None,
    max_draws_per_request: int,
    seed: int = 0,
) -> dict:
    """``deploy-local --dry-run``: the plan the deployment's run would make, nothing started or written.

    Owners already set up under ``root`` are asked as they are (their ledgers read only); otherwise
    they are set up as the deployment would set them up, in a scratch folder."""
    from deploy.dry_run import dry_run
    from deploy.flower_app.dpdistill_flower.server_app import run_settings

    out, _, public, settings = run_settings(run_config)  # what the Flower run itself will read (RunSettings)
    cfg = settings.distiller_config()
    aux, _ = public.load(show_progress=False)
    device = settings.device
    existing = [d / "owner.toml" for d in owner_dirs(owner_folder(root), num_owners)]
    if all(p.exists() for p in existing):
        return dry_run(existing, cfg, out / "distiller", aux, device)
    with tempfile.TemporaryDirectory(prefix="dpdistill-dry-run-owners-") as tmp:
        paths = prepare_owners(
            Path(tmp),
            aux,
            epsilon,
            cfg.delta,
            public.data_root,
            private_subset,
            num_owners,
            seed,
            limits=owner_limits(max_draws_per_request),
            private=private,
        )
        return dry_run(paths, cfg, out / "distiller", aux, device)
