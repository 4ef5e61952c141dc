"""The sizes of DP-KIP's statistics: scattering features and packed moments, as integer arithmetic.

The signal kinds (``shared.compute.signals``) and the wire size a KIP release from these without loading
torch or kymatio; ``shared.compute.scattering`` and ``shared.compute.moments`` compute what they count.
"""

from __future__ import annotations

SCATTER_J = 2
SCATTER_L = 8


def feature_dim(image_shape: tuple[int, ...], J: int = SCATTER_J, L: int = SCATTER_L) -> int:
    """Number of scattering features: channels x (1 + J L + L^2 J (J - 1) / 2) x (H / 2^J) x (W / 2^J)."""
    c, h, w = image_shape
    paths = 1 + J * L + L * L * J * (J - 1) // 2
    return c * paths * (h // 2**J) * (w // 2**J)


def scatterable(side: int) -> bool:
    """Whether an image side is divisible by 2^J, as the scattering transform's subsampling needs."""
    return side % 2**SCATTER_J == 0


def moment_dim(k: int) -> int:
    """Length of one example's vector: k (k + 1) / 2 second-moment entries, then k first-moment ones."""
    return k * (k + 1) // 2 + k
