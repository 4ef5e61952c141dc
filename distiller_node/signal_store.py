"""Durable store of the owner's replies: one file per request, written atomically.

Replies are kept exactly as received, so what the distiller optimises against can always be
checked against what the owner recorded. A reply is on disk before the next request goes out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.protocol import FeatureReply, decode


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass
class Signals:
    """All stored releases, in draw order."""

    noisy_sums: torch.Tensor  # float32 [D, C, k]
    expected_counts: torch.Tensor  # float64 [C]
    network_seeds: list[int]
    augment_seeds: list[int]


class SignalStore:
    """``signals/o<owner>/batch_<n>.msg``: owner index as in the plan, batch in draw order."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, owner: int, batch: int) -> Path:
        return self.folder / f"o{owner}" / f"batch_{batch:05d}.msg"

    def has(self, owner: int, batch: int) -> bool:
        return self._path(owner, batch).exists()

    def put(self, owner: int, batch: int, raw_reply: bytes) -> None:
        path = self._path(owner, batch)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, raw_reply)

    def get(self, owner: int, batch: int) -> FeatureReply:
        return decode(self._path(owner, batch).read_bytes())

    def load(self, num_owners: int, num_batches: int, network_seeds: list[int], augment_seeds: list[int]) -> Signals:
        """Every owner's releases, added up: noisy sums and expected group sizes both sum over owners."""
        total_sums, total_counts = None, None
        for o in range(num_owners):
            replies = [self.get(o, b) for b in range(num_batches)]
            sums = np.concatenate([r.noisy_sums for r in replies]).astype(np.float64)
            if sums.shape[0] != len(network_seeds):
                raise RuntimeError(
                    f"signal store holds {sums.shape[0]} draws of owner {o}, the plan {len(network_seeds)}"
                )
            counts = {r.expected_counts for r in replies}
            if len(counts) != 1:
                raise RuntimeError(f"replies of owner {o} disagree on expected group sizes")
            counts = np.asarray(replies[0].expected_counts, dtype=np.float64)
            total_sums = sums if total_sums is None else total_sums + sums
            total_counts = counts if total_counts is None else total_counts + counts
        return Signals(
            torch.from_numpy(total_sums).float(),
            torch.from_numpy(total_counts),
            list(network_seeds),
            list(augment_seeds),
        )
