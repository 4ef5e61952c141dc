"""In-process simulation: owner nodes and one distiller node in a single process.

They meet only through encoded protocol messages (bytes in, bytes out) on the same transport
interface a gRPC channel or the Flower relay provides. This module imports both nodes, so it lives
outside both. ``prepare_owners`` also sets up the owners of the deployment-mode launcher.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from deploy.public_sets import PublicSets
from distiller_node.client import OwnerClient
from distiller_node.config import DistillerConfig
from distiller_node.pipeline import run_distillation
from owner_node.config import Limits, OwnerConfig, ServiceConfig, write_config
from owner_node.service import OwnerService
from shared.images.fashion_mnist import FASHION_MNIST_NORMALIZATION, load_fashion_mnist
from shared.images.image_set import ImageSet
from shared.images.npz import save_npz
from shared.images.source import ImageSource, load_source


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
    owner_settings: dict | None = None,
) -> list[Path]:
    """Write each simulated owner's files (config, auxiliary set, its private share); existing ones are kept.

    The private data are ``private`` (the user's own images) or else Fashion-MNIST's training set.
    One owner on the whole set reads it where it is, as its owner.toml says. With several owners, or
    a subset, the set (or the subset) is split at random (public seed) into disjoint, equal shares,
    one npz per owner. ``owner_settings``: further ``OwnerConfig`` fields for every owner (the
    privacy unit, a held-out share, DP class counts); patient mode needs the user's CSV manifest
    read whole by one owner.
    """
    owner_settings = owner_settings or {}
    privacy_unit = owner_settings.get("privacy_unit", OwnerConfig.privacy_unit)
    dirs = owner_dirs(Path(out), num_owners)
    paths = [d / "owner.toml" for d in dirs]
    if all(p.exists() for p in paths):
        return paths
    shares: list[ImageSet] | None = None
    if privacy_unit == "patient" and (
        private is None or private.kind not in ("csv", "image-folder") or private_subset or num_owners > 1
    ):
        raise ValueError(
            "patient-level privacy needs --data as a CSV manifest with a patient column, or a folder of DICOM "
            "files or volumes (--patient-from dicom or file), read whole by one owner"
        )
    if private_subset or num_owners > 1:
        if private is not None:
            loaded = load_source(private, progress=False, cache=False)
            if len(set(loaded.files)) < len(loaded.files):
                raise ValueError(
                    "--data holds volumes read as slices: a volume's slices are one patient's, so they cannot be "
                    "split among owners or subsampled as images; use one owner with --unit patient"
                )
            train = loaded.data
        else:
            train = load_fashion_mnist(train=True, root=data_root)
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(train), generator=g)[: private_subset or len(train)]
        shares = [train.subset(part.sort().values) for part in index.chunk(num_owners)]
    for i, (owner_dir, config_path) in enumerate(zip(dirs, paths, strict=True)):
        owner_dir.mkdir(parents=True, exist_ok=True)
        save_npz(owner_dir / "aux.npz", aux)
        # Paths in owner.toml are relative to the file, so the owner folder can be moved as a whole.
        data: dict = {"data_source": "fashion-mnist", "data_path": Path(data_root).resolve() if data_root else None}
        if shares is not None:
            save_npz(owner_dir / "private.npz", shares[i])
            data = {"data_source": "npz", "data_path": Path("private.npz")}
        elif private is not None:
            data = {
                "data_source": private.kind,
                "data_path": Path(private.path).resolve(),
                "image_size": private.image_size,
                "channels": private.channels,
                "resize": private.resize,
                "data_split": private.split,
                "unreadable": private.reading.unreadable,
                "max_skipped": private.reading.max_skipped,
                "volume_axis": private.reading.volume_axis,
                "slice_range": private.reading.slice_range,
            }
        config = OwnerConfig(
            owner_id="simulated-owner" if num_owners == 1 else f"owner-{i + 1}",
            aux_path=Path("aux.npz"),
            ledger_path=Path("ledger.sqlite"),
            epsilon=epsilon,
            delta=delta,
            # Fashion-MNIST's published constants; a user's own images: the public auxiliary set's.
            normalization=FASHION_MNIST_NORMALIZATION if private is None else None,
            limits=limits or Limits(),
            service=services[i] if services else ServiceConfig(),
            **data,
            **owner_settings,
        )
        write_config(config_path, config)
    return paths


def check_subspace_fits(cfg: DistillerConfig, aux: ImageSet) -> None:
    """n auxiliary vectors span at most n - 1 directions: say so before any owner is asked."""
    k = cfg.sampling.subspace_dim
    if k > len(aux) - 1:
        raise ValueError(
            f"subspace dimension {k} needs at least {k + 1} auxiliary images, the auxiliary set has "
            f"{len(aux)}: give a larger auxiliary set or a smaller --subspace-dim"
        )


def simulate(
    out: Path,
    cfg: DistillerConfig,
    public: PublicSets | None = None,
    private: ImageSource | None = None,
    private_subset: int | None = None,
    show_progress: bool = True,
    num_owners: int = 1,
    limits: Limits | None = None,
    owner_settings: dict | None = None,
    device: str = "cpu",
    dry_run: bool = False,
) -> dict:
    """Owners and distiller in this process (``device``: the distiller's, and the simulated owners' unless
    ``owner_settings`` names one). ``public``: the distiller's sets (default: Fashion-MNIST's
    split); ``private``: one owner's own images instead of Fashion-MNIST's training set.
    ``dry_run``: print the plan and stop, spending nothing (``deploy.dry_run``)."""
    out = Path(out)
    public = public or PublicSets()
    aux, held_out = public.load(show_progress)
    check_subspace_fits(cfg, aux)
    paths = prepare_owners(
        out,
        aux,
        cfg.epsilon,
        cfg.delta,
        public.data_root,
        private_subset,
        num_owners,
        cfg.sampling.seed,
        limits=limits,
        private=private,
        owner_settings={"device": device} | (owner_settings or {}),
    )
    configs = [OwnerConfig.load(p) for p in paths]
    if configs[0].epsilon != cfg.epsilon or configs[0].delta != cfg.delta:
        cfg = replace(cfg, epsilon=configs[0].epsilon, delta=configs[0].delta)
    # An in-process owner computes one request at a time and has no transport latency to hide.
    cfg = replace(cfg, sampling=replace(cfg.sampling, in_flight=1))
    if dry_run:
        from deploy.dry_run import dry_run as plan_only

        return plan_only(paths, cfg, out / "distiller", aux, device)
    services = [OwnerService(c) for c in configs]
    try:
        clients = [OwnerClient(s.call, c.owner_id) for s, c in zip(services, configs, strict=True)]
        validation = public.load_validation(aux, show_progress)
        return run_distillation(clients, cfg, out / "distiller", aux, held_out, show_progress, validation, device)
    finally:
        for s in services:
            s.close()
