"""A malicious cloud against a running owner service (gRPC, mutual TLS): it must refuse clearly and keep the budget.

Everything here goes through ``OwnerChannel.call(method, bytes)``, so the distiller's own client code
(which would never send such things) is bypassed. For every hostile input we check the refusal code
and that the message tells a person what was wrong, that nothing was reserved or spent (Budget RPC
and the ledger file, re-accounted with ``shared.accounting``), and that the process keeps serving.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from owner_node.ledger import Ledger
from owner_node.service import OwnerService
from owner_node.validation import MESSAGE_OVERHEAD_BYTES
from shared.accounting import epsilon
from shared.wire.messages import (
    BudgetReport,
    BudgetRequest,
    DescribeRequest,
    ErrorReply,
    FeatureReply,
    FeatureRequest,
)
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import decode, encode
from shared.wire.rpc import owner_pb2 as pb
from shared.wire.rpc.channel import OwnerChannel
from shared.wire.rpc.errors import OwnerCallError
from tests.conftest import feature_request, kip_request, make_owner_config
from tests.owner_process import OwnerProcess, running_tls_owners
from tests.wire import length_delimited, v1_envelope, v1_message, varint

MAX_MESSAGE_BYTES = 2_000_000
MAX_REFUSAL_CHARS = 2_000  # a refusal is read by people (and travels in gRPC trailers): it must stay short

LIMITS = dict(max_sample_rate=0.5, max_message_bytes=MAX_MESSAGE_BYTES)


@pytest.fixture(scope="module")
def owners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OwnerProcess]]:
    """Two owner processes, started together: one for the onslaught, one with a fresh budget to exhaust."""
    folder = tmp_path_factory.mktemp("hostile")
    # The onslaught gets a generous budget, so that only limits, never the budget, refuse its requests.
    with running_tls_owners(folder, hostile=dict(epsilon=10.0, **LIMITS), budget=dict(epsilon=1.0, **LIMITS)) as owners:
        yield owners


@pytest.fixture(scope="module")
def hostile_owner(owners: dict[str, OwnerProcess]) -> OwnerProcess:
    return owners["hostile"]


@pytest.fixture(scope="module")
def budget_owner(owners: dict[str, OwnerProcess]) -> OwnerProcess:
    return owners["budget"]


# ---------------------------------------------------------------- building hostile bytes


def valid(request_id: str = "hostile", draws: int = 2, **overrides: Any) -> FeatureRequest:
    return feature_request(None, request_id, draws=draws, **overrides)


def as_proto(message: Any) -> pb.Message:
    m = pb.Message()
    m.ParseFromString(encode(message))
    return m


def with_fields(request_id: str, /, network: dict | None = None, drop: str | None = None, **fields: Any) -> bytes:
    """A valid feature request with some fields (or network fields) given hostile values of their own type."""
    m = as_proto(valid(request_id))
    body = m.feature_request
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(body, key)[:]
            getattr(body, key).extend(value)
        else:
            setattr(body, key, value)
    for key, value in (network or {}).items():
        setattr(body.network, key, value)
    if drop is not None:
        body.ClearField(drop)
    return m.SerializeToString()


def with_raw_field(request_id: str, name: str, raw: bytes) -> bytes:
    """A valid feature request whose field ``name`` is written by hand (``raw``: tag and value), as only a
    hostile encoder would: the wrong wire type, a varint beyond the field's range, invalid UTF-8, ..."""
    m = as_proto(valid(request_id))
    m.feature_request.ClearField(name)
    body = m.feature_request.SerializeToString() + raw
    return length_delimited(pb.Message.DESCRIPTOR.fields_by_name["feature_request"].number, body)


def tag(name: str, wire_type: int) -> bytes:
    return varint(pb.FeatureRequest.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


def with_extra(message: Any, raw: bytes) -> bytes:
    """A valid message with hand-written bytes appended inside its body (fields it does not declare)."""
    m = as_proto(message)
    kind = m.WhichOneof("body")
    body = getattr(m, kind).SerializeToString() + raw
    return length_delimited(pb.Message.DESCRIPTOR.fields_by_name[kind].number, body)


def tensor_bytes(field_number: int, dtype: str, shape: tuple[int, ...], data: bytes) -> bytes:
    return length_delimited(field_number, pb.Tensor(dtype=dtype, shape=shape, data=data).SerializeToString())


def reply_with_sums(dtype: str, shape: tuple[int, ...], data: bytes) -> bytes:
    """A feature reply whose ``noisy_sums`` tensor says one thing and carries another."""
    m = as_proto(a_reply())
    m.feature_reply.noisy_sums.CopyFrom(pb.Tensor(dtype=dtype, shape=shape, data=data))
    return m.SerializeToString()


def nested(depth: int) -> bytes:
    """Sub-messages nested ``depth`` deep inside a feature request (as unknown field 15)."""
    inner = b""
    for _ in range(depth):
        inner = length_delimited(15, inner)
    return with_extra(valid("deep"), inner)


def draws_request(request_id: str, draws: int) -> bytes:
    return with_fields(request_id, network_seeds=list(range(draws)), augment_seeds=list(range(draws)))


def a_reply() -> FeatureReply:
    return FeatureReply(
        "forged", np.zeros((2, 4, 6), np.float32), (5.0,) * 4, 5.0, 1.0, (SampledGaussianEvent(5.0, 0.25, 2),)
    )


VALID = encode(valid("trunc"))
NOT_PROTO = "not an owner.proto Message"

# (name, RPC, bytes or a maker of bytes, expected refusal code, regex the human-readable message must match)
HOSTILE: list[tuple[str, str, bytes | Callable[[], bytes], str, str]] = [
    # -- malformed, truncated or old-format messages
    ("empty", "Release", b"", "bad_message", "no body"),
    ("plain-text", "Release", b"GET / HTTP/1.1\r\n\r\n", "bad_message", NOT_PROTO),
    ("pickle", "Release", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os", "bad_message", NOT_PROTO),
    ("truncated-in-tag", "Release", VALID[:1], "bad_message", NOT_PROTO),
    ("truncated-mid-body", "Release", VALID[: len(VALID) // 2], "bad_message", NOT_PROTO),
    ("truncated-last-byte", "Release", VALID[:-1], "bad_message", NOT_PROTO),
    ("truncated-array", "Release", encode(a_reply())[:-40], "bad_message", NOT_PROTO),
    ("trailing-zero-bytes", "Release", VALID + b"\x00" * 16, "bad_message", NOT_PROTO),
    ("length-prefix-lies", "Release", b"\x22\xff\xff\xff\xff\x07" + VALID[2:], "bad_message", NOT_PROTO),
    (
        "varint-5000-bytes",
        "Release",
        with_raw_field("d", "subspace_dim", tag("subspace_dim", 0) + b"\xff" * 5000),
        "bad_message",
        NOT_PROTO,
    ),
    ("nested-100k-deep-groups", "Release", b"\x13" * 100_000 + b"\x14" * 100_000, "bad_message", NOT_PROTO),
    ("nested-200-deep-messages", "Release", nested(200), "bad_message", NOT_PROTO + "|does not define"),
    ("version-1-message", "Release", v1_message("feature_request"), "old_wire_format", "version 1 wire format"),
    ("version-1-envelope", "Release", v1_envelope(v1_message("feature_request")), "old_wire_format", "upgrade"),
    ("unknown-kind", "Release", b"\x92\x03\x00", "bad_message", "no body"),  # Message field 50
    ("missing-network", "Release", with_fields("m", drop="network"), "bad_message", "missing field 'network'"),
    ("missing-noise", "Release", with_fields("m2", drop="noise_multiplier"), "noise_too_low", "noise_multiplier"),
    (
        "request-id-as-varint",
        "Release",
        with_raw_field("t", "request_id", tag("request_id", 0) + b"\x07"),
        "bad_message",
        "field 1",
    ),
    (
        "request-id-not-utf8",
        "Release",
        with_raw_field("t2", "request_id", tag("request_id", 2) + b"\x02\xc3\x28"),
        "bad_message",
        NOT_PROTO,
    ),
    (
        "seeds-packed-varint-cut",
        "Release",
        with_raw_field("s", "network_seeds", tag("network_seeds", 2) + b"\x01\xff"),
        "bad_message",
        NOT_PROTO,
    ),
    (
        "signal-as-varint",
        "Release",
        with_raw_field("k4", "signal", tag("signal", 0) + b"\x01"),
        "bad_message",
        "field 10",
    ),
    ("seed-lists-differ", "Release", with_fields("l", augment_seeds=[1]), "bad_message", "same length"),
    # -- NaN, infinity and enormous numbers
    ("noise-nan", "Release", with_fields("n1", noise_multiplier=float("nan")), "bad_message", "finite"),
    ("noise-inf", "Release", with_fields("n2", noise_multiplier=float("inf")), "bad_message", "finite"),
    ("noise-minus-inf", "Release", with_fields("n3", noise_multiplier=float("-inf")), "bad_message", "finite"),
    ("noise-1e300", "Release", with_fields("n5", noise_multiplier=1e300), "invalid_request", "noise_multiplier"),
    ("noise-zero", "Release", with_fields("n6", noise_multiplier=0.0), "noise_too_low", "noise_multiplier must be >="),
    ("noise-negative", "Release", with_fields("n7", noise_multiplier=-5.0), "noise_too_low", "noise_multiplier"),
    ("group-nan", "Release", with_fields("g1", expected_group_size=float("nan")), "bad_message", "finite"),
    ("group-1e308", "Release", with_fields("g2", expected_group_size=1e308), "sample_rate_too_high", "sampling rate"),
    ("group-zero", "Release", with_fields("g3", expected_group_size=0.0), "invalid_request", "expected_group_size"),
    ("group-negative", "Release", with_fields("g4", expected_group_size=-3.0), "invalid_request", "expected_group"),
    ("group-denormal", "Release", with_fields("g5", expected_group_size=5e-324), "invalid_request", "expected_group"),
    ("seed-negative", "Release", with_fields("s1", network_seeds=[-1, 2]), "invalid_request", "seeds"),
    (
        "seed-2^63-wraps",
        "Release",
        with_raw_field(
            "s2", "augment_seeds", tag("augment_seeds", 0) + varint(2**63) + tag("augment_seeds", 0) + b"\x01"
        ),
        "invalid_request",
        "seeds",
    ),
    ("seed-int64-min", "Release", with_fields("s3", network_seeds=[-(2**63), 1]), "invalid_request", "seeds"),
    # -- projection bases and subspaces
    (
        "subspace-dim-10^12-varint",
        "Release",
        with_raw_field("k1", "subspace_dim", tag("subspace_dim", 0) + varint(10**12)),
        "invalid_request",
        "subspace_dim",
    ),
    (
        "subspace-dim-int32-max",
        "Release",
        with_fields("k1b", subspace_dim=2**31 - 1),
        "invalid_request",
        "subspace_dim",
    ),
    # subspace_dim 0 is a valid request (no projection); see test_budget's reply-size limit.
    # A malformed name is the wire's to refuse; a well-formed unknown one the owner's (naming the known kinds).
    ("signal-malformed", "Release", with_fields("k1m", signal="Pixels;DROP"), "bad_message", "signal"),
    ("signal-unknown", "Release", with_fields("k2", signal="pixels"), "invalid_request", "unknown signal kind"),
    ("kip-unprojected", "Release", with_fields("k5", signal="kip", subspace_dim=0), "invalid_request", "projection"),
    # -- synchronised KIP steps
    ("kip-steps-10^6", "Release", encode(kip_request("ks1", num_steps=10**6)), "too_many_draws", "KIP steps"),
    ("kip-steps-on-Budget", "Budget", encode(kip_request("ks2")), "wrong_method", "Budget"),
    ("kip-lr-negative", "Release", encode(kip_request("ks3", lr=-1.0)), "invalid_request", "lr"),
    # The reply's step (step + num_steps) must stay encodable: refused before the steps are computed.
    ("kip-step-overflows-reply", "Release", encode(kip_request("ks4", step=2**63 - 1)), "invalid_request", "step"),
    ("subspace-dim-negative", "Release", with_fields("k3", subspace_dim=-6), "invalid_request", "subspace_dim"),
    # -- arrays
    (
        "request-carries-a-1MB-basis",  # a field the request does not declare, holding an array
        "Release",
        with_extra(valid("basis"), tensor_bytes(20, "float32", (512, 512), b"\x00" * (4 << 18))),
        "bad_message",
        "does not define",
    ),
    (
        "array-claims-200MB",
        "Release",
        reply_with_sums("float32", (13_107_200, 4, 1), b"\x00" * 64),
        "bad_message",
        "bytes",
    ),
    ("array-shape-overflows", "Release", reply_with_sums("float32", (2**62, 2**62, 4), b""), "bad_message", "bytes"),
    ("array-negative-shape", "Release", reply_with_sums("float32", (-2, 4, 1), b""), "bad_message", "non-negative"),
    (
        "array-of-objects",
        "Release",
        reply_with_sums("object", (1, 4, 1), b"\x80\x04N."),
        "bad_message",
        "must be float32",
    ),
    # -- networks
    ("arch-resnet", "Release", with_fields("a1", network={"arch": "resnet"}), "unsupported_network", "architecture"),
    ("arch-empty", "Release", with_fields("a2", network={"arch": ""}), "unsupported_network", "architecture"),
    ("arch-500k-chars", "Release", with_fields("a3", network={"arch": "A" * 500_000}), "unsupported_network", "arch"),
    ("width-10^9", "Release", with_fields("w1", network={"width": 10**9}), "unsupported_network", "width"),
    ("width-zero", "Release", with_fields("w2", network={"width": 0}), "unsupported_network", "width"),
    ("width-negative", "Release", with_fields("w3", network={"width": -8}), "unsupported_network", "width"),
    ("depth-10^6", "Release", with_fields("d1", network={"depth": 10**6}), "unsupported_network", "depth"),
    ("depth-zero", "Release", with_fields("d2", network={"depth": 0}), "unsupported_network", "depth"),
    ("channels-3", "Release", with_fields("c1", network={"channels": 3}), "invalid_request", "does not match"),
    ("image-size-10^9", "Release", with_fields("i1", network={"image_size": 10**9}), "invalid_request", "match"),
    ("classes-10^6", "Release", with_fields("c2", network={"num_classes": 10**6}), "unsupported_network", "classes"),
    # -- draw counts
    ("zero-draws", "Release", draws_request("z", 0), "too_many_draws", "1..50 draws, got 0"),
    ("51-draws", "Release", draws_request("f", 51), "too_many_draws", "got 51"),
    ("100k-draws", "Release", draws_request("h", 100_000), "too_many_draws", "got 100000"),
    # Larger than any request the owner's limits accept (50 draws; 1000 KIP images of 16 x 16): refused
    # before it is parsed, since parsing multiplies its size in memory.
    ("1M-draws-over-the-request-cap", "Release", lambda: draws_request("m", 1_000_000), "message_too_large", "max"),
    (
        "message-over-the-size-limit",
        "Release",
        b"\x00" * (MAX_MESSAGE_BYTES + 1),
        "message_too_large",
        "larger than max",
    ),
    # -- identities, public inputs, methods
    ("request-id-empty", "Release", with_fields("e", request_id=""), "invalid_request", "request_id"),
    ("request-id-129-chars", "Release", with_fields("e", request_id="r" * 129), "invalid_request", "request_id"),
    ("request-id-path", "Release", with_fields("e", request_id="../../etc/passwd"), "invalid_request", "request_id"),
    ("request-id-newline", "Release", with_fields("e", request_id="ok-id\n"), "invalid_request", "request_id"),
    ("request-id-unicode", "Release", with_fields("e", request_id="résumé"), "invalid_request", "request_id"),
    ("aux-hash-forged", "Release", with_fields("x", aux_hash="0" * 64), "unknown_aux", "auxiliary"),
    ("augmentation-unknown", "Release", with_fields("u1", augmentation="teleport"), "invalid_request", "augmentation"),
    ("augmentation-200k", "Release", with_fields("u2", augmentation="x_" * 100_000), "invalid_request", "augmentation"),
    ("reply-sent-as-request", "Release", encode(a_reply()), "wrong_method", "Release call does not take"),
    ("release-via-describe", "Describe", encode(valid("via-describe")), "wrong_method", "Describe call"),
    ("describe-via-budget", "Budget", encode(DescribeRequest()), "wrong_method", "Budget call"),
]


# ---------------------------------------------------------------- checks shared by the tests


@contextmanager
def open_ledger(owner: OwnerProcess) -> Iterator[Ledger]:
    ledger = Ledger(owner.config.ledger_path)
    try:
        yield ledger
    finally:
        ledger.close()


def budget(channel: OwnerChannel) -> BudgetReport:
    report = decode(channel.call("Budget", encode(BudgetRequest())))
    assert isinstance(report, BudgetReport)
    return report


def assert_budget_kept(owner: OwnerProcess) -> BudgetReport:
    """The service's own account agrees with an independent recount of its ledger file, within budget."""
    report = budget(owner.channel)
    with open_ledger(owner) as ledger:
        assert ledger.integrity_ok()
        rows = ledger.rows()
    events = [r.event for r in rows]
    recount = epsilon(events, owner.config.delta, owner.config.accountant)
    assert recount <= owner.config.epsilon
    assert report.num_requests == len(rows) and report.num_draws == sum(e.count for e in events)
    assert report.epsilon_prv == pytest.approx(epsilon(events, owner.config.delta, "prv"), abs=1e-9)
    assert report.epsilon_prv <= report.epsilon_budget == owner.config.epsilon
    return report


def refusal(call: Callable[[], bytes]) -> OwnerCallError:
    with pytest.raises(OwnerCallError) as err:
        call()
    return err.value


def release(owner: OwnerProcess, request: FeatureRequest) -> bytes:
    raw = owner.channel.call("Release", encode(request))
    reply = decode(raw)
    assert isinstance(reply, FeatureReply) and reply.request_id == request.request_id
    assert reply.noisy_sums.shape == (request.num_draws, 4, request.subspace_dim)
    return raw


# ---------------------------------------------------------------- the onslaught


@pytest.mark.parametrize("name, method, message, code, match", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_message_is_refused_clearly_and_spends_nothing(
    hostile_owner: OwnerProcess, name: str, method: str, message: bytes | Callable[[], bytes], code: str, match: str
) -> None:
    wire = message() if callable(message) else message
    before = budget(hostile_owner.channel)
    err = refusal(lambda: hostile_owner.channel.call(method, wire))
    assert err.code == code, f"{name}: {err}"
    assert 0 < len(err.message) <= MAX_REFUSAL_CHARS, f"{name}: refusal of {len(err.message)} chars"
    assert re.search(match, err.message), f"{name}: unclear refusal {err.message[:500]!r}"
    assert "Traceback" not in err.message and "Exception calling application" not in err.message
    after = budget(hostile_owner.channel)
    assert (after.num_requests, after.num_draws, after.epsilon_prv) == (
        before.num_requests,
        before.num_draws,
        before.epsilon_prv,
    ), f"{name} changed the budget"
    assert hostile_owner.proc.poll() is None, f"{name} killed the owner"


def test_a_version_1_client_is_refused_by_name(hostile_owner: OwnerProcess) -> None:
    """Version 1's gRPC service name still answers, with a refusal that says what to do."""
    import grpc

    call = hostile_owner.channel._channel.unary_unary("/dpdistill.owner.v1.Owner/Release")
    envelope = v1_envelope(v1_message("feature_request"))
    with pytest.raises(grpc.RpcError) as err:
        call(envelope, timeout=60)
    metadata = dict(err.value.trailing_metadata() or ())
    assert metadata.get("dpdistill-error-code") == "old_wire_format"
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "upgrade" in err.value.details()


def test_a_client_generated_from_the_proto_alone_is_served(hostile_owner: OwnerProcess) -> None:
    """owner.proto is the whole API: protoc's stubs, with no dpdistill code, can describe and release."""
    from shared.wire.rpc import owner_pb2_grpc

    stub = owner_pb2_grpc.OwnerStub(hostile_owner.channel._channel)
    info = stub.Describe(pb.Message(describe_request=pb.DescribeRequest()), timeout=60).owner_info
    assert len(info.class_names) == 4 and info.limits["max_message_bytes"] == MAX_MESSAGE_BYTES
    reply = stub.Release(as_proto(valid("generated-stub", draws=1)), timeout=120).feature_reply
    assert tuple(reply.noisy_sums.shape) == (1, 4, 6) and reply.noisy_sums.dtype == "float32"
    assert len(reply.noisy_sums.data) == 4 * 24 and reply.events[0].count == 1


def test_same_request_id_with_different_contents_is_a_conflict(hostile_owner: OwnerProcess) -> None:
    original = valid("same-id")
    first = release(hostile_owner, original)
    spent = budget(hostile_owner.channel)
    for tampered in (
        replace(original, network_seeds=(11, 99)),
        replace(original, noise_multiplier=0.5),
        replace(original, subspace_dim=3),
        valid("same-id", draws=1),
    ):
        err = refusal(lambda t=tampered: hostile_owner.channel.call("Release", encode(t)))
        assert err.code == "id_conflict" and "'same-id'" in err.message and "different request" in err.message
    # The honest retry still gets exactly the recorded answer, and nothing was spent twice.
    assert hostile_owner.channel.call("Release", encode(original)) == first
    assert budget(hostile_owner.channel).num_draws == spent.num_draws
    with open_ledger(hostile_owner) as ledger:
        assert [r.state for r in ledger.rows() if r.request_id == "same-id"] == ["released"]
        assert ledger.reply("same-id") == first


def test_racing_retries_of_one_request_id_release_once(hostile_owner: OwnerProcess) -> None:
    """Six threads send the same new request at once: one reservation, one answer, identical bytes for all."""
    request = valid("raced-id", draws=3)
    before = budget(hostile_owner.channel).num_draws
    replies: list[bytes] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        barrier.wait()
        replies.append(hostile_owner.channel.call("Release", encode(request)))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(replies) == 6 and len(set(replies)) == 1
    assert budget(hostile_owner.channel).num_draws == before + 3
    with open_ledger(hostile_owner) as ledger:
        assert ledger.reply("raced-id") == replies[0]


def test_owner_still_serves_and_kept_its_budget_after_the_onslaught(hostile_owner: OwnerProcess) -> None:
    raw = release(hostile_owner, valid("after-onslaught"))
    assert_budget_kept(hostile_owner)
    with open_ledger(hostile_owner) as ledger:
        rows = ledger.rows()
        # Only the honest requests of this module were ever reserved: no hostile one left a trace.
        assert {r.request_id for r in rows} <= {"same-id", "raced-id", "after-onslaught", "generated-stub"}
        assert all(r.state == "released" for r in rows)
        assert ledger.reply("after-onslaught") == raw
    assert hostile_owner.proc.poll() is None


# ---------------------------------------------------------------- the budget under pressure


def test_many_small_requests_stop_exactly_at_the_budget(budget_owner: OwnerProcess) -> None:
    """Each request fits alone; together they would not. Once refused, always refused; refusals spend nothing."""
    outcomes: list[str] = []
    for i in range(12):
        try:
            release(budget_owner, valid(f"small-{i}", noise_multiplier=4.0))
            outcomes.append("ok")
        except OwnerCallError as err:
            assert err.code == "budget_exceeded", err
            assert "budget epsilon=1.0" in err.message and "spent" in err.message and "2 draws" in err.message
            outcomes.append("refused")
            if outcomes.count("refused") == 3:
                break
    assert outcomes == ["ok"] * 7 + ["refused"] * 3  # the accountant's own answer for 2-draw releases at sigma 4
    report = assert_budget_kept(budget_owner)
    assert report.num_requests == 7 and report.epsilon_prv > 0.9


def test_concurrent_requests_racing_the_ledger_never_overshoot(budget_owner: OwnerProcess) -> None:
    """Four threads race cheap releases into what is left of the budget, with budget reads in between.

    Releases are serialised by the owner, so the race must end exactly where a sequential run would:
    at the largest count of these releases the accountant still allows.
    """
    cheap = SampledGaussianEvent(10.0, 0.25, 1)
    with open_ledger(budget_owner) as ledger:
        prior = ledger.events()
    cfg = budget_owner.config
    fits = 0
    while epsilon(prior + [cheap] * (fits + 1), cfg.delta, cfg.accountant) <= cfg.epsilon:
        fits += 1
    assert 2 <= fits <= 12, "test tuning: some, but not all, of the racing requests must fit"

    released: dict[str, bytes] = {}
    refused: list[OwnerCallError] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def racer(t: int) -> None:
        barrier.wait()
        for i in range(5):
            request = valid(f"race-{t}-{i}", draws=1, noise_multiplier=10.0)
            try:
                raw = budget_owner.channel.call("Release", encode(request))
                with lock:
                    released[request.request_id] = raw
            except OwnerCallError as err:
                with lock:
                    refused.append(err)
            budget(budget_owner.channel)  # reads interleaved with the writes

    threads = [threading.Thread(target=racer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert {e.code for e in refused} == {"budget_exceeded"}
    assert len(released) == fits and len(refused) == 20 - fits
    assert_budget_kept(budget_owner)
    with open_ledger(budget_owner) as ledger:
        racing_rows = [r for r in ledger.rows() if r.request_id.startswith("race-")]
        assert {r.request_id for r in racing_rows} == set(released)
        assert all(r.state == "released" for r in racing_rows)
        for request_id, raw in released.items():
            assert ledger.reply(request_id) == raw
    # A released request can still be fetched again after exhaustion, without any new spend.
    some_id = sorted(released)[0]
    again = budget_owner.channel.call("Release", encode(valid(some_id, draws=1, noise_multiplier=10.0)))
    assert again == released[some_id] and budget(budget_owner.channel).num_requests == len(prior) + fits
    assert budget_owner.proc.poll() is None


def test_a_request_larger_than_any_the_limits_accept_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """In process too: the owner decodes nothing longer than its largest valid request (seeds or KIP images)."""
    config = make_owner_config(tmp_path / "owner", epsilon=50.0, max_draws_per_request=50)
    service = OwnerService(config)
    try:
        cap = service.validator.max_request_bytes()
        assert cap == 3 * config.limits.max_kip_images * 16 * 16 * 8 + MESSAGE_OVERHEAD_BYTES
        big = draws_request("m", 2_000_000)
        assert len(big) > cap
        refused = decode(service.handle(big))
        assert isinstance(refused, ErrorReply) and f"exceeds the limit of {cap}" in refused.message
        assert service.ledger.rows() == []
        fits = feature_request(service, "ok", draws=50)
        assert isinstance(decode(service.handle(encode(fits))), FeatureReply)
    finally:
        service.close()
