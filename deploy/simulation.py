"""In-process simulation: one owner node and one distiller node in a single process.

The two meet only through encoded protocol messages (bytes in, bytes out), exactly what a network
transport would carry. This module imports both nodes, so it lives outside both.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from distiller_node.client import OwnerClient
from distiller_node.pipeline import DistillerConfig, run_distillation
from owner_node.config import Limits, OwnerConfig, write_config
from owner_node.service import OwnerService
from shared.datasets import ImageSet, load_fashion_mnist, save_npz, split_auxiliary


def prepare_owner(
    owner_dir: Path,
    aux: ImageSet,
    epsilon: float,
    delta: float,
    data_root: str | None,
    private_subset: int | None,
    seed: int = 0,
) -> Path:
    """Write the simulated owner's files (config, auxiliary set, optional private subset)."""
    owner_dir.mkdir(parents=True, exist_ok=True)
    config_path = owner_dir / "owner.toml"
    if config_path.exists():
        return config_path
    save_npz(owner_dir / "aux.npz", aux)
    # Paths in owner.toml are relative to the file, so the owner folder can be moved as a whole.
    source, path = "fashion-mnist", Path(data_root).resolve() if data_root else None
    if private_subset:
        train = load_fashion_mnist(train=True, root=data_root)
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(train), generator=g)[:private_subset].sort().values
        save_npz(owner_dir / "private_subset.npz", train.subset(index))
        source, path = "npz", Path("private_subset.npz")
    config = OwnerConfig(
        owner_id="simulated-owner",
        data_source=source,
        data_path=path,
        aux_path=Path("aux.npz"),
        ledger_path=Path("ledger.sqlite"),
        epsilon=epsilon,
        delta=delta,
        limits=Limits(),
    )
    write_config(config_path, config)
    return config_path


def simulate(
    out: Path,
    cfg: DistillerConfig,
    aux_per_class: int = 100,
    data_root: str | None = None,
    private_subset: int | None = None,
    show_progress: bool = True,
    download: bool = False,
) -> dict:
    out = Path(out)
    # With --download, torchvision fetches both splits into the cache, where the owner finds them.
    test = load_fashion_mnist(train=False, root=data_root, download=download)
    aux, held_out = split_auxiliary(test, aux_per_class)
    config_path = prepare_owner(
        out / "owner", aux, cfg.epsilon, cfg.delta, data_root, private_subset, cfg.sampling.seed
    )
    owner_cfg = OwnerConfig.load(config_path)
    if owner_cfg.epsilon != cfg.epsilon or owner_cfg.delta != cfg.delta:
        cfg = replace(cfg, epsilon=owner_cfg.epsilon, delta=owner_cfg.delta)
    service = OwnerService(owner_cfg)
    try:
        client = OwnerClient(service.handle)
        return run_distillation(client, cfg, out / "distiller", aux, held_out, show_progress)
    finally:
        service.close()
