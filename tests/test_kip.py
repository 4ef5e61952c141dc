"""DP-KIP on scattering features: exact per-example gradients, and the sensitivity and exactness
of the decoupled statistic. Image counts are tiny: scattering on a CPU costs about 1 ms per image."""

from __future__ import annotations

import math

import pytest
import torch

from shared.compute.kip import (
    SyntheticSolve,
    centred_one_hot,
    clipped_feature_gradient_sum,
    clipped_gradient_sum,
    decoupled_krr_loss,
    krr_loss,
    per_example_feature_gradients,
    per_example_image_gradients,
    psd_part,
    synthetic_labels,
)
from shared.compute.kip_shapes import feature_dim, moment_dim
from shared.compute.moments import KIP_TARGET_NORM, kip_projection, moment_k, pack_moments, unpack_moments
from shared.compute.scattering import scattering_features
from shared.compute.statistic import class_sums, per_example_statistic

CLASSES = 3
C = 1.0
WORST_RECORDS = {
    "huge": lambda shape: torch.full(shape, 1e6),
    "overflowing": lambda shape: torch.full(shape, 1e30),
    "inf": lambda shape: torch.full(shape, math.inf),
    "nan": lambda shape: torch.full(shape, math.nan),
    "mixed": lambda shape: torch.where(torch.arange(math.prod(shape)).reshape(shape) % 2 == 0, 1e20, -1e20),
}


def _images(n: int, seed: int, size: int = 28, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=g, dtype=dtype)


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) % CLASSES


def _synthetic(ipc: int, size: int = 28, dtype: torch.dtype = torch.float32):
    labels = synthetic_labels(ipc, CLASSES)
    return _images(len(labels), 100, size, dtype), centred_one_hot(labels, CLASSES)


# ---------------------------------------------------------------- scattering


def test_scattering_shape_determinism_and_chunking():
    x = _images(5, 0)
    phi = scattering_features(x)
    assert phi.shape == (5, 3969) == (5, feature_dim((1, 28, 28)))
    assert phi.dtype == torch.float32
    assert torch.equal(phi, scattering_features(x))
    assert torch.allclose(phi, scattering_features(x, chunk=2), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- synchronised DP-KIP


def _loop_gradients(images_s, y_s, phi_t, y_t, reg):
    """The reference: autograd through scattering on the loss of one private example at a time."""
    out = []
    for i in range(phi_t.shape[0]):
        x = images_s.detach().clone().requires_grad_(True)
        phi_s = scattering_features(x).to(torch.float64)
        loss = krr_loss(phi_s, y_s, phi_t[i : i + 1].to(torch.float64), y_t[i : i + 1], reg)
        (g,) = torch.autograd.grad(loss, x)
        out.append(g)
    return torch.stack(out)


@pytest.mark.parametrize("reg", [1e-6, 0.1])
def test_feature_gradients_match_autograd(reg):
    g = torch.Generator().manual_seed(1)
    phi_s = torch.randn(6, 20, generator=g, dtype=torch.float64)
    phi_t = torch.randn(4, 20, generator=g, dtype=torch.float64)
    y_s = centred_one_hot(synthetic_labels(2, CLASSES), CLASSES)
    y_t = centred_one_hot(_labels(4), CLASSES)
    closed = per_example_feature_gradients(SyntheticSolve.of(phi_s, y_s, reg), phi_t, y_t)
    for i in range(4):
        s = phi_s.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(krr_loss(s, y_s, phi_t[i : i + 1], y_t[i : i + 1], reg), s)
        assert torch.allclose(closed[i], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("examples_per_pass", [1, 2, 3])
def test_per_example_image_gradients_equal_a_loop_float64(examples_per_pass):
    images_s, y_s = _synthetic(ipc=1, dtype=torch.float64)
    private = _images(5, 7, dtype=torch.float64)
    phi_t, y_t = scattering_features(private), centred_one_hot(_labels(5), CLASSES)
    fast = per_example_image_gradients(images_s, y_s, phi_t, y_t, reg=1e-3, examples_per_pass=examples_per_pass)
    ref = _loop_gradients(images_s, y_s, phi_t, y_t, reg=1e-3)
    assert fast.shape == (5, 3, 1, 28, 28)
    assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-12 * ref.abs().max())


def test_per_example_image_gradients_equal_a_loop_float32():
    images_s, y_s = _synthetic(ipc=1)
    private = _images(4, 8)
    phi_t, y_t = scattering_features(private), centred_one_hot(_labels(4), CLASSES)
    fast = per_example_image_gradients(images_s, y_s, phi_t, y_t, reg=1e-3, examples_per_pass=2)
    ref = _loop_gradients(images_s, y_s, phi_t, y_t, reg=1e-3)
    assert torch.allclose(fast.double(), ref.double(), rtol=1e-4, atol=1e-5 * ref.abs().max())


@pytest.mark.parametrize("kind", sorted(WORST_RECORDS))
def test_synchronised_release_sensitivity(kind):
    """Adding any record moves the clipped gradient sum by at most C (a non-finite one by nothing)."""
    images_s, y_s = _synthetic(ipc=1)
    private = _images(3, 9)
    labels = _labels(3)
    record = WORST_RECORDS[kind]((1, 1, 28, 28))
    with_record = torch.cat([private[:1], record, private[1:]])
    with_labels = torch.cat([labels[:1], torch.tensor([2]), labels[1:]])

    def release(x, lab):
        return clipped_gradient_sum(images_s, y_s, scattering_features(x), centred_one_hot(lab, CLASSES), C, 1e-3)

    diff = release(with_record, with_labels) - release(private, labels)
    assert torch.isfinite(diff).all()
    assert float(torch.linalg.vector_norm(diff)) <= C * (1 + 1e-6)


# ---------------------------------------------------------------- decoupled DP-KIP


def test_moment_packing_preserves_norm_and_unpacks():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64)
    labels = _labels(4)
    packed = pack_moments(z)
    assert packed.shape == (4, moment_dim(5)) and moment_k(moment_dim(5)) == 5
    sq = (z * z).sum(1)
    assert torch.allclose(torch.linalg.vector_norm(packed, dim=1), torch.sqrt(sq**2 + sq))
    second, sums = unpack_moments(class_sums(packed, labels, CLASSES), 5)
    assert torch.allclose(second, z.T @ z)
    assert torch.allclose(sums, torch.zeros(CLASSES, 5, dtype=torch.float64).index_add(0, labels, z))
    with pytest.raises(ValueError):
        unpack_moments(torch.zeros(CLASSES, moment_dim(5) + 1), 5)


def test_kip_projection_is_public_and_scaled():
    aux = scattering_features(_images(12, 20, size=16))
    projection = kip_projection(aux, k=6)
    norms = torch.linalg.vector_norm(projection.project(aux), dim=1)
    assert float(norms.median()) == pytest.approx(KIP_TARGET_NORM, rel=1e-5)
    again = kip_projection(aux.clone(), k=6)
    assert torch.equal(again.basis, projection.basis) and again.scale == projection.scale


@pytest.mark.parametrize("kind", sorted(WORST_RECORDS))
def test_decoupled_release_sensitivity(kind):
    """The stated sensitivity: one added record changes the released class sums by at most C in L2."""
    projection = kip_projection(scattering_features(_images(12, 20, size=16)), k=6)
    private = _images(6, 21, size=16)
    labels = _labels(6)
    record = WORST_RECORDS[kind]((1, 1, 16, 16))
    with_record = torch.cat([private[:3], record, private[3:]])
    with_labels = torch.cat([labels[:3], torch.tensor([1]), labels[3:]])

    def release(x, lab):
        stats = per_example_statistic(None, projection, x, 0, "none", C, lab, "kip")
        return class_sums(stats, lab, CLASSES)

    diff = release(with_record, with_labels) - release(private, labels)
    assert torch.isfinite(diff).all()
    # Other rows move only by float32 rounding of batch-size-dependent kernels (about 1e-7 on AVX-512).
    rows = torch.linalg.vector_norm(diff, dim=1)
    assert float(rows[1]) <= C + 1e-5
    assert float(rows[torch.arange(CLASSES) != 1].max()) < 1e-5  # only the record's own class row moves


def test_decoupled_loss_from_exact_sums_equals_direct_loss():
    """Noise-free, unprojected, unclipped (huge C) sums reconstruct the direct KRR loss exactly."""
    images_s, y_s = _synthetic(ipc=2, size=16, dtype=torch.float64)
    private = _images(7, 30, size=16, dtype=torch.float64)
    labels = _labels(7)
    y_t = centred_one_hot(labels, CLASSES)
    phi_s, phi_t = scattering_features(images_s), scattering_features(private)
    k = phi_t.shape[1]
    second, sums = unpack_moments(class_sums(pack_moments(phi_t), labels, CLASSES), k)
    code = centred_one_hot(torch.arange(CLASSES), CLASSES)
    energy = float((y_t**2).sum())
    for reg in (1e-6, 0.1):
        direct = krr_loss(phi_s, y_s, phi_t, y_t, reg)
        rebuilt = decoupled_krr_loss(phi_s, y_s, second, sums, code, reg, energy)
        assert torch.allclose(rebuilt, direct, rtol=1e-8), (float(rebuilt), float(direct))
    # The gradient the distiller follows offline is the exact one as well.
    x = images_s.clone().requires_grad_(True)
    (g_direct,) = torch.autograd.grad(krr_loss(scattering_features(x), y_s, phi_t, y_t, 0.1), x)
    x = images_s.clone().requires_grad_(True)
    rebuilt = decoupled_krr_loss(scattering_features(x), y_s, second, sums, code, 0.1, energy)
    (g_rebuilt,) = torch.autograd.grad(rebuilt, x)
    assert torch.allclose(g_rebuilt, g_direct, rtol=1e-6, atol=1e-9 * g_direct.abs().max())


def test_psd_part_removes_negative_eigenvalues():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    p = psd_part(a + a.T)
    assert torch.linalg.eigvalsh(p).min() > -1e-10
    b = a @ a.T
    assert torch.allclose(psd_part(b), b)


def test_feature_space_variant_pulls_back_to_the_image_gradient():
    """Unclipped, J^T (sum of feature gradients) is the sum of the exact per-example image gradients."""
    images_s, y_s = _synthetic(ipc=1, dtype=torch.float64)
    private = _images(4, 40, dtype=torch.float64)
    phi_t, y_t = scattering_features(private), centred_one_hot(_labels(4), CLASSES)
    x = images_s.clone().requires_grad_(True)
    phi_s = scattering_features(x)
    feature_sum = clipped_feature_gradient_sum(phi_s.detach(), y_s, phi_t, y_t, 1e30, 1e-3)
    (pulled_back,) = torch.autograd.grad(phi_s, x, feature_sum)
    per_example = per_example_image_gradients(images_s, y_s, phi_t, y_t, reg=1e-3).sum(0)
    assert torch.allclose(pulled_back, per_example, rtol=1e-9, atol=1e-12 * per_example.abs().max())
    clipped = clipped_feature_gradient_sum(phi_s.detach(), y_s, phi_t, y_t, 0.01, 1e-3)
    assert float(torch.linalg.vector_norm(clipped)) <= 4 * 0.01 * (1 + 1e-9)
