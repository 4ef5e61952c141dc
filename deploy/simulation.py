"""In-process simulation: owner nodes and one distiller node in a single process.

They meet only through encoded protocol messages (bytes in, bytes out) on the same transport
interface a gRPC channel or the Flower relay provides. This module imports both nodes, so it lives
outside both. ``prepare_owners`` also sets up the owners of the deployment-mode launcher.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from distiller_node.client import OwnerClient
from distiller_node.pipeline import DistillerConfig, run_distillation
from owner_node.config import Limits, OwnerConfig, ServiceConfig, write_config
from owner_node.service import OwnerService
from shared.datasets import FASHION_MNIST_NORMALIZATION, ImageSet, load_fashion_mnist, public_split, save_npz
from shared.images.classes import check_same_classes
from shared.images.source import ImageSource, load_source


@dataclass(frozen=True)
class UserSets:
    """A user's own sets for a simulation: the owner's private set, the distiller's public auxiliary
    set (for SER subspaces and, with ``--init aux``, the start) and an optional public test set."""

    private: ImageSource
    aux: ImageSource
    test: ImageSource | None = None

    def load_public(self, show_progress: bool) -> tuple[ImageSet, ImageSet | None]:
        """The distiller's two public sets; class names must equal, in order, or labels would be permuted."""
        aux = load_source(self.aux, progress=show_progress, cache=False).data
        if self.test is None:
            return aux, None
        test = load_source(self.test, progress=show_progress, cache=False).data
        check_same_classes(aux, test, names=("auxiliary set", "test set"))
        return aux, test


def owner_dirs(out: Path, num_owners: int) -> list[Path]:
    return [out / "owner"] if num_owners == 1 else [out / f"owner-{i + 1}" for i in range(num_owners)]


def prepare_owners(
    out: Path,
    aux: ImageSet,
    epsilon: float,
    delta: float,
    data_root: str | None,
    private_subset: int | None,
    num_owners: int = 1,
    seed: int = 0,
    services: list[ServiceConfig] | None = None,
    limits: Limits | None = None,
    private: ImageSource | None = None,
) -> list[Path]:
    """Write each simulated owner's files (config, auxiliary set, its private share); existing ones are kept.

    With several owners the training set (or the private subset) is split at random into disjoint,
    equal shares, one per owner.
    """
    dirs = owner_dirs(Path(out), num_owners)
    paths = [d / "owner.toml" for d in dirs]
    if all(p.exists() for p in paths):
        return paths
    shares: list[ImageSet | None] = [None]
    if private_subset or num_owners > 1:
        train = load_fashion_mnist(train=True, root=data_root)
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(train), generator=g)[: private_subset or len(train)]
        shares = [train.subset(part.sort().values) for part in index.chunk(num_owners)]
    for i, (owner_dir, config_path) in enumerate(zip(dirs, paths, strict=True)):
        owner_dir.mkdir(parents=True, exist_ok=True)
        save_npz(owner_dir / "aux.npz", aux)
        # Paths in owner.toml are relative to the file, so the owner folder can be moved as a whole.
        source, path = "fashion-mnist", Path(data_root).resolve() if data_root else None
        if shares[0] is not None:
            save_npz(owner_dir / "private.npz", shares[i])
            source, path = "npz", Path("private.npz")
        if private is not None:  # the user's own images, read by the owner as its owner.toml says
            config = OwnerConfig(
                owner_id="simulated-owner",
                data_source=private.kind,
                data_path=Path(private.path).resolve(),
                aux_path=Path("aux.npz"),
                ledger_path=Path("ledger.sqlite"),
                epsilon=epsilon,
                delta=delta,
                limits=limits or Limits(),
                image_size=private.image_size,
                channels=private.channels,
                resize=private.resize,
                data_split=private.split,
            )
            write_config(config_path, config)
            continue
        config = OwnerConfig(
            owner_id="simulated-owner" if num_owners == 1 else f"owner-{i + 1}",
            data_source=source,
            data_path=path,
            aux_path=Path("aux.npz"),
            ledger_path=Path("ledger.sqlite"),
            epsilon=epsilon,
            delta=delta,
            normalization=FASHION_MNIST_NORMALIZATION,
            limits=limits or Limits(),
            service=services[i] if services else ServiceConfig(),
        )
        write_config(config_path, config)
    return paths


def simulate(
    out: Path,
    cfg: DistillerConfig,
    aux_per_class: int = 100,
    data_root: str | None = None,
    private_subset: int | None = None,
    show_progress: bool = True,
    download: bool = False,
    num_owners: int = 1,
    limits: Limits | None = None,
    user: UserSets | None = None,
) -> dict:
    """``user``: the user's own private, auxiliary and test sets instead of Fashion-MNIST (one owner)."""
    out = Path(out)
    if user is not None:
        if num_owners != 1 or private_subset:
            raise ValueError("--data runs one simulated owner on the whole set (no --owners, no --private-subset)")
        aux, held_out = user.load_public(show_progress)
        if cfg.sampling.subspace_dim > len(aux) - 1:
            raise ValueError(
                f"subspace dimension {cfg.sampling.subspace_dim} needs at least {cfg.sampling.subspace_dim + 1} "
                f"auxiliary images, the auxiliary set has {len(aux)}: give a larger --aux or a smaller --subspace-dim"
            )
    else:
        aux, held_out = public_split(aux_per_class, data_root, download)
    private = user.private if user is not None else None
    paths = prepare_owners(
        out,
        aux,
        cfg.epsilon,
        cfg.delta,
        data_root,
        private_subset,
        num_owners,
        cfg.sampling.seed,
        limits=limits,
        private=private,
    )
    configs = [OwnerConfig.load(p) for p in paths]
    if configs[0].epsilon != cfg.epsilon or configs[0].delta != cfg.delta:
        cfg = replace(cfg, epsilon=configs[0].epsilon, delta=configs[0].delta)
    # An in-process owner computes one request at a time and has no transport latency to hide.
    cfg = replace(cfg, sampling=replace(cfg.sampling, in_flight=1))
    services = [OwnerService(c) for c in configs]
    try:
        clients = [OwnerClient(s.call, c.owner_id) for s, c in zip(services, configs, strict=True)]
        return run_distillation(clients, cfg, out / "distiller", aux, held_out, show_progress)
    finally:
        for s in services:
            s.close()
