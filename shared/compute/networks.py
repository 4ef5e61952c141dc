"""ConvNet family used for embeddings (owner and distiller) and for evaluation.

A network is a public part of a released statistic: both parties must rebuild the identical
network from an integer seed, so initialisation draws only from a private ``torch.Generator``
and never from the global RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# How much activation memory one chunk of images may take where the caller sets no budget.
from shared.compute.choices import DEFAULT_ACTIVATION_BUDGET_MB
from shared.wire.network_spec import ACTIVATION_MAPS, ARCHITECTURES, NetworkSpec, depth_for_image_size  # noqa: F401 (re-exported)


def image_chunk(spec: NetworkSpec, budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB, most: int = 128) -> int:
    """Images per pass so that one pass's activations stay within ``budget_mb`` (at least 1, at most ``most``).

    Every ConvNet pass over many images (owner's releases, subspaces, the distiller's loss, evaluation)
    goes through chunks of this size: GroupNorm has no batch statistics, so chunking changes no result.
    """
    return max(1, min(most, int(budget_mb * 2**20) // spec.activation_bytes))


# On a CPU a pass runs fastest when one chunk's activations stay near the last-level cache. Measured
# on this project's 2-core machine (width 128, 28 px, one thread): 1,000 images forward took 1.42 s
# in chunks of 64 and 1.81 s in one chunk of 256; forward and backward of 100 images 0.26 s in
# chunks of 20-25 and 0.41 s in one. These budgets (activation MB as ``activation_bytes`` counts
# them) give about those chunk sizes at any width and image size. A GPU wants large chunks instead.
CPU_FORWARD_CACHE_MB = 100
CPU_BACKWARD_CACHE_MB = 36


def pass_chunk(
    spec: NetworkSpec,
    device: torch.device | str,
    budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB,
    backward: bool = False,
    most: int = 1024,
) -> int:
    """Images per pass on ``device``: within the memory budget, and on a CPU also cache-sized."""
    chunk = image_chunk(spec, budget_mb, most)
    if torch.device(device).type == "cpu":
        chunk = min(chunk, image_chunk(spec, CPU_BACKWARD_CACHE_MB if backward else CPU_FORWARD_CACHE_MB, most))
    return chunk


def _pool_forward(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    weight = torch.full((channels, 1, 2, 2), 0.25, dtype=x.dtype, device=x.device)
    return F.conv2d(x, weight, stride=2, groups=channels)


def _pool_backward(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each input pixel of a 2x2 window gets a quarter of the window's gradient; a floored edge gets 0.

    Repeating the gradient beat ``avg_pool2d``'s backward and the expand-and-copy formulation, and
    oneDNN's transposed depthwise convolution (fast in float32 but not in bf16, and it raised a
    run's peak RSS by about 0.2 GB).
    """
    n, c, h, w = grad.shape
    extra = (height - 2 * h, width - 2 * w)
    spread = (grad * 0.25).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    return F.pad(spread, (0, extra[1], 0, extra[0])) if any(extra) else spread


class _CpuAvgPool2x2(torch.autograd.Function):
    """Forward as a depthwise convolution with weights 1/4 (1/4 is exact, so the same means), backward
    by spreading each gradient over its window; both written with differentiable ops, so gradients of
    gradients and ``torch.func.vmap`` (gradient signals) pass through."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _pool_forward(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (autograd's signature)
        ctx.size = inputs[0].shape[-2:]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return _pool_backward(grad, *ctx.size)


class AvgPool2x2(nn.Module):
    """2x2 average pooling with stride 2 (odd sides floored), as ``nn.AvgPool2d(2, 2)`` computes it.

    On a CPU, ``avg_pool2d``'s kernels are slow: on an AMD EPYC Zen 4 (2 threads, 25 images of
    128 x 28 x 28) its forward took 2.6 ms in float32 and 4.1 ms in bf16 against 1.8 and 0.8 ms as a
    depthwise convolution, its backward 6.2 ms in bf16 against 1.9 ms by repeating the gradient. A
    whole cached optimisation iteration gains 6% in float32 and 10% in bf16 (more on Zen 5). So
    passes that need gradients (optimisation, training, gradient signals) take this path; passes
    without them (the owner's feature releases, bases, predictions) keep ``avg_pool2d``: there the
    depthwise convolution raised the sampling stage's peak RSS by 0.3-0.5 GB (glibc keeping freed
    heap memory across oneDNN's allocations for Poisson-sized batches; a 30-draw run), for a few
    percent of a draw.
    Other devices keep ``avg_pool2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cpu_2d = x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] >= 2 and x.shape[-1] >= 2
        if not (cpu_2d and torch.is_grad_enabled()):
            return F.avg_pool2d(x, 2, 2)
        return _CpuAvgPool2x2.apply(x)


class ConvNet(nn.Module):
    """conv3x3 -> instance norm (GroupNorm, one group per channel) -> ReLU -> avg-pool, ``depth`` times."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_ch = spec.channels
        for _ in range(spec.depth):
            layers += [
                nn.Conv2d(in_ch, spec.width, kernel_size=3, padding=1),
                nn.GroupNorm(spec.width, spec.width, affine=True),
                nn.ReLU(inplace=True),
                AvgPool2x2(),
            ]
            in_ch = spec.width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(spec.embedding_dim, spec.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def init_parameters(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default layer initialisation, drawn from ``generator`` in a fixed order."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_network(spec: NetworkSpec, seed: int, device: torch.device | str | None = None) -> ConvNet:
    """The network for ``(spec, seed)``: identical on every machine, global RNG untouched.

    The weights are always drawn by the CPU generator and then moved to ``device``: a GPU's own
    generator would give other weights for the same seed, and the owner and the distiller must
    build the same network whatever hardware each has.
    """
    spec.validate()
    with torch.device("meta"):
        net = ConvNet(spec)
    net = net.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(int(seed))
    init_parameters(net, generator)
    return net if device is None or torch.device(device).type == "cpu" else net.to(device)


def freeze(net: nn.Module) -> nn.Module:
    """Embedding networks are fixed functions: no parameter gradients, eval mode."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def embed_images(net: nn.Module, images: torch.Tensor, budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB) -> torch.Tensor:
    """Embeddings of a public or private image set, without gradients, in chunks within ``budget_mb``."""
    chunk = pass_chunk(net.spec, images.device, budget_mb)
    with torch.inference_mode():
        parts = [net.embed(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    if not parts:
        return torch.zeros(0, net.spec.embedding_dim, device=images.device)
    return torch.cat(parts)
