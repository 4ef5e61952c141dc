"""Issue 28.2: a new signal kind is one class and one registration; nothing else names it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distiller_node.methods import SignalMatching, distillation_method
from owner_node.service import OwnerService
from shared import signals
from shared.messages import ErrorReply, FeatureReply
from shared.network_spec import NetworkSpec
from shared.protocol import decode, encode
from shared.signals import SignalKind, get_signal_kind, register
from shared.statistic import per_example_statistic, public_subspace
from tests.conftest import SPEC, feature_request, make_owner_config


class PixelSignal(SignalKind):
    """The images' own pixels: a kind no module of the project knows by name."""

    name = "pixels"
    words = "the image's pixels"
    uses_network = False

    def signal_dim(self, spec: NetworkSpec) -> int:
        return spec.channels * spec.image_size**2

    def describe(self, net, images: torch.Tensor, labels) -> torch.Tensor:
        return images.flatten(1)

    def public_basis(self, net, aux_images: torch.Tensor, k: int, aux_labels):
        from shared.subspace import fit_subspace

        return fit_subspace(aux_images.flatten(1), k)


@pytest.fixture
def pixels(monkeypatch: pytest.MonkeyPatch) -> SignalKind:
    monkeypatch.setattr(signals, "_KINDS", dict(signals._KINDS))  # registered for this test only
    return register(PixelSignal())


def test_a_registered_kind_is_released_by_the_owner_and_matched_by_the_distiller(tmp_path: Path, pixels) -> None:
    assert get_signal_kind("pixels") is pixels
    service = OwnerService(make_owner_config(tmp_path))
    try:
        request = feature_request(service, "p1", signal="pixels", augmentation="none")
        assert decode(encode(request)) == request  # the wire knows it
        reply = decode(service.handle(encode(request)))
        assert isinstance(reply, FeatureReply), reply
        assert reply.noisy_sums.shape == (2, 4, 6)
        unprojected = decode(service.handle(encode(feature_request(service, "p2", signal="pixels", subspace_dim=0))))
        assert unprojected.noisy_sums.shape == (2, 4, SPEC.channels * SPEC.image_size**2)
    finally:
        service.close()
    method = distillation_method("pixels")
    assert isinstance(method, SignalMatching) and "the image's pixels" in method.sensitivity
    images = torch.randn(5, SPEC.channels, SPEC.image_size, SPEC.image_size, generator=torch.Generator().manual_seed(0))
    basis = public_subspace(None, images, 3, "pixels")
    stats = per_example_statistic(None, basis, images * 100, 0, "none", 1.0, signal="pixels")
    assert stats.shape == (5, 3) and bool((torch.linalg.vector_norm(stats, dim=1) <= 1.0 + 1e-12).all())


def test_an_unknown_kind_is_refused_on_the_wire_and_by_the_owner(tmp_path: Path) -> None:
    service = OwnerService(make_owner_config(tmp_path))
    try:
        raw = service.handle(encode(feature_request(service, "x1", signal="pixels")))
        reply = decode(raw)
        assert isinstance(reply, ErrorReply) and "unknown signal kind 'pixels'" in reply.message
        assert service.ledger.rows() == []
    finally:
        service.close()
    with pytest.raises(ValueError, match="already registered"):
        register(get_signal_kind("features"))
