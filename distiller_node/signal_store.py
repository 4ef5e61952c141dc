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

from shared.compute.subspace import FINGERPRINT_TOL, SubspaceMismatch, fingerprint_discrepancy
from shared.wire.messages import FeatureReply
from shared.wire.protocol import read_message


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
    # Per owner, the fingerprint of each draw's basis as that owner built it: float32 [D, f] (f = 0: no
    # projection); a row of NaN, or a [0, 0] array, where a reply stored before fingerprints has none.
    basis_fingerprints: tuple[np.ndarray, ...] = ()
    owner_names: tuple[str, ...] = ()  # for messages; owners are otherwise named by their index in the plan

    def check_basis(self, draw: int, own: torch.Tensor | None, tol: float = FINGERPRINT_TOL) -> None:
        """Refuse to use ``draw`` if an owner's basis for it is not the one this side built.

        ``own`` is ``shared.compute.subspace.basis_fingerprint`` of this side's basis (None: no projection).
        The sums of several owners are added, so every owner's fingerprint must agree.
        """
        mine = np.zeros(0, np.float32) if own is None else np.asarray(own, dtype=np.float32)
        for o, prints in enumerate(self.basis_fingerprints):
            theirs = prints[draw] if prints.shape[0] else None
            if theirs is None or (theirs.size and np.isnan(theirs).all()):
                continue  # a reply stored before replies carried fingerprints: nothing to compare
            gap = fingerprint_discrepancy(theirs, mine)
            if gap <= tol:
                continue
            name = self.owner_names[o] if o < len(self.owner_names) else f"#{o} of the plan"
            if theirs.shape != mine.shape:
                detail = (
                    f"the owner's fingerprint has {theirs.size} entries, this side's {mine.size} "
                    "(the subspace dimensions differ)"
                )
            else:
                at = int(np.argmax(np.abs(theirs.astype(np.float64) - mine)))
                detail = (
                    f"they differ by {gap:.3g} relative to their RMS (tolerance {tol:g}), most at entry {at}, "
                    f"which involves components {at} and {(at + 1) % max(1, mine.size)}"
                )
            raise SubspaceMismatch(
                f"draw {draw} (network seed {self.network_seeds[draw]}): owner {name} projected its release on "
                f"a different basis than the one this distiller builds; {detail}. Matching it would fit the "
                "synthetic images to a different statistic, so the optimisation stops here. Resume with bases "
                "built as the owner builds them (same auxiliary set and subspace_dim, same torch version, "
                "float32 on the CPU without TF32): the stored replies stay valid. If they cannot be made to "
                "agree (a near-tie among the auxiliary set's principal components), plan a new run with "
                "another subspace_dim or network seed."
            )


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
        return read_message(self._path(owner, batch))

    def load(
        self,
        num_owners: int,
        num_batches: int,
        network_seeds: list[int],
        augment_seeds: list[int],
        owner_names: list[str] | None = None,
    ) -> Signals:
        """Every owner's releases, added up: noisy sums and expected group sizes both sum over owners.

        Each owner's basis fingerprints are kept apart: every one must match the distiller's basis.
        """
        total_sums, total_counts = None, None
        prints = []
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
            prints.append(_stacked_fingerprints(replies, o))
        return Signals(
            torch.from_numpy(total_sums).float(),
            torch.from_numpy(total_counts),
            list(network_seeds),
            list(augment_seeds),
            tuple(prints),
            tuple(owner_names or ()),
        )


def _stacked_fingerprints(replies: list[FeatureReply], owner: int) -> np.ndarray:
    """One owner's fingerprints [D, f] in draw order; NaN rows for replies stored without any."""
    widths = {r.basis_fingerprints.shape[1] for r in replies if r.basis_fingerprints.shape[0]}
    if not widths:
        return np.zeros((0, 0), np.float32)
    if len(widths) > 1:
        raise RuntimeError(f"replies of owner {owner} carry basis fingerprints of different lengths {sorted(widths)}")
    (f,) = widths
    return np.concatenate(
        [
            r.basis_fingerprints
            if r.basis_fingerprints.shape[0]
            else np.full((r.noisy_sums.shape[0], f), np.nan, np.float32)
            for r in replies
        ]
    ).astype(np.float32, copy=False)
