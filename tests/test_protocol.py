"""Messages survive encoding unchanged; malformed, hostile or old-format bytes are refused cleanly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared.compute.networks import NetworkSpec
from shared.wire.messages import (
    MESSAGE_TYPES,
    BudgetReport,
    BudgetRequest,
    DescribeRequest,
    ErrorReply,
    FeatureReply,
    FeatureRequest,
    KipStepReply,
    OwnerInfo,
    PlanReply,
    PlanRequest,
)
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import OldWireFormat, ProtocolError, decode, encode
from shared.wire.rpc import owner_pb2 as pb
from tests.conftest import feature_request, kip_request
from tests.wire import v1_envelope, v1_message

EVENT = SampledGaussianEvent(1.2, 0.01, 2)
REQUEST = FeatureRequest("id-1", NetworkSpec(), (1, 2), (3, 4), "crop_flip", 10, "h", 50.0, 1.2)
REPLY = FeatureReply(
    "id-1",
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    (1.0, 2.0, 3.0),
    1.2,
    1.0,
    (EVENT,),
    np.ones((2, 5), np.float32),
)
KIP = kip_request()
MESSAGES = [
    DescribeRequest(),
    BudgetRequest(),
    OwnerInfo("o", ("a", "b"), (3, 4), (1, 28, 28), (0.1, 0.3), "h" * 64, 1.0, {"max_draws_per_request": 3}),
    REQUEST,
    REPLY,
    KIP,
    KipStepReply("k1", KIP.images, KIP.adam_m, KIP.adam_v, 2, 2.0, 1.0, (EVENT,)),
    PlanRequest("plan-1", "run-abcdefgh", 20, encode(REQUEST)),
    PlanReply("plan-1", SampledGaussianEvent(1.2, 0.01, 20), 0.7, "prv", 1e-5),
    BudgetReport("o", 1.0, 1e-5, 0.5, 0.6, 2, 40, 1.0, (SampledGaussianEvent(1.2, 0.01, 40),), ("class names",)),
    ErrorReply("budget_exceeded", "no"),
]


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            if not (value.dtype == other.dtype and np.array_equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def test_every_message_kind_is_defined_in_the_proto() -> None:
    """owner.proto's Message has one body per dataclass: the .proto is the API's whole definition."""
    oneof = {f.name for f in pb.Message.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert oneof == set(MESSAGE_TYPES) == {type(m).kind for m in MESSAGES}


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES))
def test_each_dataclass_field_is_a_proto_field_of_the_same_name(kind: str) -> None:
    proto = {f.name for f in getattr(pb, MESSAGE_TYPES[kind].__name__).DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(MESSAGE_TYPES[kind])} == proto


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_round_trip(message) -> None:
    assert _same(decode(encode(message)), message)


def test_encoding_is_deterministic() -> None:
    """The ledger hashes a request's bytes: equal messages must give equal bytes (maps included)."""
    a = OwnerInfo("o", ("a", "b"), (3, 4), (1, 28, 28), (0.1, 0.3), "h", 1.0, {"x": 1, "y": 2, "z": 3})
    b = OwnerInfo("o", ("a", "b"), (3, 4), (1, 28, 28), (0.1, 0.3), "h", 1.0, {"z": 3, "x": 1, "y": 2})
    assert encode(a) == encode(b)
    assert encode(REQUEST) == encode(decode(encode(REQUEST)))


def _wire(kind: str, fill) -> bytes:
    """A Message built field by field, as a hostile or buggy client would."""
    m = pb.Message()
    fill(getattr(m, kind))
    return m.SerializeToString()


def _reply_with(**tensor) -> bytes:
    def fill(p):
        p.request_id, p.noise_multiplier, p.clip_norm = "x", 1.0, 1.0
        p.expected_counts.extend([1.0, 2.0])
        p.noisy_sums.dtype, p.noisy_sums.data = tensor.get("dtype", "float32"), tensor.get("data", b"\x00" * 32)
        p.noisy_sums.shape.extend(tensor.get("shape", [2, 2, 2]))
        p.basis_fingerprints.dtype = "float32"
        p.basis_fingerprints.shape.extend([0, 0])

    return _wire("feature_reply", fill)


def test_a_well_formed_hand_built_reply_decodes() -> None:
    """The malformed cases below differ from this one in one thing each."""
    assert decode(_reply_with()).noisy_sums.shape == (2, 2, 2)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"garbage", "not an owner.proto Message"),
        (b"\x80\x04\x95pickle", "not an owner.proto Message"),
        (b"", "no body"),
        (encode(REPLY)[:-5], "not an owner.proto Message"),
        (encode(REPLY) + b"\xff", "not an owner.proto Message"),
        (_reply_with(dtype="float64"), "must be float32"),
        (_reply_with(dtype="object"), "must be float32"),
        (_reply_with(data=b"\x00" * 31), "bytes"),
        (_reply_with(shape=[2, 2]), "3 non-negative dimensions"),
        (_reply_with(shape=[-2, -2, 2]), "non-negative"),
        (_reply_with(shape=[2, 3, 2], data=b"\x00" * 48), "disagree on the number of classes"),
        (_reply_with(shape=[2**40, 2**40, 2]), "bytes"),
        (_wire("feature_request", lambda p: setattr(p, "signal", "features")), "missing field 'network'"),
        (_wire("plan_reply", lambda p: setattr(p, "plan_id", "x")), "missing field 'event'"),
        # The wire checks a name's form; an unknown well-formed one is the owner's to refuse (test_signal_kinds).
        (_wire("feature_request", lambda p: p.network.SetInParent() or setattr(p, "signal", "Pixels;DROP")), "signal"),
        (
            _wire(
                "feature_request",
                lambda p: (p.network.SetInParent(), p.network_seeds.append(1), setattr(p, "signal", "features")),
            ),
            "same length",
        ),
        (_wire("budget_report", lambda p: p.events.add()), "bad privacy event"),
        (
            _wire("owner_info", lambda p: (p.normalization.extend([0.5, 0.5]), setattr(p, "privacy_unit", "ward"))),
            "privacy_unit",
        ),
        (_wire("owner_info", lambda p: setattr(p, "privacy_unit", "image")), "normalization"),
        (encode(REPLY) + b"\xa0\x06\x01", "does not define"),  # an unknown field 100 on Message
        (b"\x08\x01", "no body"),  # only field 1: reserved (version 1's Envelope.dpdm)
    ],
)
def test_malformed_bytes_raise_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(data)


def test_unknown_fields_inside_a_body_are_refused() -> None:
    m = pb.Message()
    m.ParseFromString(encode(REQUEST))
    sub = pb.NetworkSpec()
    sub.ParseFromString(m.feature_request.network.SerializeToString() + b"\xb8\x01\x07")  # field 23
    m.feature_request.network.CopyFrom(sub)
    with pytest.raises(ProtocolError, match="NetworkSpec carries field 23"):
        decode(m.SerializeToString())


@pytest.mark.parametrize("name", ["noise_multiplier", "expected_group_size"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(name: str, value: float) -> None:
    m = pb.Message()
    m.ParseFromString(encode(REQUEST))
    setattr(m.feature_request, name, value)
    with pytest.raises(ProtocolError, match="finite"):
        decode(m.SerializeToString())


def test_non_finite_images_are_refused() -> None:
    images = KIP.images.copy()
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(ProtocolError, match="non-finite"):
        decode(encode(kip_request(images=images, adam_m=np.zeros_like(images), adam_v=np.zeros_like(images))))


def test_size_limit() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(encode(REPLY), max_bytes=100)


def test_old_format_messages_are_refused_by_name() -> None:
    bare = v1_message()
    enveloped = v1_envelope(bare)
    for data in (bare, enveloped):
        with pytest.raises(OldWireFormat, match="version 1 wire format") as caught:
            decode(data)
        assert caught.value.code == "old_wire_format"


def test_owner_answers_garbage_and_old_messages_with_clear_errors(owner) -> None:
    reply = decode(owner.handle(b"\x00" * 50))
    assert isinstance(reply, ErrorReply) and reply.code == "bad_message"
    reply = decode(owner.handle(v1_message("feature_request", {"request_id": "r1"})))
    assert isinstance(reply, ErrorReply) and reply.code == "old_wire_format" and "upgrade" in reply.message
    assert isinstance(decode(owner.handle(encode(feature_request(owner)))), FeatureReply)


def test_a_retry_of_a_request_the_old_version_released_is_refused_clearly(owner) -> None:
    """An owner upgraded with version 1 rows in its ledger: their replies cannot be re-sent in v2, and a
    retry must say so rather than report an id conflict; the budget they spent stays counted."""
    request = feature_request(owner, "r-old")
    event = owner.validate(request)
    owner.ledger.reserve("r-old", "ab" * 32, event, lambda events: True)  # v1 digests were bare sha256
    owner.ledger.record_reply("r-old", v1_message("feature_reply"))
    spent = owner.budget().num_draws
    reply = decode(owner.handle(encode(request)))
    assert isinstance(reply, ErrorReply) and reply.code == "old_wire_format"
    assert "'r-old'" in reply.message and "new run" in reply.message
    assert owner.budget().num_draws == spent == request.num_draws
    # A request new to this ledger is served, and its retry is answered from the ledger.
    fresh = encode(feature_request(owner, "r-new"))
    assert owner.handle(fresh) == owner.handle(fresh)


def test_a_signal_store_written_by_the_old_version_is_refused_with_its_path(tmp_path) -> None:
    from distiller_node.signal_store import SignalStore

    store = SignalStore(tmp_path / "signals")
    store.put(0, 0, v1_message("feature_reply"))
    store.put(0, 1, encode(REPLY))
    assert _same(store.get(0, 1), REPLY)
    with pytest.raises(OldWireFormat, match=r"batch_00000\.msg: .*version 1 wire format"):
        store.get(0, 0)


def test_committed_grpc_stubs_match_the_proto(tmp_path) -> None:
    """shared/wire/rpc/owner_pb2*.py are generated from owner.proto (deploy/gen_proto.sh); keep them in step."""
    from pathlib import Path

    from grpc_tools import protoc

    root = Path(__file__).resolve().parents[1]
    args = ["protoc", f"-I{root}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    rpc = Path("shared", "wire", "rpc")
    assert protoc.main([*args, str(root / rpc / "owner.proto")]) == 0
    for name in ("owner_pb2.py", "owner_pb2_grpc.py"):
        assert (tmp_path / rpc / name).read_text() == (root / rpc / name).read_text(), name
