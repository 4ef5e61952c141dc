"""Messages between distiller and owner, and their byte encoding.

Every message is a dataclass that encodes to bytes (a JSON header plus raw numpy arrays, never
pickle) and decodes with strict type checks, so the in-process simulation passes exactly what a
network transport carries. Decoding treats input as hostile: sizes are capped and every field is
checked before a message object exists.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from shared.accounting import SampledGaussianEvent
from shared.networks import NetworkSpec
from shared.statistic import SIGNALS, released_dim

MAGIC = b"DPDM"
WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not have the expected form."""


# ---------------------------------------------------------------- field checks


def _get(d: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise ProtocolError(f"missing field {key!r}")
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ProtocolError(f"field {key!r} is out of range for a number") from None
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"field {key!r} must be {kind}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} must be {kind}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"field {key!r} must be finite, got {value}")
    return value


def _int_list(d: dict, key: str) -> tuple[int, ...]:
    values = _get(d, key, list)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ProtocolError(f"field {key!r} must be a list of integers")
    return tuple(values)


def _network_from(d: dict) -> NetworkSpec:
    n = _get(d, "network", dict)
    try:
        return NetworkSpec(
            arch=_get(n, "arch", str),
            width=_get(n, "width", int),
            depth=_get(n, "depth", int),
            channels=_get(n, "channels", int),
            image_size=_get(n, "image_size", int),
            num_classes=_get(n, "num_classes", int),
        )
    except TypeError as exc:  # pragma: no cover - defensive
        raise ProtocolError(str(exc)) from exc


def _events_from(d: dict, key: str) -> tuple[SampledGaussianEvent, ...]:
    try:
        return tuple(SampledGaussianEvent.from_dict(e) for e in _get(d, key, list))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"bad privacy events in {key!r}: {exc}") from exc


def _array(arrays: dict, key: str, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise ProtocolError(f"missing array {key!r}")
    a = arrays[key]
    if a.ndim != ndim or a.dtype.kind not in "fiu":
        raise ProtocolError(f"array {key!r} must be numeric with {ndim} dimensions")
    return a


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class DescribeRequest:
    kind: ClassVar[str] = "describe"

    def to_wire(self) -> tuple[dict, dict]:
        return {}, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> DescribeRequest:
        return cls()


PRIVACY_UNITS = ("image", "patient")


def _privacy_unit(unit: str) -> str:
    if unit not in PRIVACY_UNITS:
        raise ProtocolError(f"privacy_unit must be one of {PRIVACY_UNITS}, got {unit!r}")
    return unit


@dataclass(frozen=True)
class OwnerInfo:
    """What the owner declares public: class names and counts, image shape, normalisation, limits."""

    kind: ClassVar[str] = "owner_info"
    owner_id: str
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    image_shape: tuple[int, ...]
    normalization: tuple[float, float]
    aux_hash: str
    clip_norm: float
    limits: dict
    # The rules the owner enforces, which a distiller must plan with (its own delta or accountant
    # would make a plan the owner refuses part-way).
    epsilon_budget: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    noise_sampler: str = "csprng"
    privacy_unit: str = "image"  # "patient": all of a patient's images are one record

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "owner_id": self.owner_id,
            "class_names": list(self.class_names),
            "class_counts": list(self.class_counts),
            "image_shape": list(self.image_shape),
            "normalization": list(self.normalization),
            "aux_hash": self.aux_hash,
            "clip_norm": self.clip_norm,
            "limits": self.limits,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_sampler": self.noise_sampler,
            "privacy_unit": self.privacy_unit,
        }, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> OwnerInfo:
        norm = _get(h, "normalization", list)
        if len(norm) != 2 or not all(isinstance(v, (int, float)) for v in norm):
            raise ProtocolError("normalization must be [mean, std]")
        return cls(
            owner_id=_get(h, "owner_id", str),
            class_names=tuple(str(c) for c in _get(h, "class_names", list)),
            class_counts=_int_list(h, "class_counts"),
            image_shape=_int_list(h, "image_shape"),
            normalization=(float(norm[0]), float(norm[1])),
            aux_hash=_get(h, "aux_hash", str),
            clip_norm=_get(h, "clip_norm", float),
            limits=_get(h, "limits", dict),
            epsilon_budget=_get(h, "epsilon_budget", float),
            delta=_get(h, "delta", float),
            accountant=_get(h, "accountant", str),
            noise_sampler=_get(h, "noise_sampler", str),
            privacy_unit=_privacy_unit(_get(h, "privacy_unit", str)),
        )


@dataclass(frozen=True)
class FeatureRequest:
    """Ask for noisy per-class sums of clipped, projected statistics, one release per draw.

    ``signal`` names the per-example statistic (``features``: embeddings; ``gradients``: per-example
    loss gradients; ``kip``: packed moments of projected scattering features, for which the network
    fields only describe the images); ``subspace_dim`` 0 asks for no projection (not for ``kip``).
    Seeds here are public parts of the statistic. The Poisson sample and the noise never come from
    the request: the owner draws them from its own entropy-seeded generators.
    """

    kind: ClassVar[str] = "feature_request"
    request_id: str
    network: NetworkSpec
    network_seeds: tuple[int, ...]
    augment_seeds: tuple[int, ...]
    augmentation: str
    subspace_dim: int
    aux_hash: str
    expected_group_size: float
    noise_multiplier: float
    signal: str = "features"

    @property
    def num_draws(self) -> int:
        return len(self.network_seeds)

    @property
    def statistic_dim(self) -> int:
        """Length of each released class sum: k, the whole signal when there is no projection, or
        the packed moments of k projected features for ``kip``."""
        return released_dim(self.network, self.signal, self.subspace_dim)

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "request_id": self.request_id,
            "network": self.network.to_dict(),
            "network_seeds": list(self.network_seeds),
            "augment_seeds": list(self.augment_seeds),
            "augmentation": self.augmentation,
            "subspace_dim": self.subspace_dim,
            "aux_hash": self.aux_hash,
            "expected_group_size": self.expected_group_size,
            "noise_multiplier": self.noise_multiplier,
            "signal": self.signal,
        }, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> FeatureRequest:
        req = cls(
            request_id=_get(h, "request_id", str),
            network=_network_from(h),
            network_seeds=_int_list(h, "network_seeds"),
            augment_seeds=_int_list(h, "augment_seeds"),
            augmentation=_get(h, "augmentation", str),
            subspace_dim=_get(h, "subspace_dim", int),
            aux_hash=_get(h, "aux_hash", str),
            expected_group_size=_get(h, "expected_group_size", float),
            noise_multiplier=_get(h, "noise_multiplier", float),
            # Optional, so that requests from before gradient signals existed still decode.
            signal=_get(h, "signal", str) if "signal" in h else "features",
        )
        if req.signal not in SIGNALS:
            raise ProtocolError(f"unknown signal kind {req.signal!r}; known: {', '.join(SIGNALS)}")
        if len(req.network_seeds) != len(req.augment_seeds):
            raise ProtocolError("network_seeds and augment_seeds must have the same length")
        return req


@dataclass(frozen=True)
class FeatureReply:
    """Noisy sums [draws, classes, k] and what the distiller needs to read them."""

    kind: ClassVar[str] = "feature_reply"
    array_names: ClassVar[tuple[str, ...]] = ("basis_fingerprints", "noisy_sums")
    optional_arrays: ClassVar[tuple[str, ...]] = ("basis_fingerprints",)  # replies stored before they existed
    request_id: str
    noisy_sums: np.ndarray
    expected_counts: tuple[float, ...]
    noise_multiplier: float
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]
    # [draws, f]: a public fingerprint of each draw's basis as the owner built it (shared.subspace),
    # so the distiller can refuse to match against a basis that differs from its own; f = 0 without one.
    basis_fingerprints: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "request_id": self.request_id,
            "expected_counts": list(self.expected_counts),
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "events": [e.to_dict() for e in self.events],
        }, {
            "noisy_sums": np.ascontiguousarray(self.noisy_sums, dtype=np.float32),
            "basis_fingerprints": np.ascontiguousarray(self.basis_fingerprints, dtype=np.float32),
        }

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> FeatureReply:
        counts = _get(h, "expected_counts", list)
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in counts):
            raise ProtocolError("expected_counts must be numbers")
        sums = _array(a, "noisy_sums", 3)
        if sums.shape[1] != len(counts):
            raise ProtocolError("noisy_sums and expected_counts disagree on the number of classes")
        prints = _array(a, "basis_fingerprints", 2) if "basis_fingerprints" in a else np.zeros((0, 0), np.float32)
        if prints.shape[0] not in (0, sums.shape[0]):
            raise ProtocolError("basis_fingerprints must hold one row per draw")
        return cls(
            request_id=_get(h, "request_id", str),
            noisy_sums=sums,
            expected_counts=tuple(float(c) for c in counts),
            noise_multiplier=_get(h, "noise_multiplier", float),
            clip_norm=_get(h, "clip_norm", float),
            events=_events_from(h, "events"),
            basis_fingerprints=prints.astype(np.float32, copy=False),
        )


def _images_like(a: dict, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float image-stack array [m, C, H, W], finite, matching ``shape`` when given."""
    x = _array(a, key, 4)
    if shape is not None and x.shape != shape:
        raise ProtocolError(f"array {key!r} has shape {x.shape}, expected {shape}")
    if not np.isfinite(x).all():
        raise ProtocolError(f"array {key!r} holds non-finite values")
    return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class KipStepRequest:
    """Synchronised DP-KIP: run ``num_steps`` noised Adam steps on this synthetic set at the owner.

    Each step is one release: a Poisson sample of the private data (expected ``expected_group_size``
    per class), the clipped per-example gradients of the KRR loss with respect to ``images``, summed
    and noised once with std sigma * C. The returned set and Adam moments are a deterministic
    function of this request and the noisy gradients (post-processing). ``images`` are class-major
    with equally many per class (their labels are implied); ``step`` is Adam's step count so far.
    """

    kind: ClassVar[str] = "kip_step_request"
    array_names: ClassVar[tuple[str, ...]] = ("adam_m", "adam_v", "images")
    request_id: str
    images: np.ndarray
    adam_m: np.ndarray
    adam_v: np.ndarray
    step: int
    num_steps: int
    expected_group_size: float
    noise_multiplier: float
    lr: float
    reg: float

    def to_wire(self) -> tuple[dict, dict]:
        f32 = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in self.array_names}
        return {
            "request_id": self.request_id,
            "step": self.step,
            "num_steps": self.num_steps,
            "expected_group_size": self.expected_group_size,
            "noise_multiplier": self.noise_multiplier,
            "lr": self.lr,
            "reg": self.reg,
        }, f32

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> KipStepRequest:
        images = _images_like(a, "images")
        return cls(
            request_id=_get(h, "request_id", str),
            images=images,
            adam_m=_images_like(a, "adam_m", images.shape),
            adam_v=_images_like(a, "adam_v", images.shape),
            step=_get(h, "step", int),
            num_steps=_get(h, "num_steps", int),
            expected_group_size=_get(h, "expected_group_size", float),
            noise_multiplier=_get(h, "noise_multiplier", float),
            lr=_get(h, "lr", float),
            reg=_get(h, "reg", float),
        )


@dataclass(frozen=True)
class KipStepReply:
    """The synthetic set and Adam moments after the request's steps, and the releases they cost."""

    kind: ClassVar[str] = "kip_step_reply"
    array_names: ClassVar[tuple[str, ...]] = ("adam_m", "adam_v", "images")
    request_id: str
    images: np.ndarray
    adam_m: np.ndarray
    adam_v: np.ndarray
    step: int
    noise_multiplier: float
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]

    def to_wire(self) -> tuple[dict, dict]:
        f32 = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in self.array_names}
        return {
            "request_id": self.request_id,
            "step": self.step,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "events": [e.to_dict() for e in self.events],
        }, f32

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> KipStepReply:
        images = _images_like(a, "images")
        return cls(
            request_id=_get(h, "request_id", str),
            images=images,
            adam_m=_images_like(a, "adam_m", images.shape),
            adam_v=_images_like(a, "adam_v", images.shape),
            step=_get(h, "step", int),
            noise_multiplier=_get(h, "noise_multiplier", float),
            clip_norm=_get(h, "clip_norm", float),
            events=_events_from(h, "events"),
        )


@dataclass(frozen=True)
class PlanRequest:
    """Reserve a whole run before its first release, so that it never stops half-spent.

    ``template`` is the encoded first request of the run (a ``FeatureRequest`` or
    ``KipStepRequest``): the owner validates it against every limit as if it were sent, then
    reserves ``total_releases`` releases at its sigma and q in the ledger. Later requests whose id
    starts with ``request_prefix`` and whose sigma and q match draw on that reservation.
    """

    kind: ClassVar[str] = "plan_request"
    array_names: ClassVar[tuple[str, ...]] = ("template",)
    plan_id: str
    request_prefix: str
    total_releases: int
    template: bytes

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "plan_id": self.plan_id,
            "request_prefix": self.request_prefix,
            "total_releases": self.total_releases,
        }, {"template": np.frombuffer(self.template, dtype=np.uint8)}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> PlanRequest:
        template = _array(a, "template", 1)
        if template.dtype != np.uint8:
            raise ProtocolError("array 'template' must be bytes (uint8)")
        return cls(
            plan_id=_get(h, "plan_id", str),
            request_prefix=_get(h, "request_prefix", str),
            total_releases=_get(h, "total_releases", int),
            template=template.tobytes(),
        )


@dataclass(frozen=True)
class PlanReply:
    """The owner's acceptance: the reservation it holds and the epsilon committed with it."""

    kind: ClassVar[str] = "plan_reply"
    plan_id: str
    event: SampledGaussianEvent
    epsilon_committed: float
    accountant: str
    delta: float

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "plan_id": self.plan_id,
            "event": self.event.to_dict(),
            "epsilon_committed": self.epsilon_committed,
            "accountant": self.accountant,
            "delta": self.delta,
        }, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> PlanReply:
        (event,) = _events_from({"e": [_get(h, "event", dict)]}, "e")
        return cls(
            plan_id=_get(h, "plan_id", str),
            event=event,
            epsilon_committed=_get(h, "epsilon_committed", float),
            accountant=_get(h, "accountant", str),
            delta=_get(h, "delta", float),
        )


@dataclass(frozen=True)
class BudgetRequest:
    kind: ClassVar[str] = "budget_request"

    def to_wire(self) -> tuple[dict, dict]:
        return {}, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> BudgetRequest:
        return cls()


@dataclass(frozen=True)
class BudgetReport:
    """The owner's own account of what it has released, from its ledger."""

    kind: ClassVar[str] = "budget_report"
    owner_id: str
    epsilon_budget: float
    delta: float
    epsilon_prv: float
    epsilon_rdp: float
    num_requests: int
    num_draws: int
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]
    public: tuple[str, ...] = field(default=())
    accountant: str = "prv"  # the one the owner enforces its budget with
    # Spent plus what accepted run plans still hold in reserve, under ``accountant``: the budget
    # a new run can have is what is left after this.
    epsilon_committed: float = 0.0
    reserved_releases: int = 0
    noise_sampler: str = "csprng"

    @property
    def epsilon_remaining(self) -> float:
        spent = self.epsilon_rdp if self.accountant == "rdp" else self.epsilon_prv
        return max(0.0, self.epsilon_budget - max(spent, self.epsilon_committed))

    def to_wire(self) -> tuple[dict, dict]:
        return {
            "owner_id": self.owner_id,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "epsilon_prv": self.epsilon_prv,
            "epsilon_rdp": self.epsilon_rdp,
            "num_requests": self.num_requests,
            "num_draws": self.num_draws,
            "clip_norm": self.clip_norm,
            "events": [e.to_dict() for e in self.events],
            "public": list(self.public),
            "accountant": self.accountant,
            "epsilon_committed": self.epsilon_committed,
            "reserved_releases": self.reserved_releases,
            "noise_sampler": self.noise_sampler,
        }, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> BudgetReport:
        return cls(
            owner_id=_get(h, "owner_id", str),
            epsilon_budget=_get(h, "epsilon_budget", float),
            delta=_get(h, "delta", float),
            epsilon_prv=_get(h, "epsilon_prv", float),
            epsilon_rdp=_get(h, "epsilon_rdp", float),
            num_requests=_get(h, "num_requests", int),
            num_draws=_get(h, "num_draws", int),
            clip_norm=_get(h, "clip_norm", float),
            events=_events_from(h, "events"),
            public=tuple(str(p) for p in _get(h, "public", list)),
            accountant=_get(h, "accountant", str),
            epsilon_committed=_get(h, "epsilon_committed", float),
            reserved_releases=_get(h, "reserved_releases", int),
            noise_sampler=_get(h, "noise_sampler", str),
        )


@dataclass(frozen=True)
class ErrorReply:
    """A refusal: ``code`` is machine-readable (e.g. ``budget_exceeded``), ``message`` is for people."""

    kind: ClassVar[str] = "error"
    code: str
    message: str

    def to_wire(self) -> tuple[dict, dict]:
        return {"code": self.code, "message": self.message}, {}

    @classmethod
    def from_wire(cls, h: dict, a: dict) -> ErrorReply:
        return cls(code=_get(h, "code", str), message=_get(h, "message", str))


MESSAGES = {
    m.kind: m
    for m in (
        DescribeRequest,
        OwnerInfo,
        FeatureRequest,
        FeatureReply,
        KipStepRequest,
        KipStepReply,
        PlanRequest,
        PlanReply,
        BudgetRequest,
        BudgetReport,
        ErrorReply,
    )
}


# ---------------------------------------------------------------- bytes


def encode(message: Any) -> bytes:
    header, arrays = message.to_wire()
    body = io.BytesIO()
    if arrays:
        np.savez(body, **arrays)
    body_bytes = body.getvalue()
    head = json.dumps(
        {"kind": message.kind, "fields": header, "arrays": sorted(arrays), "body_bytes": len(body_bytes)},
        sort_keys=True,
    ).encode()
    return MAGIC + struct.pack("<BI", WIRE_VERSION, len(head)) + head + body_bytes


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode one message; any malformed input raises ``ProtocolError`` (never another exception)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < 9 or data[:4] != MAGIC:
        raise ProtocolError("not a dpdistill message (bad magic)")
    version, head_len = struct.unpack("<BI", data[4:9])
    if version != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {version}")
    if head_len > MAX_HEADER_BYTES or 9 + head_len > len(data):
        raise ProtocolError("truncated or oversized header")
    try:
        head = json.loads(data[9 : 9 + head_len].decode("utf-8"))
    except RecursionError:
        raise ProtocolError("header is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # also integers too long to convert, not only JSONDecodeError
        raise ProtocolError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(head, dict):
        raise ProtocolError("header must be an object")
    kind = _get(head, "kind", str)
    if kind not in MESSAGES:
        raise ProtocolError(f"unknown message kind {kind!r}")
    names = _get(head, "arrays", list)
    expected = sorted(getattr(MESSAGES[kind], "array_names", ()))
    optional = set(getattr(MESSAGES[kind], "optional_arrays", ()))
    allowed = (expected, sorted(set(expected) - optional))
    if names not in allowed:  # checked before any array is read, so nothing unasked-for is ever loaded
        raise ProtocolError(
            f"{kind} messages carry the arrays {expected}" if expected else f"{kind} messages carry no arrays"
        )
    arrays: dict[str, np.ndarray] = {}
    body = data[9 + head_len :]
    if len(body) != _get(head, "body_bytes", int):
        raise ProtocolError("array section is truncated or has trailing bytes")
    if names:
        try:
            # encode() stores arrays uncompressed: an entry that would inflate is a decompression bomb.
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                if sum(info.file_size for info in archive.infolist()) > len(body):
                    raise ProtocolError("array section expands beyond its own size (compressed arrays are refused)")
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                if sorted(npz.files) != sorted(names):
                    raise ProtocolError("array section does not match the header")
                arrays = {n: npz[n] for n in names}
        except ProtocolError:
            raise
        except Exception as exc:  # numpy raises many kinds on corrupt zip data
            raise ProtocolError(f"array section is corrupt: {exc}") from exc
    try:
        return MESSAGES[kind].from_wire(_get(head, "fields", dict), arrays)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
        raise ProtocolError(f"bad {kind} message: {exc}") from exc
