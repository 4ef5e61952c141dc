"""The owner's checks on every release request, against its own limits (``[limits]`` in owner.toml).

Nothing in a request sets a limit: the rate cap, the noise floor, network and subspace sizes,
draws per request and reply sizes all come from the owner's config. A failed check is a
``RequestRefused`` with a machine-readable code, raised before anything is reserved or computed.
"""

from __future__ import annotations

import re

import numpy as np

from owner_node.config import Limits
from owner_node.data import PrivateData
from owner_node.randomness import inclusion_threshold
from shared.compute.augmentation import parse_strategy
from shared.compute.kip_shapes import SCATTER_J, scatterable
from shared.compute.signals import get_signal_kind
from shared.wire.messages import FeatureRequest, KipStepRequest
from shared.wire.privacy_event import SampledGaussianEvent

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # used with fullmatch: "$" would let a trailing newline in
MAX_SEED = 2**63 - 1
# Beyond this a release is pure noise (the distiller plans at most 1e4), and near 1e154 the accountants overflow.
MAX_NOISE_MULTIPLIER = 1e6
# Refusals may quote what was sent; cut so that one always fits in gRPC trailers and in a log line.
MAX_REFUSAL_CHARS = 1000
# Room in a message for its header and its arrays' own headers, beyond the arrays themselves.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# A packed int64 is at most 10 bytes on the wire (varint).
MAX_VARINT_BYTES = 10


class RequestRefused(ValueError):
    """A refusal: ``code`` for machines, a message for people (long quotes of the request cut in the middle)."""

    def __init__(self, code: str, message: str):
        if len(message) > MAX_REFUSAL_CHARS:
            cut = len(message) - 900
            message = f"{message[:600]} [... {cut} characters cut ...] {message[-300:]}"
        super().__init__(message)
        self.code = code


class RequestValidator:
    """One owner's checks; ``data`` gives the public facts they use (classes, shape, published counts)."""

    def __init__(self, limits: Limits, data: PrivateData, num_aux: int, aux_hash: str):
        self.limits, self.data, self.num_aux, self.aux_hash = limits, data, num_aux, aux_hash

    def max_request_bytes(self) -> int:
        """The largest request these limits can accept, with room for its header: what is decoded at all.

        Decoding multiplies a message's size in memory (a packed seed of 1 byte becomes an int64 and a
        Python int), so a request larger than any valid one is refused before it is parsed: a release's
        two seed lists at the most draws a request may hold, or a KIP step's three image arrays
        (images, Adam's m and v; float64 at most) at the most synthetic images it may hold."""
        lim = self.limits
        seeds = 2 * lim.max_draws_per_request * MAX_VARINT_BYTES
        kip = 3 * lim.max_kip_images * int(np.prod(self.data.image_shape)) * 8
        return min(lim.max_message_bytes, max(seeds, kip) + MESSAGE_OVERHEAD_BYTES)

    def common(self, request_id: str, expected_group_size: float, noise_multiplier: float) -> float:
        """Checks every release kind shares; returns the sampling rate q the accountant uses."""
        lim = self.limits
        if not REQUEST_ID.fullmatch(request_id):
            raise RequestRefused(
                "invalid_request", "request_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
            )
        if not (np.isfinite(expected_group_size) and expected_group_size > 0):
            raise RequestRefused("invalid_request", "expected_group_size must be a finite number > 0")
        q = max(self.data.sample_rates(expected_group_size))
        if not q > 0:
            raise RequestRefused(
                "invalid_request", f"expected_group_size {expected_group_size} is so small that every rate is zero"
            )
        if q > lim.max_sample_rate:
            raise RequestRefused(
                "sample_rate_too_high", f"sampling rate {q:.5f} exceeds the owner's cap {lim.max_sample_rate}"
            )
        expected = self.data.expected_sample(expected_group_size)
        if expected > lim.max_sample_per_draw:
            raise RequestRefused(
                "too_large",
                f"sampling rate {q:.5f} means about {expected:.0f} records per draw over all classes, above the "
                f"owner's limit of {lim.max_sample_per_draw}: use a smaller group size",
            )
        for rate in self.data.sample_rates(expected_group_size):
            try:
                inclusion_threshold(rate)  # the exact sampler must represent every class's rate
            except ValueError as exc:
                raise RequestRefused("invalid_request", f"expected_group_size {expected_group_size:g}: {exc}") from exc
        if not (np.isfinite(noise_multiplier) and noise_multiplier >= lim.min_noise_multiplier):
            raise RequestRefused("noise_too_low", f"noise_multiplier must be >= {lim.min_noise_multiplier}")
        if noise_multiplier > MAX_NOISE_MULTIPLIER:
            reason = f"noise_multiplier must be at most {MAX_NOISE_MULTIPLIER:g}, got {noise_multiplier:g}"
            raise RequestRefused("invalid_request", reason)
        return float(q)

    def reply_size(self, array_bytes: int, advice: str) -> None:
        """Refuse, before anything is reserved, a reply too large to leave (it would be spent, never sent)."""
        limit = self.limits.max_message_bytes
        if array_bytes + MESSAGE_OVERHEAD_BYTES > limit:
            raise RequestRefused(
                "too_large",
                f"the reply would hold about {array_bytes + MESSAGE_OVERHEAD_BYTES} bytes, above the owner's limit "
                f"of {limit}: {advice}",
            )

    def kip(self, r: KipStepRequest) -> SampledGaussianEvent:
        """Check a KIP step request against the owner's own limits; return the privacy event it would cost."""
        lim = self.limits
        q = self.common(r.request_id, r.expected_group_size, r.noise_multiplier)
        if self.data.patients is not None:
            raise RequestRefused(
                "invalid_request",
                'this owner protects patients ([privacy] unit = "patient"); synchronised DP-KIP steps clip per '
                "image only: use feature, gradient or decoupled-KIP releases",
            )
        classes = len(self.data.class_names)
        m = r.images.shape[0]
        if tuple(r.images.shape[1:]) != self.data.image_shape:
            raise RequestRefused(
                "invalid_request", f"synthetic images {tuple(r.images.shape[1:])} differ from {self.data.image_shape}"
            )
        if m == 0 or m % classes:
            raise RequestRefused(
                "invalid_request", f"the synthetic set must hold equally many images per class ({classes}), got {m}"
            )
        if m > lim.max_kip_images:
            raise RequestRefused("too_large", f"at most {lim.max_kip_images} synthetic images per request, got {m}")
        self.reply_size(3 * r.images.size * 4, "ask for fewer synthetic images")
        if not (scatterable(self.data.image_shape[1]) and scatterable(self.data.image_shape[2])):
            raise RequestRefused(
                "invalid_request", f"scattering (J = {SCATTER_J}) needs image sides divisible by {2**SCATTER_J}"
            )
        if not 1 <= r.num_steps <= lim.max_kip_steps_per_request:
            raise RequestRefused(
                "too_many_draws",
                f"a request may hold 1..{lim.max_kip_steps_per_request} KIP steps, got {r.num_steps}",
            )
        # The reply carries step + num_steps: bounded so that it is encodable, before any work is done.
        if not 0 <= r.step <= MAX_SEED - r.num_steps:
            raise RequestRefused(
                "invalid_request", f"step must be a count in 0..{MAX_SEED - r.num_steps}, got {r.step}"
            )
        if not (np.isfinite(r.lr) and 0 < r.lr <= 10):
            raise RequestRefused("invalid_request", f"lr must be in (0, 10], got {r.lr}")
        if not (np.isfinite(r.reg) and 0 < r.reg <= 1e6):
            raise RequestRefused("invalid_request", f"reg must be in (0, 1e6], got {r.reg}")
        return SampledGaussianEvent(float(r.noise_multiplier), q, r.num_steps)

    def feature(self, r: FeatureRequest) -> SampledGaussianEvent:
        """Check a request against the owner's own limits; return the privacy event it would cost."""
        lim = self.limits

        def refuse(msg: str, code: str = "invalid_request") -> RequestRefused:
            return RequestRefused(code, msg)

        if not REQUEST_ID.fullmatch(r.request_id):
            raise refuse("request_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
        try:
            r.network.validate(max_width=lim.max_network_width, max_depth=lim.max_network_depth)
        except ValueError as exc:
            raise refuse(str(exc), "unsupported_network") from exc
        if r.network.channels != self.data.image_shape[0] or r.network.image_size != self.data.image_shape[1]:
            raise refuse(
                f"network input {r.network.channels}x{r.network.image_size} "
                f"does not match images {self.data.image_shape}"
            )
        if r.network.num_classes != len(self.data.class_names):
            raise refuse(f"network has {r.network.num_classes} classes, the data {len(self.data.class_names)}")
        if not 1 <= r.num_draws <= lim.max_draws_per_request:
            raise refuse(
                f"a request may hold 1..{lim.max_draws_per_request} draws, got {r.num_draws}", "too_many_draws"
            )
        if not all(0 <= s <= MAX_SEED for s in r.network_seeds + r.augment_seeds):
            raise refuse("seeds must be integers in 0..2^63-1")
        try:
            parse_strategy(r.augmentation)
        except ValueError as exc:
            raise refuse(str(exc)) from exc
        try:
            kind = get_signal_kind(r.signal)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        raw_dim = kind.signal_dim(r.network)
        max_k = min(lim.max_subspace_dim, self.num_aux - 1, raw_dim)  # n centred vectors span n - 1 directions
        if not 0 <= r.subspace_dim <= max_k:
            raise refuse(f"subspace_dim must be in 0..{max_k} (0: no projection), got {r.subspace_dim}")
        refusal = kind.refusal(r.network, r.subspace_dim)
        if refusal is not None:
            raise refuse(refusal)
        # The owner's working memory for one draw: the auxiliary set's vectors (float32) and the basis.
        basis_mb = (self.num_aux * raw_dim * 4 + raw_dim * r.subspace_dim * 12) / 2**20
        if basis_mb > lim.max_basis_mb:
            raise refuse(
                f"a {r.signal} subspace for this network needs about {basis_mb:.0f} MB "
                f"({self.num_aux} auxiliary vectors of length {raw_dim}, k={r.subspace_dim}); "
                f"the owner allows {lim.max_basis_mb} MB: use a smaller network or subspace",
                "too_large",
            )
        image_mb = r.network.activation_bytes / 2**20
        if kind.uses_network and image_mb > lim.max_activation_mb:
            raise refuse(
                f"one {r.network.image_size}px image through a width-{r.network.width} network needs about "
                f"{image_mb:.0f} MB of activations; the owner allows {lim.max_activation_mb} MB a pass: "
                "use a narrower network",
                "too_large",
            )
        # Noisy sums plus one basis fingerprint per draw (at most a class sum's length).
        released = kind.released_dim(r.network, r.subspace_dim)
        self.reply_size(
            r.num_draws * (len(self.data.class_names) + 1) * released * 4,
            "ask for fewer draws per request or a projection",
        )
        if r.aux_hash != self.aux_hash:
            raise refuse("auxiliary set hash does not match the owner's public auxiliary set", "unknown_aux")
        q = self.common(r.request_id, r.expected_group_size, r.noise_multiplier)
        if self.data.patients is not None:
            # Patient mode keeps every sampled image's statistic (float64) until its patient's whole
            # contribution is clipped: bounded like the basis, from the published counts (a refusal
            # never depends on private counts).
            rows_mb = self.data.expected_sample(r.expected_group_size) * released * 8 / 2**20
            if rows_mb > lim.max_basis_mb:
                raise refuse(
                    f"patient mode keeps each sampled image's {released}-number statistic until its patient is "
                    f"clipped: about {rows_mb:.0f} MB a draw, above the owner's {lim.max_basis_mb} MB "
                    "(max_basis_mb): use a projection (a smaller subspace_dim) or a smaller group size",
                    "too_large",
                )
        return SampledGaussianEvent(float(r.noise_multiplier), q, r.num_draws)
