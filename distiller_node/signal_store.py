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
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:05d}.msg"

    def has(self, batch: int) -> bool:
        return self._path(batch).exists()

    def put(self, batch: int, raw_reply: bytes) -> None:
        atomic_write(self._path(batch), raw_reply)

    def get(self, batch: int) -> FeatureReply:
        return decode(self._path(batch).read_bytes())

    def load(self, num_batches: int, network_seeds: list[int], augment_seeds: list[int]) -> Signals:
        replies = [self.get(b) for b in range(num_batches)]
        sums = np.concatenate([r.noisy_sums for r in replies])
        if sums.shape[0] != len(network_seeds):
            raise RuntimeError(f"signal store holds {sums.shape[0]} draws, the plan {len(network_seeds)}")
        counts = {r.expected_counts for r in replies}
        if len(counts) != 1:
            raise RuntimeError("replies disagree on expected group sizes")
        return Signals(
            torch.from_numpy(sums).float(),
            torch.tensor(replies[0].expected_counts, dtype=torch.float64),
            list(network_seeds),
            list(augment_seeds),
        )
