"""Messages survive encoding unchanged; malformed or hostile bytes are refused cleanly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from shared.accounting import SampledGaussianEvent
from shared.networks import NetworkSpec
from shared.protocol import (
    MAGIC,
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
from shared.protocol import WIRE_VERSION as V
from tests.conftest import feature_request

MESSAGES = [
    DescribeRequest(),
    BudgetRequest(),
    OwnerInfo("o", ("a", "b"), (3, 4), (1, 28, 28), (0.1, 0.3), "h" * 64, 1.0, {"max_draws_per_request": 3}),
    FeatureRequest("id-1", NetworkSpec(), (1, 2), (3, 4), "crop_flip", 10, "h", 50.0, 1.2),
    FeatureReply(
        "id-1",
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        (1.0, 2.0, 3.0),
        1.2,
        1.0,
        (SampledGaussianEvent(1.2, 0.01, 2),),
    ),
    BudgetReport("o", 1.0, 1e-5, 0.5, 0.6, 2, 40, 1.0, (SampledGaussianEvent(1.2, 0.01, 40),), ("class names",)),
    ErrorReply("budget_exceeded", "no"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_round_trip(message) -> None:
    back = decode(encode(message))
    assert type(back) is type(message)
    if isinstance(message, FeatureReply):
        assert np.array_equal(back.noisy_sums, message.noisy_sums)
        assert back.events == message.events and back.expected_counts == message.expected_counts
    else:
        assert back == message


def _raw(kind: str, fields: dict, arrays: list | None = None) -> bytes:
    head = json.dumps({"kind": kind, "fields": fields, "arrays": arrays or [], "body_bytes": 0}).encode()
    return MAGIC + struct.pack("<BI", V, len(head)) + head


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x80\x04\x95pickle",
        MAGIC + b"\x09\x00\x00\x00\x00",
        MAGIC + struct.pack("<BI", V, 10**9) + b"{}",
        encode(MESSAGES[3])[:-5],
        _raw("feature_request", {"request_id": 5}),
        _raw("no_such_kind", {}),
        _raw(
            "feature_reply",
            {"request_id": "x", "expected_counts": [1.0], "noise_multiplier": 1.0, "clip_norm": 1.0, "events": []},
            ["noisy_sums"],
        ),
        encode(MESSAGES[4])[:-40],
        encode(MESSAGES[4]) + b"trailing",
    ],
)
def test_malformed_bytes_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_non_finite_numbers_are_refused() -> None:
    wire = encode(MESSAGES[3]).replace(b'"noise_multiplier": 1.2', b'"noise_multiplier": NaN')
    with pytest.raises(ProtocolError, match="finite"):
        decode(wire)


def test_size_limit() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(encode(MESSAGES[4]), max_bytes=100)


def test_owner_answers_garbage_with_a_clear_error(owner) -> None:
    reply = decode(owner.handle(b"\x00" * 50))
    assert isinstance(reply, ErrorReply) and reply.code == "bad_message"
    assert isinstance(decode(owner.handle(encode(feature_request(owner)))), FeatureReply)


def test_committed_grpc_stubs_match_the_proto(tmp_path) -> None:
    """shared/rpc/owner_pb2*.py are generated from owner.proto (deploy/gen_proto.sh); keep them in step."""
    from pathlib import Path

    from grpc_tools import protoc

    root = Path(__file__).resolve().parents[1]
    args = ["protoc", f"-I{root}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    assert protoc.main([*args, str(root / "shared" / "rpc" / "owner.proto")]) == 0
    for name in ("owner_pb2.py", "owner_pb2_grpc.py"):
        assert (tmp_path / "shared" / "rpc" / name).read_text() == (root / "shared" / "rpc" / name).read_text(), name
