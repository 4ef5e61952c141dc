"""Wavelet scattering features phi(x) for DP-KIP-ScatterNet (DESIGN section 2.2).

Both parties compute phi with this one function: the owner on private images (no gradients), the
distiller and the owner's per-example-gradient code on synthetic images (differentiable). The
transform is fixed and public (kymatio ``Scattering2D``, J = 2, L = 8): for a 1 x 28 x 28 image it
gives 81 channels of 7 x 7, i.e. 3969 features, computed with FFTs, so the result is deterministic
on a given device and depends on nothing random.

SciPy: kymatio 0.3.0 imports ``scipy.special.sph_harm``, which SciPy 1.17 removed. The project pins
``scipy<1.17`` in ``pyproject.toml`` (the lock still resolves with torch 2.13.0, torchvision 0.28.0,
opacus 1.6.0 and flwr 1.41.0 unchanged), so no local shim is needed.
"""

from __future__ import annotations

import functools

import torch
from kymatio.torch import Scattering2D

from shared.compute.kip_shapes import SCATTER_J, SCATTER_L, feature_dim

SCATTER_CHUNK = 256


@functools.lru_cache(maxsize=8)
def _scattering(height: int, width: int, J: int, L: int, device: str, dtype: torch.dtype) -> Scattering2D:
    """One filter bank per shape/device/dtype: building it costs about 0.1 s, the forward pass is stateless."""
    module = Scattering2D(J=J, shape=(height, width), L=L).to(device)
    return module.double() if dtype == torch.float64 else module


def scattering_features(
    images: torch.Tensor, chunk: int = SCATTER_CHUNK, J: int = SCATTER_J, L: int = SCATTER_L
) -> torch.Tensor:
    """phi(images): [n, C, H, W] -> [n, feature_dim], in the images' dtype (float32 or float64).

    Differentiable in ``images`` when they require grad (synthetic images); otherwise computed under
    ``no_grad`` in chunks of ``chunk`` images so that memory stays flat for private sets.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    module = _scattering(h, w, J, L, str(images.device), dtype)
    dim = feature_dim((c, h, w), J, L)
    if n == 0:
        return images.new_zeros(0, dim, dtype=dtype)
    if images.requires_grad:
        parts = [module(images[i : i + chunk].to(dtype)).reshape(-1, dim) for i in range(0, n, chunk)]
        return torch.cat(parts)
    with torch.no_grad():  # not inference_mode: the result is later combined with tensors under autograd
        return torch.cat([module(images[i : i + chunk].to(dtype)).reshape(-1, dim) for i in range(0, n, chunk)])
