"""Budget enforcement and limits come from the owner's config; refusals spend nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from owner_node.config import OwnerConfig, write_config
from owner_node.ledger import Ledger
from owner_node.service import OwnerService, request_digest
from shared.compute.networks import NetworkSpec
from shared.compute.signals import get_signal_kind
from shared.wire.messages import BudgetReport, BudgetRequest, ErrorReply, FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, make_owner_config


def _code(service: OwnerService, request) -> str:
    reply = decode(service.handle(encode(request)))
    return reply.code if isinstance(reply, ErrorReply) else "ok"


def test_request_beyond_budget_is_refused_and_spends_nothing(tmp_path: Path) -> None:
    service = OwnerService(make_owner_config(tmp_path, epsilon=0.5))
    try:
        assert _code(service, feature_request(service, "small", draws=2, noise_multiplier=6.0)) == "ok"
        before = service.budget()
        reply = decode(service.handle(encode(feature_request(service, "big", draws=40, noise_multiplier=0.5))))
        assert isinstance(reply, ErrorReply) and reply.code == "budget_exceeded"
        assert "budget" in reply.message and "0.5" in reply.message
        after = service.budget()
        assert after.num_draws == before.num_draws and after.epsilon_prv == before.epsilon_prv
        assert [r.request_id for r in service.ledger.rows()] == ["small"]
    finally:
        service.close()


def test_many_small_requests_never_exceed_the_budget(tmp_path: Path) -> None:
    service = OwnerService(make_owner_config(tmp_path, epsilon=1.0))
    try:
        codes = [_code(service, feature_request(service, f"r{i}", draws=3, noise_multiplier=5.0)) for i in range(12)]
        assert "budget_exceeded" in codes
        first_refusal = codes.index("budget_exceeded")
        assert all(c == "budget_exceeded" for c in codes[first_refusal:])
        report = decode(service.handle(encode(BudgetRequest())))
        assert isinstance(report, BudgetReport)
        assert 0 < report.epsilon_prv <= 1.0
    finally:
        service.close()


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"draws": 51}, "too_many_draws"),
        ({"noise_multiplier": 0.01}, "noise_too_low"),
        ({"expected_group_size": 1e9}, "sample_rate_too_high"),
        (
            {"network": NetworkSpec(arch="resnet", width=8, depth=2, image_size=16, num_classes=4)},
            "unsupported_network",
        ),
        ({"network": NetworkSpec(width=100000, depth=2, image_size=16, num_classes=4)}, "unsupported_network"),
        ({"subspace_dim": 10**6}, "invalid_request"),
        ({"aux_hash": "0" * 64}, "unknown_aux"),
        ({"augmentation": "teleport"}, "invalid_request"),
        ({"request_id": "../../etc/passwd"}, "invalid_request"),
    ],
)
def test_limits_come_from_owner_config(tmp_path: Path, overrides: dict, code: str) -> None:
    service = OwnerService(make_owner_config(tmp_path, max_sample_rate=0.5))
    try:
        draws = overrides.pop("draws", 2)
        assert _code(service, feature_request(service, draws=draws, **overrides)) == code
        assert service.ledger.rows() == []
    finally:
        service.close()


def test_config_round_trips_through_toml(owner_config: OwnerConfig, tmp_path: Path) -> None:
    write_config(tmp_path / "owner.toml", owner_config)
    assert OwnerConfig.load(tmp_path / "owner.toml") == owner_config


def test_bad_config_gives_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[privacy]\nepsilon = -1\n[auxiliary]\npath='a'\n[ledger]\npath='l'\n")
    with pytest.raises(ValueError, match="epsilon"):
        OwnerConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="does not exist"):
        OwnerConfig.load(tmp_path / "missing.toml")


def test_crashed_reservation_counts_as_spent_and_retry_completes_without_new_spend(owner) -> None:
    request = feature_request(owner, "crashy")
    # Simulate a crash after the ledger reservation and before the reply was stored.
    event = owner.validate(request)
    owner.ledger.reserve("crashy", request_digest(request), event, lambda events: True)
    assert owner.budget().num_draws == 2
    reply = decode(owner.handle(encode(request)))
    assert isinstance(reply, FeatureReply)
    assert owner.budget().num_draws == 2
    assert [r.state for r in owner.ledger.rows()] == ["released"]


OWNER_LOOP = """
import sys, json
from owner_node.config import OwnerConfig
from owner_node.service import OwnerService
from shared.wire.messages import FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request
service = OwnerService(OwnerConfig.load(sys.argv[1]))
received = open(sys.argv[2], "a")
for i in range(10_000):
    reply = decode(service.handle(encode(feature_request(service, f"loop{i}", draws=3, noise_multiplier=5.0))))
    if not isinstance(reply, FeatureReply):
        break
    received.write(reply.request_id + "\\n"); received.flush()
"""


def test_ledger_survives_sigkill_mid_run(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path, epsilon=50.0)
    write_config(tmp_path / "owner.toml", config)
    received = tmp_path / "received.txt"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_LOOP, str(tmp_path / "owner.toml"), str(received)],
        cwd=root,
        env=os.environ | {"PYTHONPATH": str(root)},
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not received.exists() or len(received.read_text().split()) < 4):
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere inside a release
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    got = received.read_text().split()
    assert len(got) >= 4, "owner loop did not get going"

    ledger = Ledger(config.ledger_path)
    try:
        assert ledger.integrity_ok()
        rows = {r.request_id: r for r in ledger.rows()}
        # Everything the distiller received is recorded as released ...
        assert all(rows[rid].state == "released" for rid in got)
        # ... and at most one release was in flight (reserved, counted, never returned).
        assert sum(r.state == "reserved" for r in rows.values()) <= 1
        assert len(rows) - len(got) <= 1
    finally:
        ledger.close()
    # The restarted owner still counts every reserved draw and keeps serving.
    service = OwnerService(config)
    try:
        assert service.budget().num_draws == 3 * len(rows)
        assert _code(service, feature_request(service, "after-restart", draws=3, noise_multiplier=5.0)) == "ok"
    finally:
        service.close()
    json.dumps(got)


def test_owner_keeps_serving_after_an_internal_error(owner, monkeypatch) -> None:
    request = feature_request(owner, "flaky")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(owner.mechanism, "release", broken)
    reply = decode(owner.handle(encode(request)))
    assert isinstance(reply, ErrorReply) and reply.code == "internal_error" and "fire" not in reply.message
    assert [r.state for r in owner.ledger.rows()] == ["reserved"]  # counted: work on private data had begun
    monkeypatch.undo()
    assert isinstance(decode(owner.handle(encode(request))), FeatureReply)
    assert owner.budget().num_draws == 2


def test_gradient_basis_memory_is_capped_by_the_owner_config(tmp_path: Path) -> None:
    """max_basis_mb bounds the owner's per-draw working memory; the request cannot raise it."""
    service = OwnerService(make_owner_config(tmp_path, max_basis_mb=1, max_message_bytes=200_000))
    try:
        wide = NetworkSpec(width=64, depth=2, image_size=16, num_classes=4)  # 40,516 parameters
        assert _code(service, feature_request(service, "g1", network=wide, signal="gradients")) == "too_large"
        # Unprojected gradients of a small network: the reply would exceed max_message_bytes.
        big_reply = feature_request(service, "g2", draws=20, subspace_dim=0, signal="gradients")
        assert _code(service, big_reply) == "too_large"
        assert service.ledger.rows() == []
        reply = decode(service.handle(encode(feature_request(service, "g3", signal="gradients"))))
        assert reply.noisy_sums.shape == (2, 4, 6)
        reply = decode(service.handle(encode(feature_request(service, "g4", subspace_dim=0, signal="gradients"))))
        assert reply.noisy_sums.shape == (
            2,
            4,
            get_signal_kind("gradients").signal_dim(feature_request(service).network),
        )
        assert [r.request_id for r in service.ledger.rows()] == ["g3", "g4"]
    finally:
        service.close()


def test_activation_memory_is_capped_by_the_owner_config(tmp_path: Path) -> None:
    """max_activation_mb bounds one pass's activations: a network whose single image needs more is
    refused before anything is reserved; below it the owner answers, in chunks it chooses itself."""
    service = OwnerService(make_owner_config(tmp_path, max_activation_mb=0.5))
    try:
        wide = NetworkSpec(width=256, depth=2, image_size=16, num_classes=4)  # 1 MB an image
        refused = decode(service.handle(encode(feature_request(service, "a1", network=wide))))
        assert isinstance(refused, ErrorReply) and refused.code == "too_large"
        assert "activations" in refused.message and "0.5 MB" in refused.message
        assert service.ledger.rows() == []
        reply = decode(service.handle(encode(feature_request(service, "a2"))))
        assert isinstance(reply, FeatureReply)
        assert service.mechanism.activation_budget_mb == 0.5  # from the owner's config, not the request
    finally:
        service.close()
