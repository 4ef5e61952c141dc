"""Differentiable siamese augmentation (DSA), driven by an explicit seed.

One call applies one transformation family, chosen by the seed, with parameters drawn from a
generator seeded by the same seed. The owner (private images) and the distiller (synthetic images)
pass the same seed, so both sides of a signal see the same transformation.

For released statistics the parameters are shared by the whole batch (``per_example=False``): then
an example's augmented image depends only on itself and the public seed, never on its position
among the other sampled records, which is what keeps the sensitivity of a class sum at the clip
norm. Per-example parameters are for training the evaluation network. Nothing here reads or
changes the global RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shared.compute.choices import DEFAULT_STRATEGY, FAMILIES

SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Validate a strategy string such as ``"crop_flip"``; ``""`` or ``"none"`` means no augmentation."""
    if strategy in ("", "none"):
        return ()
    families = tuple(strategy.split("_"))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; known: {', '.join(FAMILIES)}")
    return families


def augment(x: torch.Tensor, seed: int, strategy: str = DEFAULT_STRATEGY, per_example: bool = False) -> torch.Tensor:
    """Apply one seeded, differentiable augmentation to a batch ``x`` of shape [N, C, H, W]."""
    families = parse_strategy(strategy)
    if not families or x.shape[0] == 0:
        return x
    g = torch.Generator().manual_seed(int(seed))
    family = families[int(torch.randint(len(families), (1,), generator=g))]
    return _APPLY[family](x, g, x.shape[0] if per_example else 1)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def _expand(p: torch.Tensor, n: int) -> torch.Tensor:
    """Broadcast one shared parameter (first dim 1) to the batch."""
    return p.expand(n, *p.shape[1:]) if p.shape[0] == 1 else p


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # Parameters are drawn on the CPU generator (the same on every device), then moved to the images.
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _color(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    brightness = (_uniform(n, -0.5, 0.5, g) * BRIGHTNESS).view(n, 1, 1, 1)
    saturation = _uniform(n, 0.0, SATURATION, g).view(n, 1, 1, 1)
    contrast = _uniform(n, 1.0 - CONTRAST, 1.0 + CONTRAST, g).view(n, 1, 1, 1)
    x = x + brightness.to(x)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * saturation.to(x) + channel_mean
    pixel_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - pixel_mean) * contrast.to(x) + pixel_mean


def _crop(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    # Translation by up to CROP_RATIO of the side, zero padded (DSA's "crop").
    h, w = x.shape[2:]
    shift_x = torch.randint(-int(w * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5) + 1, (n,), generator=g)
    shift_y = torch.randint(-int(h * CROP_RATIO + 0.5), int(h * CROP_RATIO + 0.5) + 1, (n,), generator=g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift_x * 2.0 / max(w - 1, 1)
    theta[:, 1, 2] = shift_y * 2.0 / max(h - 1, 1)
    return _affine(x, _expand(theta, x.shape[0]))


def _cutout(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    h, w = x.shape[2:]
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=g).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=g).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (rows >= (cy - ch // 2).view(n, 1, 1)) & (rows < (cy - ch // 2 + ch).view(n, 1, 1))
    inside_x = (cols >= (cx - cw // 2).view(n, 1, 1)) & (cols < (cx - cw // 2 + cw).view(n, 1, 1))
    keep = ~(inside_y & inside_x)
    return x * _expand(keep.unsqueeze(1), x.shape[0]).to(x.dtype)


def _flip(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    flip = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1).to(x.device)
    return torch.where(flip, x.flip(3), x)


def _scale(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    sx = _uniform(n, 1.0 / SCALE_RATIO, SCALE_RATIO, g)
    sy = _uniform(n, 1.0 / SCALE_RATIO, SCALE_RATIO, g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = sy
    return _affine(x, _expand(theta, x.shape[0]))


def _rotate(x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    angle = _uniform(n, -ROTATE_DEGREES, ROTATE_DEGREES, g) * math.pi / 180.0
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle)
    theta[:, 0, 1] = torch.sin(-angle)
    theta[:, 1, 0] = torch.sin(angle)
    theta[:, 1, 1] = torch.cos(angle)
    return _affine(x, _expand(theta, x.shape[0]))


_APPLY = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}
