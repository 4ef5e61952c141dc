"""Fuzzing the owner's front door: whatever bytes arrive, the answer is a message or a clear refusal.

``shared.protocol.decode`` must return a known message or raise ``ProtocolError``; the service must
answer with a reply or a ``RequestRefused`` with a known code, never spend budget on a refusal,
and answer the same bytes the same way twice (a retry never spends again). Inputs are arbitrary
bytes, arbitrary headers in a valid frame, and mutations (bit flips, truncation, splicing, field
replacement) of valid encodings. Runs are derandomised and bounded so the suite stays fast and
repeatable; every example also runs under a wall-clock alarm, so a hang fails instead of stalling.
"""

from __future__ import annotations

import json
import re
import signal
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from owner_node.service import OwnerService
from owner_node.validation import MAX_NOISE_MULTIPLIER, RequestRefused
from shared.accounting import SampledGaussianEvent
from shared.protocol import (
    MAGIC,
    MESSAGES,
    WIRE_VERSION,
    BudgetReport,
    BudgetRequest,
    DescribeRequest,
    ErrorReply,
    FeatureReply,
    FeatureRequest,
    OwnerInfo,
    ProtocolError,
    decode,
    encode,
)
from shared.rpc.errors import STATUS_FOR_CODE
from tests.conftest import feature_request, make_owner_config

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


def frame(head: bytes, body: bytes = b"", version: int = WIRE_VERSION) -> bytes:
    return MAGIC + struct.pack("<BI", version, len(head)) + head + body


def split(wire: bytes) -> tuple[dict, bytes]:
    (head_len,) = struct.unpack("<I", wire[5:9])
    return json.loads(wire[9 : 9 + head_len]), wire[9 + head_len :]


def valid_messages() -> list[Any]:
    """One valid message of every kind; the feature request is one this test's owner would answer."""
    event = SampledGaussianEvent(5.0, 0.25, 1)
    return [
        DescribeRequest(),
        BudgetRequest(),
        feature_request(None, "fz", draws=1, subspace_dim=3),
        FeatureReply("fz", np.arange(12, dtype=np.float32).reshape(1, 4, 3), (5.0,) * 4, 5.0, 1.0, (event,)),
        OwnerInfo("o", ("a", "b"), (3, 4), (1, 16, 16), (0.5, 0.5), "h" * 64, 1.0, {"max_draws_per_request": 3}),
        BudgetReport("o", 1.0, 1e-5, 0.5, 0.6, 1, 1, 1.0, (event,), ("class names",)),
        ErrorReply("budget_exceeded", "no"),
    ]


VALID = [encode(m) for m in valid_messages()]  # VALID[2] is the feature request
VALID_REQUEST = valid_messages()[2]
EDGE_INTS = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30, 10**300, 10**400])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    EDGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def framed_headers(draw: st.DrawFn) -> bytes:
    """A well-framed message whose JSON header is arbitrary: reaches every message's field checks."""
    kind = draw(st.sampled_from([*MESSAGES, "nope"]))
    fields = draw(st.dictionaries(st.sampled_from(_field_names()), JSON_VALUES, max_size=10))
    head = {"kind": kind, "fields": fields, "arrays": draw(st.sampled_from([[], ["noisy_sums"]])), "body_bytes": 0}
    if draw(st.booleans()):
        head = draw(st.dictionaries(st.sampled_from(["kind", "fields", "arrays", "body_bytes"]), JSON_VALUES)) | {
            k: v for k, v in head.items() if draw(st.booleans())
        }
    return frame(json.dumps(head).encode())


def _field_names() -> list[str]:
    names: set[str] = {"network"}
    for wire in VALID:
        head, _ = split(wire)
        names |= set(head["fields"])
    return sorted(names)


@st.composite
def field_replaced(draw: st.DrawFn) -> bytes:
    """A valid encoding with one header field (or network field, or framing key) replaced or dropped."""
    head, body = split(draw(st.sampled_from(VALID)))
    target = head
    if "network" in head["fields"] and draw(st.booleans()):
        target = head["fields"]["network"]
    elif draw(st.booleans()):
        target = head["fields"]
    if not target:
        target = head
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.integers(0, 4)) == 0:
        del target[key]
    else:
        target[key] = draw(JSON_VALUES)
    return frame(json.dumps(head).encode(), body)


FLOATS = st.one_of(  # JSON integers are valid in float fields too
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 5e-324, 1e-300, 0.29, 0.3, 5.0, 1e6, 1.5e6, 1e154, 1e300]),
    EDGE_INTS,
)
INTS = st.one_of(st.integers(-3, 70), EDGE_INTS)
TEXT = st.one_of(st.text(max_size=16), st.sampled_from(["", "convnet", "resnet", "fz", "none", "crop_flip", "r" * 129]))
REQUEST_IDS = st.sampled_from(["fz", "fz-1", "fz-2", "fz-3", "fz:4", "fz\n", "fz/5"])


def typed_like(value: Any) -> st.SearchStrategy:
    """Values of the same JSON type as ``value`` but hostile: edge numbers, odd strings, other lengths."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return INTS
    if isinstance(value, float):
        return FLOATS
    if isinstance(value, str):
        return TEXT
    if isinstance(value, list):
        return st.lists(typed_like(value[0]) if value else JSON_VALUES, max_size=6)
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: typed_like(v) for k, v in value.items()})
    return JSON_VALUES


# JSON tokens that json.dumps would never write but a hostile peer can: overflowing and over-long numbers,
# non-finite literals, nesting past the parser's recursion limit, lone surrogates.
RAW_TOKENS = st.sampled_from(
    ["1e999", "-1e999", "1E-400", "NaN", "-Infinity", str(10**400), "9" * 5000, "[" * 3000 + "]" * 3000, '"\\ud800"']
)


@st.composite
def typed_mutation(draw: st.DrawFn, requests_only: bool = False) -> bytes:
    """A valid encoding with 0-3 fields (mostly one) given hostile values: of the right JSON type, so it
    mostly gets past decoding, or now and then a raw JSON token spliced in.

    Feature requests (the only messages that can spend) get ids from a small pool, so repeats and
    id conflicts happen, and sometimes a consistent draw count (both seed lists of one length).
    """
    head, body = split(draw(st.sampled_from(VALID[2:3] if requests_only else VALID)))
    fields = head["fields"]
    raw: dict[str, str] = {}
    # The privacy parameters weigh double: they decide what is spent.
    keys = sorted(fields) + [k for k in ("noise_multiplier", "expected_group_size") if k in fields]
    for i in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3])) if fields else 0):
        target = fields
        key = draw(st.sampled_from(keys))
        if key == "network":
            target, key = fields["network"], draw(st.sampled_from(sorted(fields["network"])))
        if draw(st.integers(0, 5)) == 0:
            placeholder = f"@@raw{i}@@"
            target[key] = placeholder
            raw[json.dumps(placeholder)] = draw(RAW_TOKENS)
        else:
            target[key] = draw(typed_like(target[key]))
    if head["kind"] == "feature_request":
        fields["request_id"] = draw(REQUEST_IDS)
        if draw(st.booleans()):
            draws = draw(st.sampled_from([0, 1, 2, 51, 1000]))
            fields["network_seeds"] = list(range(draws))
            fields["augment_seeds"] = list(range(100, 100 + draws))
        seeds = (fields.get("network_seeds"), fields.get("augment_seeds"))
        if all(isinstance(v, list) for v in seeds) and draw(st.integers(0, 3)):  # mostly keep them paired
            n = min(map(len, seeds))
            fields["network_seeds"], fields["augment_seeds"] = seeds[0][:n], seeds[1][:n]
    text = json.dumps(head)
    for placeholder, token in raw.items():
        text = text.replace(placeholder, token)
    return frame(text.encode(), body)


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
    st.binary(max_size=256).map(lambda b: MAGIC + b),
    st.binary(max_size=256).map(lambda b: frame(b)),
)
# Nearly half of the service's inputs are well-typed mutations of a valid request: those reach validation,
# the ledger and the mechanism; the rest exercise the decoder's refusals. (Nested one_of would flatten
# into equal weights per leaf, hence the explicit list.)
SERVICE_BRANCHES = [ANY_BYTES, framed_headers(), byte_mutated(), field_replaced()] + [typed_mutation(True)] * 3
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
    assert type(message) in MESSAGES.values()
    event(f"decoded {message.kind}")
    # Whatever is accepted is a faithful message: it re-encodes to bytes that decode to the same thing.
    again = encode(message)
    assert encode(decode(again)) == again


@settings(FUZZ, max_examples=400)
@given(data=ANY_BYTES)
def test_decode_arbitrary_bytes(data: bytes) -> None:
    check_decodes_or_refuses(data)


@settings(FUZZ, max_examples=400)
@given(data=framed_headers())
def test_decode_arbitrary_headers(data: bytes) -> None:
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
