"""The messages' byte encoding: ``shared/wire/messages.py``'s dataclasses to and from ``owner.proto``.

Encoding is protobuf's, deterministic, so the same request always gives the same bytes (the owner's
ledger hashes them). Decoding treats input as hostile: the size is capped before parsing, protobuf
parses within its own limits, and then every field is checked against what the message declares
(one body, no unknown fields, arrays of the declared dtype and shape, finite numbers) before a
dataclass exists. Any malformed input raises ``ProtocolError``, never another exception.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.unknown_fields import UnknownFieldSet

from shared.wire import messages
from shared.wire.messages import MESSAGE_TYPES, PRIVACY_UNITS, SIGNAL_NAME
from shared.wire.network_spec import NetworkSpec
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.rpc import owner_pb2 as pb

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Room for everything in a message but its arrays (the owner's reply limit leaves this much spare).
MAX_HEADER_BYTES = 4 * 1024 * 1024
# Version 1 framed a JSON header and npz arrays behind these bytes (and gRPC clients wrapped that in
# Envelope { bytes dpdm = 1 }); such messages are recognised only to be refused by name.
V1_MAGIC = b"DPDM"
FLOAT32 = np.dtype("<f4")  # every array on the wire: images, moments, noisy sums, fingerprints


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not have the expected form."""

    code = "bad_message"


class OldWireFormat(ProtocolError):
    """A message in version 1's format (JSON header and npz arrays), from a distiller or store before owner.proto v2."""

    code = "old_wire_format"


# ---------------------------------------------------------------- field helpers


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ProtocolError(f"field {name!r} must be finite, got {value}")
    return float(value)


def _put_tensor(t: pb.Tensor, array: np.ndarray) -> None:
    a = np.ascontiguousarray(array, dtype=FLOAT32)
    t.dtype = "float32"
    t.shape.extend(a.shape)
    t.data = a.tobytes()


def _tensor(t: pb.Tensor, name: str, ndim: int) -> np.ndarray:
    """The array in field ``name``: float32 with ``ndim`` dimensions, its bytes exactly its shape's."""
    if t.dtype != "float32":
        raise ProtocolError(f"array {name!r} must be float32, got {t.dtype[:32]!r}")
    shape = tuple(t.shape)
    if len(shape) != ndim or any(s < 0 for s in shape):
        raise ProtocolError(f"array {name!r} must have {ndim} non-negative dimensions, got shape {shape[:8]}")
    if math.prod(shape) * FLOAT32.itemsize != len(t.data):
        raise ProtocolError(f"array {name!r} holds {len(t.data)} bytes, not what shape {shape} of float32 needs")
    return np.frombuffer(t.data, dtype=FLOAT32).reshape(shape).copy()


def _put_event(p: pb.PrivacyEvent, e: SampledGaussianEvent) -> None:
    p.noise_multiplier, p.sample_rate, p.count = e.noise_multiplier, e.sample_rate, e.count


def _event(p: pb.PrivacyEvent) -> SampledGaussianEvent:
    try:
        return SampledGaussianEvent(p.noise_multiplier, p.sample_rate, p.count)
    except ValueError as exc:
        raise ProtocolError(f"bad privacy event: {exc}") from exc


def _put_network(p: pb.NetworkSpec, n: NetworkSpec) -> None:
    for f in fields(NetworkSpec):
        setattr(p, f.name, getattr(n, f.name))


def _network(p: pb.NetworkSpec) -> NetworkSpec:
    return NetworkSpec(**{f.name: getattr(p, f.name) for f in fields(NetworkSpec)})


def _reject_unknown(msg: ProtoMessage) -> None:
    """Fields this version of owner.proto does not define are refused, never silently carried."""
    unknown = UnknownFieldSet(msg)
    if len(unknown):
        raise ProtocolError(
            f"{msg.DESCRIPTOR.name} carries field {unknown[0].field_number} in a form owner.proto does not define"
        )
    for fd, value in msg.ListFields():
        if fd.message_type is None or fd.message_type.GetOptions().map_entry:
            continue
        for sub in value if fd.is_repeated else (value,):
            _reject_unknown(sub)


# ---------------------------------------------------------------- dataclass <-> proto, field by field

# The number of dimensions of each array field.
TENSOR_NDIM = {"noisy_sums": 3, "basis_fingerprints": 2, "images": 4, "adam_m": 4, "adam_v": 4}


def _fill(p: ProtoMessage, message: Any) -> None:
    """Copy a dataclass into its proto message: each field to the proto field of the same name."""
    p.SetInParent()  # an empty body (DescribeRequest) is still the body that was chosen
    for f in fields(message):
        value, target = getattr(message, f.name), getattr(p, f.name, None)
        if isinstance(value, np.ndarray):
            _put_tensor(target, value)
        elif isinstance(value, NetworkSpec):
            _put_network(target, value)
        elif isinstance(value, SampledGaussianEvent):
            _put_event(target, value)
        elif isinstance(value, dict):
            target.update({k: float(v) for k, v in value.items()})
        elif isinstance(value, tuple) and value and isinstance(value[0], SampledGaussianEvent):
            for e in value:
                _put_event(target.add(), e)
        elif isinstance(value, tuple):
            target.extend(value)
        else:
            setattr(p, f.name, value)


def _field(p: ProtoMessage, fd: Any) -> Any:
    """One proto field as the dataclass holds it, checked: present, finite, of the declared shape."""
    value = getattr(p, fd.name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return {k: _finite(f"{fd.name}[{k[:32]!r}]", v) for k, v in value.items()}
    if fd.message_type is not None and fd.is_repeated:
        return tuple(_event(e) for e in value)
    if fd.message_type is not None:
        if not p.HasField(fd.name):
            raise ProtocolError(f"missing field {fd.name!r}")
        if fd.message_type is pb.Tensor.DESCRIPTOR:
            return _tensor(value, fd.name, TENSOR_NDIM[fd.name])
        return _network(value) if fd.message_type is pb.NetworkSpec.DESCRIPTOR else _event(value)
    if fd.cpp_type == fd.CPPTYPE_DOUBLE:
        return tuple(_finite(fd.name, v) for v in value) if fd.is_repeated else _finite(fd.name, value)
    return tuple(value) if fd.is_repeated else value


def _check(msg: Any) -> Any:
    """What one field's type cannot say: agreement between fields, and values from a fixed set."""
    if isinstance(msg, messages.OwnerInfo):
        if len(msg.normalization) != 2:
            raise ProtocolError("normalization must be [mean, std]")
        if msg.privacy_unit not in PRIVACY_UNITS:
            raise ProtocolError(f"privacy_unit must be one of {PRIVACY_UNITS}, got {msg.privacy_unit[:32]!r}")
    if isinstance(msg, messages.BudgetReport) and not 0 <= msg.epsilon_remaining <= msg.epsilon_budget:
        raise ProtocolError("epsilon_remaining must be in [0, epsilon_budget]")
    if isinstance(msg, messages.FeatureRequest):
        # Only the name's form: whether a kind of that name exists is the owner's check (its validation
        # asks the registry in shared.compute.signals), so the wire loads no maths.
        if not SIGNAL_NAME.fullmatch(msg.signal):
            raise ProtocolError(f"signal must be a short lower-case name, got {msg.signal[:32]!r}")
        if len(msg.network_seeds) != len(msg.augment_seeds):
            raise ProtocolError("network_seeds and augment_seeds must have the same length")
    if isinstance(msg, messages.FeatureReply):
        if msg.noisy_sums.shape[1] != len(msg.expected_counts):
            raise ProtocolError("noisy_sums and expected_counts disagree on the number of classes")
        if msg.basis_fingerprints.shape[0] not in (0, msg.noisy_sums.shape[0]):
            raise ProtocolError("basis_fingerprints must hold one row per draw")
    if isinstance(msg, (messages.KipStepRequest, messages.KipStepReply)):
        for name in ("adam_m", "adam_v"):
            if getattr(msg, name).shape != msg.images.shape:
                raise ProtocolError(f"array {name!r} has shape {getattr(msg, name).shape}, expected {msg.images.shape}")
        for name in ("images", "adam_m", "adam_v"):
            if not np.isfinite(getattr(msg, name)).all():
                raise ProtocolError(f"array {name!r} holds non-finite values")
    return msg


# ---------------------------------------------------------------- bytes


def encode(message: Any) -> bytes:
    """The message's bytes: one ``owner.proto`` ``Message``, serialised deterministically."""
    kind = getattr(message, "kind", None)
    if MESSAGE_TYPES.get(kind) is not type(message):
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    wrapper = pb.Message()
    _fill(getattr(wrapper, kind), message)
    return wrapper.SerializeToString(deterministic=True)


def is_old_format(data: bytes) -> bool:
    """Version 1's bytes, bare (in-process, Flower, stored signals) or inside v1's gRPC Envelope."""
    if data[:4] == V1_MAGIC:
        return True
    if data[:1] != b"\x0a":  # Envelope field 1, length-delimited
        return False
    i = 1
    while i < min(len(data), 11) and data[i] & 0x80:
        i += 1
    return data[i + 1 : i + 5] == V1_MAGIC


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode one message; any malformed input raises ``ProtocolError`` (never another exception)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if is_old_format(data):
        raise OldWireFormat(
            "this message is in dpdistill's version 1 wire format (a DPDM JSON header and npz arrays); "
            "this node speaks owner.proto v2: upgrade dpdistill on both sides, and re-run anything stored "
            "by the old version (its signals and replies cannot be read)"
        )
    wrapper = pb.Message()
    try:
        wrapper.ParseFromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"not an owner.proto Message: {exc}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"not an owner.proto Message ({type(exc).__name__})") from None
    kind = wrapper.WhichOneof("body")
    if kind is None:
        raise ProtocolError("the message has no body (or one this version of owner.proto does not define)")
    _reject_unknown(wrapper)
    try:
        body = getattr(wrapper, kind)
        return _check(MESSAGE_TYPES[kind](**{fd.name: _field(body, fd) for fd in body.DESCRIPTOR.fields}))
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
        raise ProtocolError(f"bad {kind} message: {exc}") from exc


def read_message(path: Path) -> Any:
    """A message stored as received (signal stores, KIP step stores), naming the file if it cannot be read."""
    try:
        return decode(path.read_bytes())
    except ProtocolError as exc:
        raise type(exc)(f"{path}: {exc}") from None
