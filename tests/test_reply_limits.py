"""A reply the transports cannot carry must be refused before it is reserved, never spent and lost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from owner_node.config import MAX_REPLY_BYTES, Limits, OwnerConfig, write_config
from owner_node.service import OwnerService
from shared.wire.messages import ErrorReply, FeatureReply
from shared.wire.protocol import MAX_MESSAGE_BYTES, decode, encode
from shared.wire.rpc.channel import MAX_MESSAGE_BYTES as GRPC_MAX_BYTES
from tests.conftest import feature_request, kip_request, make_owner_config


def test_message_limit_must_fit_every_transport() -> None:
    assert MAX_REPLY_BYTES < min(MAX_MESSAGE_BYTES, GRPC_MAX_BYTES, 10**9)  # decoder, gRPC, SQLite blob
    Limits(max_message_bytes=MAX_REPLY_BYTES)
    for bad in (MAX_REPLY_BYTES + 1, 300 * 2**20, 2 * 10**9, 0, -5):
        with pytest.raises(ValueError, match="max_message_bytes"):
            Limits(max_message_bytes=bad)


def test_config_file_with_a_limit_above_the_transports_is_refused_at_load(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path / "owner")
    path = tmp_path / "owner.toml"
    write_config(path, config)
    text = path.read_text().replace(
        f"max_message_bytes = {config.limits.max_message_bytes}", "max_message_bytes = 1000000000"
    )
    path.write_text(text)
    with pytest.raises(ValueError, match="max_message_bytes"):
        OwnerConfig.load(path)


@pytest.mark.parametrize(
    "field, value", [("max_sample_rate", 0.0), ("max_sample_rate", 1.5), ("min_noise_multiplier", 0)]
)
def test_other_limits_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


def test_feature_reply_over_the_limit_is_refused_before_reserving(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path / "owner", epsilon=10.0)
    request = feature_request(None, draws=2, subspace_dim=6)
    fits = OwnerService(replace(config, limits=replace(config.limits, max_message_bytes=1 << 20)))
    try:
        reply = decode(fits.handle(encode(request)))
        assert isinstance(reply, FeatureReply)
    finally:
        fits.close()
    # Room for the request, not for the reply with its header: refused, and nothing is spent.
    tight = replace(config, ledger_path=tmp_path / "tight.sqlite")
    owner = OwnerService(replace(tight, limits=replace(config.limits, max_message_bytes=len(encode(request)) + 100)))
    try:
        refusal = decode(owner.handle(encode(replace(request, request_id="r2"))))
        assert isinstance(refusal, ErrorReply) and refusal.code == "too_large" and "reply" in refusal.message
        assert owner.ledger.events() == []
    finally:
        owner.close()


def test_kip_step_reply_over_the_limit_is_refused_before_reserving(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path / "owner", epsilon=10.0)
    request = kip_request(num_steps=1)
    owner = OwnerService(replace(config, limits=replace(config.limits, max_message_bytes=len(encode(request)) + 100)))
    try:
        refusal = decode(owner.handle(encode(request)))
        assert isinstance(refusal, ErrorReply) and refusal.code == "too_large" and "synthetic images" in refusal.message
        assert owner.ledger.events() == []
    finally:
        owner.close()
