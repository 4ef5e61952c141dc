"""Signal kinds: what a ``FeatureRequest`` asks the owner to release, one object per kind behind one interface.

A kind states how long its per-example vector is, how long one released class sum is for a
projection dimension k, what the owner refuses in a request for it, how it describes images, how
its public basis is fitted from the auxiliary set, and what the privacy report says it releases.
The owner (validation, mechanism, audit), the distiller and the report ask the kind instead of
comparing names, so a new kind is one subclass here and one ``register`` call.

Importing this module loads no torch (the wire checks a request's signal against the registry):
the arithmetic uses ``shared.network_spec`` and ``shared.kip_shapes``, and the methods that
compute import their maths when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from shared.kip_shapes import SCATTER_J, feature_dim, moment_dim, scatterable
from shared.network_spec import NetworkSpec, num_parameters

if TYPE_CHECKING:
    import torch
    from torch import nn

    from shared.subspace import Subspace


class SignalKind:
    """The per-example statistic a release sums: describe -> project (-> expand) -> clip (``shared.statistic``)."""

    name: ClassVar[str]
    # The per-example statistic as the privacy report states it (what is clipped to C).
    words: ClassVar[str]
    # False: the request's network fields only describe the images; the statistic needs no network,
    # so one public basis serves every draw and it is computed on the CPU.
    uses_network: ClassVar[bool] = True
    # Describing an image needs its label (and fitting the basis the auxiliary set's labels).
    needs_labels: ClassVar[bool] = False
    needs_projection: ClassVar[bool] = False  # subspace_dim 0 (no projection) is refused
    augmentable: ClassVar[bool] = True  # False: matched on the images themselves (augmentation "none")
    reduced_precision: ClassVar[bool] = False  # the network pass may autocast ("bf16", ``shared.device``)

    def signal_dim(self, spec: NetworkSpec) -> int:
        """Length of the unprojected per-example vector."""
        raise NotImplementedError

    def released_dim(self, spec: NetworkSpec, k: int) -> int:
        """Length of one released class sum for projection dimension ``k`` (0: no projection)."""
        if self.needs_projection and k < 1:
            raise ValueError(f"{self.name} signals need a projection (subspace_dim >= 1)")
        return k or self.signal_dim(spec)

    def refusal(self, spec: NetworkSpec, k: int) -> str | None:
        """Why the owner refuses a request for this kind with this network and ``k`` (None: it does not)."""
        if self.needs_projection and k < 1:
            return f"{self.name} signals need a projection: subspace_dim must be at least 1"
        return None

    def describe(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The unprojected per-example vectors [n, signal_dim]; differentiable in ``images``."""
        raise NotImplementedError

    def public_basis(
        self, net: nn.Module | None, aux_images: torch.Tensor, k: int, aux_labels: torch.Tensor | None
    ) -> Subspace:
        """The public projection: top-``k`` PCA of the auxiliary set's vectors (no augmentation)."""
        raise NotImplementedError

    def expand(self, projected: torch.Tensor) -> torch.Tensor:
        """What is clipped, from the projected vectors (the identity unless a kind expands them)."""
        return projected


class FeatureSignal(SignalKind):
    name = "features"
    words = "the embedding of a seeded public network"
    reduced_precision = True

    def signal_dim(self, spec: NetworkSpec) -> int:
        return spec.embedding_dim

    def describe(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return net.embed(images)

    def public_basis(
        self, net: nn.Module | None, aux_images: torch.Tensor, k: int, aux_labels: torch.Tensor | None
    ) -> Subspace:
        from shared.networks import embed_images
        from shared.subspace import fit_subspace

        return fit_subspace(embed_images(net, aux_images), k)


class GradientSignal(SignalKind):
    name = "gradients"
    words = "the flattened per-example gradient of a seeded public network's classification loss"
    needs_labels = True

    def signal_dim(self, spec: NetworkSpec) -> int:
        return num_parameters(spec)

    def describe(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        from shared.gradients import per_example_gradients

        if labels is None:
            raise ValueError("gradient signals need labels")
        return per_example_gradients(net, images, labels)

    def public_basis(
        self, net: nn.Module | None, aux_images: torch.Tensor, k: int, aux_labels: torch.Tensor | None
    ) -> Subspace:
        from shared.gradients import gradients_in_chunks
        from shared.subspace import fit_subspace

        if aux_labels is None:
            raise ValueError("a gradient subspace needs the auxiliary set's labels")
        return fit_subspace(gradients_in_chunks(net, aux_images, aux_labels), k)


class KipSignal(SignalKind):
    """Decoupled DP-KIP: scattering features (no network), projected, expanded into packed moments."""

    name = "kip"
    words = (
        "the packed first and second moments (z, tri(z z^T)) of its scattering features z, projected onto a "
        "public principal subspace of the auxiliary set's scattering features"
    )
    uses_network = False
    needs_projection = True
    augmentable = False

    def signal_dim(self, spec: NetworkSpec) -> int:
        return feature_dim((spec.channels, spec.image_size, spec.image_size))

    def released_dim(self, spec: NetworkSpec, k: int) -> int:
        super().released_dim(spec, k)  # refuses k < 1
        return moment_dim(k)

    def refusal(self, spec: NetworkSpec, k: int) -> str | None:
        refused = super().refusal(spec, k)
        if refused is None and not scatterable(spec.image_size):
            return (
                f"scattering (J = {SCATTER_J}) needs an image size divisible by {2**SCATTER_J}, got {spec.image_size}"
            )
        return refused

    def describe(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        from shared.scattering import scattering_features

        return scattering_features(images)

    def public_basis(
        self, net: nn.Module | None, aux_images: torch.Tensor, k: int, aux_labels: torch.Tensor | None
    ) -> Subspace:
        from shared.moments import kip_projection
        from shared.scattering import scattering_features

        return kip_projection(scattering_features(aux_images), k)

    def expand(self, projected: torch.Tensor) -> torch.Tensor:
        from shared.moments import pack_moments

        return pack_moments(projected)


_KINDS: dict[str, SignalKind] = {}


def register(kind: SignalKind) -> SignalKind:
    """Make ``kind`` known by its name to requests, the owner, the distiller and the wire."""
    if kind.name in _KINDS:
        raise ValueError(f"signal kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def signal_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_signal_kind(name: str) -> SignalKind:
    """The registered kind called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown signal kind {str(name)[:32]!r}; known: {', '.join(_KINDS)}") from None


for _kind in (FeatureSignal(), GradientSignal(), KipSignal()):
    register(_kind)
