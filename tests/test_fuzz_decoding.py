"""Fuzzing the owner's front door: whatever bytes arrive, the answer is a message or a clear refusal.

``shared.wire.protocol.decode`` must return a known message or raise ``ProtocolError``; the service must
answer with a reply or a ``RequestRefused`` with a known code, never spend budget on a refusal,
and answer the same bytes the same way twice (a retry never spends again). Inputs are arbitrary
bytes and hand-written hostile encodings, arbitrary bodies inside a valid ``Message``, and mutations
(bit flips, truncation, splicing, typed field replacement at any depth) of valid encodings. Runs are
derandomised and bounded so the suite stays fast and repeatable; every example also runs under a
wall-clock alarm, so a hang fails instead of stalling.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from owner_node.service import OwnerService
from owner_node.validation import MAX_NOISE_MULTIPLIER, RequestRefused
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
from shared.wire.protocol import ProtocolError, decode, encode
from shared.wire.rpc import owner_pb2 as pb
from shared.wire.rpc.errors import STATUS_FOR_CODE
from tests.conftest import feature_request, kip_request, make_owner_config
from tests.wire import length_delimited

KNOWN_CODES = frozenset(STATUS_FOR_CODE) - {"internal_error"}  # internal_error would mean an owner bug
EXAMPLE_TIME_LIMIT_S = 20.0  # generous for a loaded machine; a hang is what it catches
FUZZ = settings(
    derandomize=True,  # the same examples every run: a failure here is reproducible, not a flake
    database=None,
    deadline=None,  # wall time is policed by the alarm below, not by hypothesis' per-example deadline
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- inputs


def valid_messages() -> list[Any]:
    """One valid message of every kind; the feature request is one this test's owner would answer."""
    event = SampledGaussianEvent(5.0, 0.25, 1)
    kip = kip_request("fz-k", num_steps=1)
    return [
        DescribeRequest(),
        BudgetRequest(),
        feature_request(None, "fz", draws=1, subspace_dim=3),
        FeatureReply("fz", np.arange(12, dtype=np.float32).reshape(1, 4, 3), (5.0,) * 4, 5.0, 1.0, (event,)),
        OwnerInfo("o", ("a", "b"), (3, 4), (1, 16, 16), (0.5, 0.5), "h" * 64, 1.0, {"max_draws_per_request": 3}),
        BudgetReport("o", 1.0, 1e-5, 0.5, 0.6, 1, 1, 1.0, (event,), ("class names",)),
        ErrorReply("budget_exceeded", "no"),
        kip,
        KipStepReply("fz-k", kip.images, kip.adam_m, kip.adam_v, 1, 2.0, 1.0, (event,)),
        PlanRequest("fz-plan", "fz-run-0001", 3, b"\x00"),
        PlanReply("fz-plan", event, 0.5, "prv", 1e-5),
    ]


VALID = [encode(m) for m in valid_messages()]  # VALID[2] is the feature request
VALID_REQUEST = valid_messages()[2]
KINDS = tuple(MESSAGE_TYPES)
DECODED_TYPES = tuple(MESSAGE_TYPES.values())


# Bytes a hostile peer can write and protobuf's own encoder never would: nesting past the parser's
# recursion limit (sub-messages and groups), length prefixes beyond the data, over-long varints,
# invalid UTF-8 in a string field, and version 1's framing.
HOSTILE_SPECIALS = [
    b"\x13" * 3000 + b"\x14" * 3000,
    length_delimited(4, length_delimited(2, length_delimited(2, b"\x0a\xff\xff\xff\xff\x0f"))),
    b"\x22" + b"\xff" * 10 + b"\x01",
    length_delimited(4, length_delimited(1, b"\xc3\x28\xed\xa0\x80")),
    length_delimited(5, length_delimited(2, b"\x12\x0b" + b"\xff" * 10 + b"\x01")),
    b"DPDM\x01\x02\x00\x00\x00{}",
    b"DPDM\x09\x00\x00\x00\x00",
]
nested = b""
for _ in range(200):
    nested = length_delimited(2, nested)
HOSTILE_SPECIALS.append(length_delimited(4, nested))


@st.composite
def framed_bodies(draw: st.DrawFn) -> bytes:
    """A well-formed Message whose body is arbitrary bytes: reaches every message's parser and checks."""
    fd = draw(st.sampled_from(list(pb.Message.DESCRIPTOR.oneofs_by_name["body"].fields)))
    payload = draw(st.one_of(st.binary(max_size=128), st.sampled_from(VALID).map(lambda w: w[2:])))
    return length_delimited(fd.number, payload)


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 5e-324, 1e-300, 0.29, 0.3, 5.0, 1e6, 1.5e6, 1e154, 1e300]),
)
INT32 = st.one_of(st.integers(-3, 70), st.sampled_from([0, -1, 2**31 - 1, -(2**31)]))
INT64 = st.one_of(st.integers(-3, 70), st.sampled_from([0, -1, 2**31, 2**62, 2**63 - 1, -(2**63)]))
TEXT = st.one_of(st.text(max_size=16), st.sampled_from(["", "convnet", "resnet", "fz", "none", "crop_flip", "r" * 129]))
DTYPE_NAMES = st.one_of(TEXT, st.sampled_from(["float32", "float64", "int64", "uint8", "object", "<f4"]))
REQUEST_IDS = st.sampled_from(["fz", "fz-1", "fz-2", "fz-3", "fz:4", "fz\n", "fz/5"])
SCALAR_VALUES = {
    FieldDescriptor.CPPTYPE_DOUBLE: FLOATS,
    FieldDescriptor.CPPTYPE_INT32: INT32,
    FieldDescriptor.CPPTYPE_INT64: INT64,
    FieldDescriptor.CPPTYPE_STRING: TEXT,
}


def hostile_values(fd: FieldDescriptor) -> st.SearchStrategy:
    """Values of the field's own type (so they get past parsing) but hostile: edge numbers, odd strings."""
    if fd.name == "dtype":
        return DTYPE_NAMES
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return SCALAR_VALUES[fd.cpp_type]


def mutate(draw: st.DrawFn, msg: Any, weighted: tuple[str, ...] = ()) -> None:
    """Give one field of ``msg`` (or of a message inside it) a hostile value, or clear it."""
    fields = list(msg.DESCRIPTOR.fields) + [msg.DESCRIPTOR.fields_by_name[n] for n in weighted]
    if not fields:
        return
    fd = draw(st.sampled_from(fields))
    if draw(st.integers(0, 5)) == 0:
        msg.ClearField(fd.name)
    elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value = getattr(msg, fd.name)
        value.clear()
        value.update(draw(st.dictionaries(TEXT, FLOATS, max_size=4)))
    elif fd.message_type is not None and fd.is_repeated:
        items = getattr(msg, fd.name)
        mutate(draw, items[draw(st.integers(0, len(items) - 1))] if items and draw(st.booleans()) else items.add())
    elif fd.message_type is not None:
        mutate(draw, getattr(msg, fd.name))
    elif fd.is_repeated:
        del getattr(msg, fd.name)[:]
        getattr(msg, fd.name).extend(draw(st.lists(hostile_values(fd), max_size=6)))
    else:
        setattr(msg, fd.name, draw(hostile_values(fd)))


@st.composite
def field_replaced(draw: st.DrawFn) -> bytes:
    """A valid encoding with one field (at any depth) given a hostile value of its type, or cleared."""
    m = pb.Message()
    m.ParseFromString(draw(st.sampled_from(VALID)))
    mutate(draw, getattr(m, m.WhichOneof("body")))
    return m.SerializeToString()


@st.composite
def typed_mutation(draw: st.DrawFn, requests_only: bool = False) -> bytes:
    """A valid encoding with 0-3 fields (mostly one) given hostile values of the right type, so it mostly
    gets past decoding into the owner's validation.

    Feature requests (the only messages here that can spend) get ids from a small pool, so repeats and
    id conflicts happen, and sometimes a consistent draw count (both seed lists of one length).
    """
    m = pb.Message()
    m.ParseFromString(draw(st.sampled_from(VALID[2:3] if requests_only else VALID)))
    body = getattr(m, m.WhichOneof("body"))
    # The privacy parameters weigh double: they decide what is spent.
    weighted = tuple(n for n in ("noise_multiplier", "expected_group_size") if n in body.DESCRIPTOR.fields_by_name)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        mutate(draw, body, weighted)
    if m.WhichOneof("body") == "feature_request":
        body.request_id = draw(REQUEST_IDS)
        if draw(st.booleans()):
            draws = draw(st.sampled_from([0, 1, 2, 51, 1000]))
            del body.network_seeds[:], body.augment_seeds[:]
            body.network_seeds.extend(range(draws))
            body.augment_seeds.extend(range(100, 100 + draws))
        if draw(st.integers(0, 3)):  # mostly keep them paired
            n = min(len(body.network_seeds), len(body.augment_seeds))
            del body.network_seeds[n:], body.augment_seeds[n:]
    return m.SerializeToString()


@st.composite
def byte_mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding after 1-4 bit flips, truncations, splices, insertions or deletions."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(VALID))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


ANY_BYTES = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(HOSTILE_SPECIALS),
    st.binary(max_size=256).map(lambda b: b"DPDM" + b),
    st.tuples(st.sampled_from(KINDS), st.binary(max_size=64)).map(
        lambda kb: length_delimited(pb.Message.DESCRIPTOR.fields_by_name[kb[0]].number, kb[1])
    ),
)
# Nearly half of the service's inputs are well-typed mutations of a valid request: those reach validation,
# the ledger and the mechanism; the rest exercise the decoder's refusals. (Nested one_of would flatten
# into equal weights per leaf, hence the explicit list.)
SERVICE_BRANCHES = [ANY_BYTES, framed_bodies(), byte_mutated(), field_replaced()] + [typed_mutation(True)] * 3
HOSTILE_INPUTS = st.sampled_from(SERVICE_BRANCHES).flatmap(lambda branch: branch)


# ---------------------------------------------------------------- decode


def check_decodes_or_refuses(data: bytes) -> None:
    with time_limit(EXAMPLE_TIME_LIMIT_S):
        try:
            message = decode(data)
        except ProtocolError as exc:
            assert str(exc), "a refusal must say why"
            event("refused")
            return
    assert isinstance(message, DECODED_TYPES)
    event(f"decoded {message.kind}")
    # Whatever is accepted is a faithful message: it re-encodes to bytes that decode to the same thing.
    again = encode(message)
    assert encode(decode(again)) == again


@settings(FUZZ, max_examples=400)
@given(data=ANY_BYTES)
def test_decode_arbitrary_bytes(data: bytes) -> None:
    check_decodes_or_refuses(data)


@settings(FUZZ, max_examples=400)
@given(data=framed_bodies())
def test_decode_arbitrary_bodies(data: bytes) -> None:
    check_decodes_or_refuses(data)


@settings(FUZZ, max_examples=400)
@given(data=st.one_of(field_replaced(), typed_mutation(), byte_mutated()))
def test_decode_mutated_valid_messages(data: bytes) -> None:
    check_decodes_or_refuses(data)


def test_mutations_start_from_messages_that_decode() -> None:
    """The mutators' seeds are valid, so their mutants are near-valid rather than garbage."""
    assert [type(decode(w)) for w in VALID] == [type(m) for m in valid_messages()]


# ---------------------------------------------------------------- the service, in-process


@pytest.fixture(scope="module")
def fuzz_owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnerService]:
    folder: Path = tmp_path_factory.mktemp("fuzz_owner")
    service = OwnerService(make_owner_config(folder, epsilon=10.0, max_sample_rate=0.5))
    yield service
    service.close()


SERVICE_OUTCOMES: Counter[str] = Counter()  # what the service fuzz reached, checked by the test after it


def ledger_state(owner: OwnerService) -> dict[str, tuple[str, str]]:
    return {r.request_id: (r.state, r.digest) for r in owner.ledger.rows()}


def assert_within_documented_limits(request: FeatureRequest, owner: OwnerService) -> None:
    """What the owner promises in its refusals and config holds for everything it did release."""
    lim = owner.config.limits
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", request.request_id), request.request_id
    assert 1 <= request.num_draws <= lim.max_draws_per_request
    assert lim.min_noise_multiplier <= request.noise_multiplier <= MAX_NOISE_MULTIPLIER
    assert 0 < request.expected_group_size and request.network.width <= lim.max_network_width


@settings(FUZZ, max_examples=300)
@example(data=encode(replace(VALID_REQUEST, noise_multiplier=1e300)), method="Release")  # overflowed the accountant
@example(data=encode(replace(VALID_REQUEST, expected_group_size=5e-324)), method="Release")  # sampling rate 0
@given(data=HOSTILE_INPUTS, method=st.sampled_from([None, "Release", "Release", "Release", "Describe", "Budget"]))
def test_service_answers_or_refuses_and_never_spends_on_a_refusal(
    fuzz_owner: OwnerService, data: bytes, method: str | None
) -> None:
    before = ledger_state(fuzz_owner)
    with time_limit(EXAMPLE_TIME_LIMIT_S):
        try:
            raw = fuzz_owner.answer(data, method)
        except RequestRefused as exc:
            raw = None
            refusal = exc
        again = fuzz_owner.handle(data, method=method)
    after = ledger_state(fuzz_owner)
    outcome = f"refused: {refusal.code}" if raw is None else f"answered: {decode(raw).kind}"
    event(outcome)
    SERVICE_OUTCOMES[outcome] += 1
    if raw is None:
        assert refusal.code in KNOWN_CODES, f"{refusal.code}: {refusal}"
        assert str(refusal) and len(str(refusal)) <= 2000
        assert after == before, "a refused request changed the ledger"
        assert decode(again) == ErrorReply(refusal.code, str(refusal)), "the same bytes were answered differently"
        return
    reply = decode(raw)
    assert isinstance(reply, (OwnerInfo, BudgetReport, FeatureReply))
    assert again == raw, "a retry was answered differently (or spent again)"
    if isinstance(reply, FeatureReply):
        assert_within_documented_limits(decode(data), fuzz_owner)
        new = set(after) - set(before)
        assert new <= {reply.request_id} and after[reply.request_id][0] == "released"
        assert fuzz_owner.ledger.reply(reply.request_id) == raw
        assert {k: v for k, v in after.items() if k not in new} == before
    else:
        assert after == before


def test_the_service_fuzz_reached_releases_and_many_refusals() -> None:
    """Guard against a fuzzer that only ever produces garbage: it must get past decoding into the owner."""
    if not SERVICE_OUTCOMES:
        pytest.skip("runs after test_service_answers_or_refuses_and_never_spends_on_a_refusal")
    assert SERVICE_OUTCOMES["answered: feature_reply"] >= 3, SERVICE_OUTCOMES
    assert len({o for o in SERVICE_OUTCOMES if o.startswith("refused")}) >= 6, SERVICE_OUTCOMES
