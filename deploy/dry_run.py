"""``--dry-run``: a run's plan against its owners, printed, with nothing reserved, released or spent.

The owners are started in this process from their own owner.toml, each on a scratch copy of its
ledger (``ledger-backup``'s consistent snapshot), so their budget left is the real one and nothing
they do touches the real ledger. An owner that publishes DP class counts it has not drawn
yet would have to spend on them at start-up; here it publishes its true counts instead, which only
the person running the dry run sees (the owner's own operator, in ``simulate`` and ``deploy-local``).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from distiller_node.client import OwnerClient
from distiller_node.config import DistillerConfig
from distiller_node.pipeline import run_distillation
from owner_node.class_counts import COUNTS_RELEASE_ID
from owner_node.config import OwnerConfig
from owner_node.ledger import Ledger
from owner_node.ledger_backup import backup_ledger
from owner_node.service import OwnerService
from shared.images.image_set import ImageSet


def scratch_config(config: OwnerConfig, folder: Path) -> OwnerConfig:
    """``config`` with its ledger copied to ``folder`` (the real one only read), its image cache where it was."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "ledger.sqlite"
    if Path(config.ledger_path).exists():
        backup_ledger(config.ledger_path, copy)  # one consistent snapshot, safe while the owner serves
    scratch = replace(config, ledger_path=copy, image_cache=config.image_cache_dir)
    if config.class_counts == "dp":
        ledger = Ledger(copy)
        try:
            drawn = ledger.reply(COUNTS_RELEASE_ID) is not None
        finally:
            ledger.close()
        if not drawn:
            print(
                f"dry run: owner '{config.owner_id}' has not drawn its DP class counts yet; this plan uses its "
                "true counts (the real run's noisy ones differ a little)"
            )
            scratch = replace(scratch, class_counts="public")
    return scratch


def dry_run(owner_configs: list[Path], cfg: DistillerConfig, out: Path, aux: ImageSet, device: str = "cpu") -> dict:
    """Print the plan ``cfg`` would make with these owners (and resume from ``out``, if it holds a run)."""
    with tempfile.TemporaryDirectory(prefix="dpdistill-dry-run-") as tmp:
        configs = [scratch_config(OwnerConfig.load(p), Path(tmp) / f"owner-{i}") for i, p in enumerate(owner_configs)]
        services = [OwnerService(c) for c in configs]
        try:
            clients = [OwnerClient(s.call, c.owner_id) for s, c in zip(services, configs, strict=True)]
            return run_distillation(clients, cfg, out, aux, None, False, device=device, dry_run=True)
        finally:
            for s in services:
                s.close()
