"""Hardware options: a network is the same function of its seed on every device, device names are
checked, bf16 passes keep the sensitivity bound, and cache-sized CPU chunks change no gradient.

The CUDA comparisons run only where torch sees a GPU; everything else runs on any CPU (AMX or not:
bf16 autocast falls back to slower kernels where the CPU lacks it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import shared.compute.device as device_module
import shared.compute.networks as networks
from distiller_node.config import OptimisationConfig
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, initial_state
from distiller_node.signal_store import Signals
from owner_node.config import OwnerConfig, write_config
from owner_node.mechanism import clean_class_sums
from owner_node.service import OwnerService
from shared.compute.choices import DEFAULT_PRECISION
from shared.compute.device import autocast, resolve_device, resolve_precision, use_device
from shared.compute.networks import NetworkSpec, build_network, freeze, pass_chunk
from shared.compute.statistic import per_example_statistic, public_subspace
from shared.compute.subspace import basis_fingerprint, fingerprint_discrepancy
from tests.conftest import make_owner_config

SPEC = NetworkSpec(width=16, depth=2, channels=1, image_size=16, num_classes=4)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_network_is_drawn_by_the_cpu_generator_whatever_the_device() -> None:
    a = build_network(SPEC, 7)
    b = build_network(SPEC, 7, "cpu")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    # The global generator is neither used nor moved.
    state = torch.random.get_rng_state()
    build_network(SPEC, 8, torch.device("cpu"))
    assert torch.equal(state, torch.random.get_rng_state())


@CUDA
def test_the_same_seed_gives_the_same_weights_and_bases_on_a_gpu() -> None:
    cpu_net, gpu_net = freeze(build_network(SPEC, 3)), freeze(build_network(SPEC, 3, "cuda"))
    for p, q in zip(cpu_net.parameters(), gpu_net.parameters(), strict=True):
        assert p.device.type == "cpu" and q.device.type == "cuda"
        assert torch.equal(p, q.cpu())
    use_device("cuda")  # TF32 off, cuDNN autotuning off
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    aux = torch.randn(60, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    k = 20
    cpu_basis = public_subspace(cpu_net, aux, k)
    gpu_basis = public_subspace(gpu_net, aux.cuda(), k)
    # The tolerance the owner and the distiller already hold each other to (shared.compute.subspace).
    assert fingerprint_discrepancy(basis_fingerprint(cpu_basis), basis_fingerprint(gpu_basis)) <= 1e-3


def test_device_names_are_checked() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unsupported device|unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="precision"):
        use_device("cpu", "fp8")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(torch.device("cpu"), "Auto ")
    _, described = use_device("cpu", "bf16")
    assert described["device"] == "cpu" and described["precision"] == "bf16"


def test_owner_compute_settings_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    config = replace(make_owner_config(tmp_path / "o"), device="cpu", precision="bf16")
    write_config(tmp_path / "owner.toml", config)
    loaded = OwnerConfig.load(tmp_path / "owner.toml")
    assert (loaded.device, loaded.precision) == ("cpu", "bf16")
    assert make_owner_config(tmp_path / "p").precision == "auto"  # the default, read from shared.compute.choices
    with pytest.raises(ValueError, match="precision"):
        replace(config, precision="half")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            OwnerService(replace(config, device="cuda"))


def test_bf16_statistics_stay_clipped_and_close_to_float32() -> None:
    g = torch.Generator().manual_seed(4)
    net = freeze(build_network(SPEC, 1))
    images = torch.randn(40, 1, 16, 16, generator=g)
    subspace = public_subspace(net, torch.randn(50, 1, 16, 16, generator=g), 8)
    args = (net, subspace, images, 5, "crop_flip", 1.0, None, "features")
    full = per_example_statistic(*args, precision="float32")
    half = per_example_statistic(*args, precision="bf16")
    assert half.dtype == torch.float64
    assert torch.linalg.vector_norm(half, dim=1).max() <= 1.0 + 1e-9  # clipped after the bf16 pass
    assert (half - full).norm() <= 0.05 * full.norm()
    # a 1e30-scaled image still adds at most C to its class sum
    labels = torch.zeros(40, dtype=torch.long)
    base = clean_class_sums(net, subspace, images, labels, 5, "crop_flip", 1.0, 4, precision="bf16")
    extreme = torch.cat([images, 1e30 * torch.ones(1, 1, 16, 16)])
    more = clean_class_sums(
        net, subspace, extreme, torch.zeros(41, dtype=torch.long), 5, "crop_flip", 1.0, 4, precision="bf16"
    )
    assert (more - base).norm() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(False, False, "float32"), (False, True, "bf16"), (True, False, "bf16"), (True, True, "bf16")],
)
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, amx, avx512_bf16, expected):
    """The default: bf16 on AVX512-BF16 or AMX CPUs (accuracy shown equal, README), float32 where bf16
    would be emulated; the choice and its reason are reported, and autocast follows it."""
    assert DEFAULT_PRECISION == "auto"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    device_module.native_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        resolved, why = resolve_precision(cpu, "auto")
        assert resolved == expected and why.startswith("auto: ")
        if expected == "bf16":
            assert ("AMX" in why, "AVX512-BF16" in why) == (amx, avx512_bf16)
        else:
            assert "neither AVX512-BF16 nor AMX" in why
        _, described = use_device("cpu", "auto")
        assert described["precision"] == expected and described["precision_because"] == why
        with autocast(cpu, "auto"):
            assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
        # An explicit choice is kept whatever the CPU has.
        assert resolve_precision(cpu, "float32") == ("float32", "asked for")
        assert resolve_precision(cpu, "bf16") == ("bf16", "asked for")
    finally:
        device_module.native_bf16.cache_clear()


def test_autocast_is_a_no_op_in_float32() -> None:
    with autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")


def test_cache_sized_cpu_chunks_change_neither_loss_nor_gradient(monkeypatch) -> None:
    wide = replace(SPEC, width=64)
    assert pass_chunk(wide, "cpu", 1024, backward=True, most=1024) < pass_chunk(wide, "cuda", 1024, most=1024)
    g = torch.Generator().manual_seed(1)
    signals = Signals(torch.randn(1, 4, 6, generator=g) * 3, torch.full((4,), 10.0, dtype=torch.float64), [0], [9])
    aux = torch.randn(30, 1, 16, 16, generator=g)

    def gradient() -> tuple[float, torch.Tensor]:
        distiller = Distiller(signals, NetworkCache(wide, aux, 6, 1 << 28), "crop_flip", 1.0, OptimisationConfig(ipc=5))
        images = initial_state(4, 5, (1, 16, 16), 0).images.requires_grad_(True)
        loss = distiller.step(images, torch.arange(4).repeat_interleave(5), 0)
        return loss, images.grad

    monkeypatch.setattr(networks, "CPU_BACKWARD_CACHE_MB", 1e6)
    loss_one, grad_one = gradient()
    monkeypatch.setattr(networks, "CPU_BACKWARD_CACHE_MB", 2 * wide.activation_bytes / 2**20)  # 2 images a chunk
    loss_chunked, grad_chunked = gradient()
    assert loss_chunked == pytest.approx(loss_one, rel=1e-5)
    assert (grad_chunked - grad_one).abs().max() <= 1e-4 * grad_one.abs().max()


def test_the_paper_preset_carries_the_published_settings() -> None:
    from deploy.presets import PRESETS
    from deploy.run_settings import RunSettings

    cfg = RunSettings(preset="paper", precision="bf16").distiller_config()
    assert (cfg.sampling.draws, cfg.optimisation.iterations, cfg.sampling.width) == (1000, 200_000, 128)
    assert (cfg.sampling.subspace_dim, PRESETS["paper"]["aux_per_class"], cfg.sampling.group_size) == (200, 100, 50)
    assert cfg.optimisation.precision == cfg.evaluation.precision == "bf16"
    # every draw's network (0.3 M parameters) and basis (6,272 x 200 floats) stay cached: about 6.2 MB each
    assert cfg.optimisation.cache_mb >= 1000 * 6.5


def test_the_speed_baseline_computes_the_same_statistic_as_the_project() -> None:
    """The side-by-side speed ratio compares equal work: the straightforward implementation's clipped,
    projected embeddings are this project's (its SVD basis equals ours up to each component's sign)."""
    from benchmarks.baseline import StraightforwardDistillation

    g = torch.Generator().manual_seed(6)
    aux, images = torch.randn(40, 1, 16, 16, generator=g), torch.randn(12, 1, 16, 16, generator=g)
    net = freeze(build_network(SPEC, 2))
    ours = public_subspace(net, aux, 6)
    base = StraightforwardDistillation(SPEC, aux, 6)
    base.draw(2, 0, "none", [images], group=12, g=torch.Generator().manual_seed(0))
    _, mean, basis = base.kept[0]
    signs = torch.sign((basis * ours.basis).sum(0))
    assert torch.allclose(basis * signs, ours.basis, atol=1e-4)
    with torch.no_grad():
        theirs = base.project(net, mean, basis, images) * signs.double()
    mine = per_example_statistic(net, ours, images, 0, "none", 1.0)
    assert torch.allclose(theirs, mine, atol=1e-4)
