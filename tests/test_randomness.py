"""The owner's privacy-critical randomness: a 256-bit CSPRNG per request, exact Poisson inclusion."""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np
import pytest
import torch

import owner_node.randomness as randomness
from owner_node.data import PrivateData
from owner_node.randomness import KEY_BITS, SecureRandom, inclusion_threshold
from owner_node.service import OwnerService
from shared.wire.messages import ErrorReply, FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, kip_request, random_image_set


class KeysDifferingAboveBit32:
    """Stands in for ``secrets.randbits``: every key differs from the others only above bit 32."""

    def __init__(self) -> None:
        self.base = 0x1234_5678_9ABC_DEF0 & 0xFFFF_FFFF
        self.calls: list[int] = []

    def __call__(self, k: int) -> int:
        self.calls.append(k)
        return self.base | ((len(self.calls) + 1) << 40)


def test_keys_differing_only_above_bit_32_give_different_noise() -> None:
    s = 0xDEAD_BEEF
    a = SecureRandom(key=s).normal((1000,), 1.0)
    b = SecureRandom(key=s ^ (1 << 40)).normal((1000,), 1.0)
    c = SecureRandom(key=s ^ (1 << 200)).normal((1000,), 1.0)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    # MT19937 (what the owner used before) keeps the low 32 bits only: these were all one stream.
    assert torch.equal(
        torch.randn(5, generator=torch.Generator().manual_seed(s)),
        torch.randn(5, generator=torch.Generator().manual_seed(s ^ (1 << 40))),
    )


@pytest.mark.parametrize("signal", ["features", "kip"])
def test_releases_whose_keys_differ_above_bit_32_get_different_noise(owner, monkeypatch, signal: str) -> None:
    """Fails with any generator that keeps 32 bits of its seed: the release would repeat exactly."""
    keys = KeysDifferingAboveBit32()
    monkeypatch.setattr(secrets, "randbits", keys)
    # Every record sampled (q = 1), so the clean sums are equal and only the noise can differ.
    request = feature_request(owner, expected_group_size=1e9, subspace_dim=4, signal=signal, augmentation="none")
    first = owner.mechanism.release(request).noisy_sums
    second = owner.mechanism.release(request).noisy_sums
    assert keys.calls, "the mechanism drew no key from the OS"
    assert not np.array_equal(first, second)


def test_every_key_has_at_least_128_bits_and_comes_from_the_os(owner, monkeypatch) -> None:
    asked: list[int] = []
    real = secrets.randbits

    def spy(k: int) -> int:
        asked.append(k)
        return real(k)

    monkeypatch.setattr(secrets, "randbits", spy)
    owner.mechanism.release(feature_request(owner))
    owner.kip.run(kip_request(num_steps=1))
    assert len(asked) >= 4  # a sampling and a noise stream for each of the two requests
    assert min(asked) >= 128 and KEY_BITS == 256


def test_key_is_not_kept_by_the_mechanism(owner) -> None:
    """Nothing the service holds (and so nothing it could log or return) contains a stream or its key."""
    owner.mechanism.release(feature_request(owner))
    for obj in (owner, owner.mechanism, owner.kip, owner.data):
        assert not any(isinstance(v, SecureRandom) for v in vars(obj).values())


def test_inclusion_frequency_matches_q_at_one_in_a_million() -> None:
    q, n, chunk = 1e-6, 100_000_000, 10_000_000
    stream = SecureRandom()
    hits = sum(int(stream.bernoulli(chunk, q).sum()) for _ in range(n // chunk))
    expected = q * n  # 100, binomial std 10
    assert abs(hits - expected) < 5 * np.sqrt(expected)


def test_inclusion_threshold_is_exact_and_never_rounds_q_up() -> None:
    for q in (1e-8, 1e-6, 0.0083, 1 / 3, 0.5, 0.999999):
        t = inclusion_threshold(q)
        assert t <= q * 2**64 < t + 1  # probability t / 2^64: q rounded down by less than 2^-64
    # float32 rand() < q (the old sampler) rounded q = 1e-8 up to a multiple of 2^-24: about 6x too often.
    assert float(np.float32(2**-24)) / 1e-8 > 5
    assert inclusion_threshold(1.0) == 2**64 and inclusion_threshold(0.0) == 0
    assert bool(SecureRandom().bernoulli(1000, 1.0).all()) and not bool(SecureRandom().bernoulli(1000, 0.0).any())


@pytest.mark.parametrize("q", [1e-25, -0.1, 1.5, float("nan")])
def test_a_rate_the_sampler_cannot_represent_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="sampling rate|below 2\\^-64"):
        inclusion_threshold(q)


def test_owner_refuses_an_unrepresentable_rate_before_spending(owner) -> None:
    reply = decode(owner.handle(encode(feature_request(owner, expected_group_size=1e-18))))
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_request" and "2^-64" in reply.message
    assert owner.ledger.events() == []


def test_poisson_sample_uses_the_rates_per_class() -> None:
    data = PrivateData.from_image_set(random_image_set(4000, seed=3), (0.5, 0.5))
    counts = np.zeros(4)
    for _ in range(20):
        index = data.poisson_sample([0.5, 0.1, 0.0, 1.0], SecureRandom())
        counts += np.bincount(data.labels[index].numpy(), minlength=4)
    n = 20 * 1000
    assert counts[2] == 0 and counts[3] == n
    assert abs(counts[0] - 0.5 * n) < 5 * np.sqrt(0.25 * n)
    assert abs(counts[1] - 0.1 * n) < 5 * np.sqrt(0.09 * n)


def test_csprng_normals_have_the_requested_std() -> None:
    x = SecureRandom().normal((200_000,), 2.5)
    assert x.dtype == torch.float64
    assert abs(float(x.mean())) < 4 * 2.5 / np.sqrt(x.numel())
    assert abs(float(x.std()) / 2.5 - 1) < 4 / np.sqrt(2 * x.numel())


def test_exact_sampler_adds_noise_of_std_sigma_c() -> None:
    values = torch.full((20_000,), 3.0, dtype=torch.float64)
    noisy = randomness.noisy(values, 1.5, "exact", SecureRandom())
    r = (noisy - values).numpy()
    assert abs(r.mean()) < 4 * 1.5 / np.sqrt(r.size)
    assert abs(r.std() / 1.5 - 1) < 4 / np.sqrt(2 * r.size)


def test_owner_with_exact_noise_releases_and_says_so(owner_config) -> None:
    service = OwnerService(replace(owner_config, noise_sampler="exact"))
    try:
        sigma = 2.0
        request = feature_request(service, expected_group_size=1e9, noise_multiplier=sigma, draws=3)
        first = decode(service.handle(encode(request)))
        again = decode(service.handle(encode(replace(request, request_id="r2"))))
        assert isinstance(first, FeatureReply) and isinstance(again, FeatureReply)
        # Same clean sums (q = 1, same seeds); the difference of two releases is noise of std sigma*C*sqrt(2).
        diff = (first.noisy_sums - again.noisy_sums).ravel()
        assert abs(diff.std() / (sigma * np.sqrt(2)) - 1) < 0.35
        assert service.describe().noise_sampler == "exact"
        assert service.budget().noise_sampler == "exact"
    finally:
        service.close()


def test_unknown_noise_sampler_is_refused_at_config_load(owner_config) -> None:
    with pytest.raises(ValueError, match="noise"):
        replace(owner_config, noise_sampler="mersenne")
