"""Networks and SER subspaces rebuilt from seeds on demand, kept within a memory bound (LRU).

The authors' code kept every network and basis in memory (about 9.5 GB at 1,000 draws); here
anything evicted is simply rebuilt from its seed and the public auxiliary set.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from shared.compute.networks import ConvNet, NetworkSpec, build_network, freeze
from shared.compute.signals import get_signal_kind
from shared.compute.statistic import public_subspace
from shared.compute.subspace import Subspace, basis_fingerprint
from shared.wire.messages import DEFAULT_SIGNAL


class NetworkCache:
    def __init__(
        self,
        spec: NetworkSpec,
        aux_images: torch.Tensor,
        subspace_dim: int | None,
        max_bytes: int,
        signal: str = DEFAULT_SIGNAL,
        aux_labels: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        self.spec = spec
        # Networks, bases and the auxiliary set they are fitted from live on the optimisation's device
        # (a kind without a network, such as decoupled KIP's scattering, stays on the CPU). Fingerprints
        # are always on the CPU.
        self.device = torch.device(device) if get_signal_kind(signal).uses_network else torch.device("cpu")
        self.aux_images = aux_images.to(self.device)
        self.aux_labels = aux_labels.to(self.device) if aux_labels is not None else None
        self.signal = signal
        self.subspace_dim = subspace_dim
        self.max_bytes = max_bytes
        # seed -> (network, basis, the basis's fingerprint, bytes held)
        self._entries: OrderedDict[int, tuple[ConvNet, Subspace | None, torch.Tensor | None, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, seed: int) -> tuple[ConvNet, Subspace | None]:
        net, sub, _ = self.get_with_fingerprint(seed)
        return net, sub

    def get_with_fingerprint(self, seed: int) -> tuple[ConvNet, Subspace | None, torch.Tensor | None]:
        """The network, its basis and ``basis_fingerprint`` of that basis (None without projection).

        The fingerprint is computed once per build (k numbers, kept with the basis), so checking a
        draw against the owner's costs nothing on a cache hit and one basis-sized product on a miss.
        """
        if seed in self._entries:
            self._entries.move_to_end(seed)
            self.hits += 1
            net, sub, fingerprint, _ = self._entries[seed]
            return net, sub, fingerprint
        self.misses += 1
        net = freeze(build_network(self.spec, seed, self.device))
        sub = (
            public_subspace(net, self.aux_images, self.subspace_dim, self.signal, self.aux_labels)
            if self.subspace_dim
            else None
        )
        fingerprint = basis_fingerprint(sub) if sub is not None else None
        size = sum(p.numel() * p.element_size() for p in net.parameters()) + (sub.nbytes() if sub else 0)
        size += fingerprint.numel() * fingerprint.element_size() if fingerprint is not None else 0
        self._entries[seed] = (net, sub, fingerprint, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, _, _, old) = self._entries.popitem(last=False)
            self._bytes -= old
        return net, sub, fingerprint

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
