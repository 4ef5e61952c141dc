"""The public description of a ConvNet (``NetworkSpec``) and the arithmetic of its shape.

Plain values and integer arithmetic, no torch: the wire (``shared.wire.messages``, ``shared.wire.protocol``)
carries a spec and the signal kinds (``shared.compute.signals``) size their vectors from it without loading
the maths. ``shared.compute.networks`` builds the network a spec and a seed describe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ARCHITECTURES = ("convnet",)
# Working memory for a forward and backward pass: the full-resolution layer's conv, norm and pool
# tensors plus what autograd keeps of the smaller layers come to about four full-resolution maps.
ACTIVATION_MAPS = 4


def depth_for_image_size(image_size: int) -> int:
    """The field's convention: pool until the feature map is about 4x4 (28 or 32 px: 3, 64: 4,
    128: 5, 224 or 256: 6), so the embedding stays a few thousand numbers at any resolution."""
    if image_size < 2:
        raise ValueError(f"image size {image_size} is too small for a ConvNet")
    return max(1, round(math.log2(image_size / 4)))


@dataclass(frozen=True)
class NetworkSpec:
    """Public description of a ConvNet; with a seed it fixes every weight."""

    arch: str = "convnet"
    width: int = 128
    depth: int = 3
    channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    def validate(self, max_width: int = 512, max_depth: int = 5) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if not 1 <= self.width <= max_width:
            raise ValueError(f"network width {self.width} outside 1..{max_width}")
        if not 1 <= self.depth <= max_depth:
            raise ValueError(f"network depth {self.depth} outside 1..{max_depth}")
        if self.image_size >> self.depth < 1:
            raise ValueError(f"depth {self.depth} pools a {self.image_size}px image to nothing")
        if not 1 <= self.channels <= 4 or not 2 <= self.num_classes <= 1000:
            raise ValueError("channels must be 1..4 and num_classes 2..1000")

    @property
    def embedding_dim(self) -> int:
        side = self.image_size >> self.depth
        return self.width * side * side

    @property
    def activation_bytes(self) -> int:
        """Working memory of one image's pass through the network (float32, ``ACTIVATION_MAPS`` maps);
        it grows with the square of the image side, which is what bounds chunk sizes at high resolution."""
        return ACTIVATION_MAPS * 4 * max(self.width, self.channels) * self.image_size**2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_images(
        cls, width: int, image_shape: tuple[int, ...], num_classes: int, depth: int | None = None
    ) -> NetworkSpec:
        """A ConvNet of ``width`` for square images of ``image_shape`` (C, H, W): ``depth`` as given, else
        by image size (``depth_for_image_size``). The one place that turns images into a network shape."""
        channels, size = int(image_shape[0]), int(image_shape[-1])
        return cls(
            width=width,
            depth=depth if depth is not None else depth_for_image_size(size),
            channels=channels,
            image_size=size,
            num_classes=num_classes,
        )


def num_parameters(spec: NetworkSpec) -> int:
    """Length of a flattened gradient: every weight and bias of the ConvNet, classifier included."""
    conv = sum((spec.channels if i == 0 else spec.width) * spec.width * 9 + spec.width for i in range(spec.depth))
    norm = 2 * spec.width * spec.depth
    return conv + norm + spec.embedding_dim * spec.num_classes + spec.num_classes
