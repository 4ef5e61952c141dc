"""Noise: right scale, drawn from the owner's entropy, once per release; retries are idempotent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from owner_node.mechanism import clean_class_sums
from shared.run_choices import SIGNALS
from shared.wire.messages import ErrorReply, FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request


@pytest.mark.parametrize("signal", SIGNALS)
def test_released_noise_has_std_sigma_c(owner, signal: str) -> None:
    # Sample rate 1 makes the clean sum deterministic, so noisy - clean is exactly the noise.
    sigma = 1.7
    request = feature_request(
        owner, draws=40, expected_group_size=1e9, noise_multiplier=sigma, subspace_dim=10, signal=signal
    )
    noisy = owner.mechanism.release(request).noisy_sums
    data = owner.mechanism.data
    residuals = []
    for d, (ns, ags) in enumerate(zip(request.network_seeds, request.augment_seeds, strict=True)):
        net, sub = owner.mechanism.network_and_subspace(request.network, ns, request.subspace_dim, signal)
        everyone = torch.arange(len(data.labels))
        images = data.float_images(everyone)
        clean = clean_class_sums(net, sub, images, data.labels, ags, request.augmentation, 1.0, 4, signal)
        residuals.append(noisy[d] - clean.numpy())
    r = np.concatenate([x.ravel() for x in residuals])  # 40 draws x 4 classes x 10 dims = 1600 values
    assert abs(r.mean()) < 4 * sigma / np.sqrt(r.size)
    # std of a sample std for n=1600 is about sigma/sqrt(2n) = 1.8%; allow 4 of those.
    assert abs(r.std() / sigma - 1) < 4 / np.sqrt(2 * r.size)


def test_new_id_same_seeds_gives_different_noise_even_with_global_seed_fixed(owner) -> None:
    torch.manual_seed(0)
    a = decode(owner.handle(encode(feature_request(owner, "first"))))
    torch.manual_seed(0)
    b = decode(owner.handle(encode(feature_request(owner, "second"))))
    assert isinstance(a, FeatureReply) and isinstance(b, FeatureReply)
    assert not np.allclose(a.noisy_sums, b.noisy_sums)


def test_same_id_gets_identical_answer_and_one_ledger_entry(owner) -> None:
    request = encode(feature_request(owner, "again"))
    first = owner.handle(request)
    second = owner.handle(request)
    assert first == second
    rows = owner.ledger.rows()
    assert len(rows) == 1 and rows[0].state == "released"
    assert owner.budget().num_draws == 2


def test_same_id_different_contents_is_refused_and_spends_nothing(owner) -> None:
    owner.handle(encode(feature_request(owner, "dup")))
    reply = decode(owner.handle(encode(feature_request(owner, "dup", network_seeds=(1, 2)))))
    assert isinstance(reply, ErrorReply) and reply.code == "id_conflict"
    assert owner.budget().num_draws == 2
