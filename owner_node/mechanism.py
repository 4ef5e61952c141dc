"""The release mechanism (DESIGN section 3) for every signal kind (``shared.compute.signals``).

Per draw: rebuild the public network and its public subspace, Poisson-sample every class with the
owner's own generator, push the sample through augment -> describe (embedding or per-example loss
gradient) -> project -> clip, sum per class,
and add Gaussian noise of std sigma * C exactly once. The sample and the noise come from fresh
ChaCha20 streams keyed with 256 bits of OS entropy at each request (``owner_node.randomness``),
never from anything in the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from owner_node.data import PrivateData
from owner_node.randomness import SecureRandom, check_sampler, noisy
from shared.compute.networks import DEFAULT_ACTIVATION_BUDGET_MB, NetworkSpec, build_network, freeze, pass_chunk
from shared.compute.signals import get_signal_kind
from shared.compute.statistic import class_sums, per_example_statistic, public_subspace
from shared.compute.subspace import Subspace, basis_fingerprint
from shared.datasets import to_float
from shared.wire.messages import DEFAULT_SIGNAL, FeatureRequest


def clean_class_sums(
    net: torch.nn.Module,
    subspace: Subspace | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    augment_seed: int,
    strategy: str,
    clip_norm: float,
    num_classes: int,
    signal: str = DEFAULT_SIGNAL,
    normalization: tuple[float, float] | None = None,
    budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB,
    patients: torch.Tensor | None = None,
    precision: str = "float32",
) -> torch.Tensor:
    """Per-class sums of clipped statistics, float64 [num_classes, k]; the noise-free core.

    ``images`` are normalised floats, or uint8 with their ``normalization``: then each chunk is
    converted on its own, so a large sample of large images never exists in float32 at once.
    Chunks keep one pass's activations within ``budget_mb`` (``shared.compute.networks.image_chunk``).
    With ``patients`` (each row's patient), every patient's whole contribution is clipped to C as
    well (``patient_clipped_sums``), so one patient moves the sums by at most C.
    Each chunk goes to the network's device; the sums come back to the CPU in float64.
    """
    if images.dtype == torch.uint8 and normalization is None:
        raise ValueError("uint8 images need their normalization")
    k = get_signal_kind(signal).released_dim(net.spec, subspace.dim if subspace is not None else 0)
    total = torch.zeros(num_classes, k, dtype=torch.float64)
    device = next(net.parameters()).device
    chunk = pass_chunk(net.spec, device, budget_mb)
    rows = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], chunk):
            part = slice(i, i + chunk)
            x = images[part].to(device)
            x = to_float(x, normalization) if x.dtype == torch.uint8 else x
            y = labels[part].to(device)
            stats = per_example_statistic(net, subspace, x, augment_seed, strategy, clip_norm, y, signal, precision)
            if patients is None:
                total += class_sums(stats, y, num_classes).cpu()
            else:
                rows.append(stats.cpu())
    if patients is not None and rows:
        total = patient_clipped_sums(torch.cat(rows), labels, patients, num_classes, clip_norm)
    return total


def patient_clipped_sums(
    stats: torch.Tensor, labels: torch.Tensor, patients: torch.Tensor, num_classes: int, clip_norm: float
) -> torch.Tensor:
    """Per-class sums [num_classes, k] in which each patient's contribution is clipped to ``clip_norm``.

    A patient's contribution is its rows summed per class: a [num_classes, k] matrix, read as one
    vector whatever classes it touches, and scaled to L2 norm at most C. Adding or removing a patient
    (all its images, in every class) therefore moves the release by at most C. ``stats`` are the
    per-image statistics, already clipped (so finite).
    """
    k = stats.shape[1]
    cells, cell_of_row = torch.unique(patients * num_classes + labels, return_inverse=True)
    per_cell = torch.zeros(len(cells), k, dtype=torch.float64).index_add_(0, cell_of_row, stats.double())
    owners, owner_of_cell = torch.unique(cells // num_classes, return_inverse=True)
    norms = torch.zeros(len(owners), dtype=torch.float64).index_add_(0, owner_of_cell, per_cell.square().sum(1)).sqrt()
    scale = clip_norm / torch.clamp(norms, min=clip_norm)
    per_cell *= scale[owner_of_cell].unsqueeze(1)
    return torch.zeros(num_classes, k, dtype=torch.float64).index_add_(0, cells % num_classes, per_cell)


@dataclass(frozen=True)
class Release:
    """What one request releases: the noisy sums, and public fingerprints of the bases they were projected on."""

    noisy_sums: np.ndarray  # float32 [draws, classes, statistic_dim]
    basis_fingerprints: (
        np.ndarray
    )  # float32 [draws, k] (shared.compute.subspace.basis_fingerprint); k = 0: no projection


class FeatureMechanism:
    """Answers validated release requests (either signal kind) from the private data; knows nothing of budgets."""

    def __init__(
        self,
        data: PrivateData,
        aux_images: torch.Tensor,
        clip_norm: float,
        aux_labels: torch.Tensor | None = None,
        noise_sampler: str = "csprng",
        activation_budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB,
        device: torch.device | str = "cpu",
        precision: str = "float32",
    ):
        check_sampler(noise_sampler)
        self.activation_budget_mb = activation_budget_mb
        self.noise_sampler = noise_sampler
        self.data = data
        self.device = torch.device(device)
        self.precision = precision
        # The public auxiliary set lives where the networks run: every draw's subspace is fitted from it.
        self.aux_images = aux_images.to(self.device)
        self.aux_labels = aux_labels.to(self.device) if aux_labels is not None else None
        self.clip_norm = clip_norm
        # Kinds without a network: their public projection is identical for every draw, fitted once per k
        # (the last k asked for is kept).
        self._shared_projections: dict[tuple[str, int], Subspace] = {}

    def network_and_subspace(
        self, spec: NetworkSpec, seed: int, k: int, signal: str = DEFAULT_SIGNAL
    ) -> tuple[torch.nn.Module, Subspace | None]:
        """The public network and its public basis (None when ``k`` is 0: no projection)."""
        if not get_signal_kind(signal).uses_network:  # one projection for every draw, fitted on the CPU
            net = freeze(build_network(spec, seed))
            if k and (signal, k) not in self._shared_projections:
                # One kept at a time: requests alternating k refit it, they never accumulate bases.
                self._shared_projections.clear()
                self._shared_projections[signal, k] = public_subspace(net, self.aux_images.cpu(), k, signal)
            return net, self._shared_projections[signal, k] if k else None
        net = freeze(build_network(spec, seed, self.device))
        if k == 0:
            return net, None
        return net, public_subspace(net, self.aux_images, k, signal, self.aux_labels)

    def noise_std(self, request: FeatureRequest) -> float:
        """sigma * C per coordinate: the scale the accountant assumes (the audit's power test lowers it)."""
        return request.noise_multiplier * self.clip_norm

    def release(self, request: FeatureRequest, progress=None) -> Release:
        """Noisy sums [draws, classes, k] for a request that has already been validated and reserved,
        with the fingerprint of each draw's basis as built here (public: it depends on no private data)."""
        rates = self.data.sample_rates(request.expected_group_size)
        num_classes = len(self.data.class_names)
        sample_stream, noise_stream = SecureRandom(), SecureRandom()  # fresh 256-bit OS keys, never kept
        kind = get_signal_kind(request.signal)
        out = np.empty(
            (request.num_draws, num_classes, kind.released_dim(request.network, request.subspace_dim)), np.float32
        )
        prints = np.empty((request.num_draws, request.subspace_dim), dtype=np.float32)
        shared_print = None  # a kind without a network: one projection serves every draw, fingerprinted once
        for d, (net_seed, aug_seed) in enumerate(zip(request.network_seeds, request.augment_seeds, strict=True)):
            net, subspace = self.network_and_subspace(request.network, net_seed, request.subspace_dim, request.signal)
            if subspace is not None:
                if kind.uses_network or shared_print is None:
                    shared_print = basis_fingerprint(subspace).numpy()
                prints[d] = shared_print
            index = self.data.poisson_sample(rates, sample_stream)
            sums = clean_class_sums(
                net,
                subspace,
                self.data.images[index],
                self.data.labels[index],
                aug_seed,
                request.augmentation,
                self.clip_norm,
                num_classes,
                request.signal,
                self.data.normalization,
                self.activation_budget_mb,
                self.data.patients[index] if self.data.patients is not None else None,
                self.precision,
            )
            del subspace  # a gradient basis can be tens of MB; never hold two
            # Each draw's noise is drawn here, once; nothing ever draws it again (retries read the ledger).
            out[d] = noisy(sums, self.noise_std(request), self.noise_sampler, noise_stream).numpy()
            if progress is not None:
                progress(1)
        return Release(out, prints)
