"""The distiller's Flower transport against an in-memory grid whose nodes relay to real owner services."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from deploy.flower_app.dpdistill_flower.server_app import run_settings
from deploy.presets import PRESETS
from distiller_node.client import OwnerClient, OwnerRefused, OwnerUnreachable
from distiller_node.flower_transport import GridRouter
from owner_node.service import OwnerService
from shared.wire.rpc.errors import OwnerCallError
from shared.wire.rpc.flower_records import pack_error, pack_reply, unpack_call
from tests.conftest import feature_request, make_owner_config


class MemoryGrid:
    """Stands in for Flower's Grid: a node answers at once by relaying to its owner, unless it hangs."""

    def __init__(self, nodes: dict[int, OwnerService]):
        self.nodes = dict(nodes)
        self.hanging: set[int] = set()
        self.broken: dict[int, object] = {}  # node -> the reply its relay gives instead of relaying
        self.replies: dict[str, SimpleNamespace] = {}
        self.ids = itertools.count()

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = str(next(self.ids))
            node = msg.metadata.dst_node_id
            if node in self.broken:
                self.replies[mid] = self.broken[node]
            elif node in self.nodes and node not in self.hanging:
                method, body = unpack_call(msg.content)
                try:
                    content = pack_reply(self.nodes[node].call(method, body))
                except OwnerCallError as exc:
                    content = pack_error(exc.code, exc.message)
                self.replies[mid] = SimpleNamespace(content=content, has_error=lambda: False)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]


@pytest.fixture(autouse=True)
def plain_messages(monkeypatch):
    """Flower's Message needs a running Flower run; the memory grid only reads content and destination."""

    def message(content, dst_node_id, message_type):
        return SimpleNamespace(content=content, metadata=SimpleNamespace(dst_node_id=dst_node_id))

    monkeypatch.setattr("distiller_node.flower_transport.Message", message)


@pytest.fixture
def owners(tmp_path):
    services = []
    for name in ("a", "b"):
        config = replace(make_owner_config(tmp_path / name, epsilon=5.0), owner_id=f"owner-{name}")
        services.append(OwnerService(config))
    yield services
    for s in services:
        s.close()


def test_owners_are_found_by_id_and_calls_reach_them(owners) -> None:
    grid = MemoryGrid({11: owners[0], 22: owners[1]})
    router = GridRouter(grid, poll_s=0.01)
    assert router.discover(2) == ["owner-a", "owner-b"] and router.node_of == {"owner-a": 11, "owner-b": 22}
    client = OwnerClient(router.transport("owner-b"), "owner-b")
    reply, _ = client.release(feature_request(None, "via-flower"))
    assert reply.request_id == "via-flower"
    assert owners[1].budget().num_draws == 2 and owners[0].budget().num_draws == 0
    with pytest.raises(OwnerRefused) as exc:  # a refusal crosses the relay with its code
        client.release(feature_request(None, "low", noise_multiplier=0.01))
    assert exc.value.code == "noise_too_low"


def test_a_restarted_node_with_a_new_id_is_found_again(owners) -> None:
    grid = MemoryGrid({11: owners[0]})
    router = GridRouter(grid, poll_s=0.01)
    router.discover(1)
    grid.nodes = {33: owners[0]}  # the SuperNode came back under another node id
    client = OwnerClient(router.transport("owner-a"), "owner-a", log=lambda *_: None)
    assert client.release(feature_request(None, "after-restart"))[0].request_id == "after-restart"
    assert router.node_of == {"owner-a": 33}


def test_a_node_that_vanishes_mid_call_is_a_retryable_failure(owners) -> None:
    grid = MemoryGrid({11: owners[0]})
    router = GridRouter(grid, poll_s=0.01, liveness_every_s=0.05, rediscover_wait_s=0.1)
    router.discover(1)
    grid.hanging.add(11)  # its message is never answered ...
    with pytest.raises(OwnerCallError) as exc:
        router.call_node(11, "Budget", b"", timeout_s=0.3)
    assert exc.value.code == "timeout" and exc.value.retryable

    transport = router.transport("owner-a")

    def node_leaves(method: str, body: bytes) -> bytes:
        grid.nodes = {}  # ... and then it leaves the federation
        return transport(method, body)

    grid.nodes = {}
    with pytest.raises(OwnerCallError) as exc:
        router.call_node(11, "Budget", b"", timeout_s=30)
    assert exc.value.code == "node_unavailable"
    client = OwnerClient(node_leaves, "owner-a", retry_window_s=0.5, log=lambda *_: None)
    with pytest.raises(OwnerUnreachable):  # retried, then given up with a clear message
        client.budget()


def test_a_relay_that_cannot_reach_its_owner_for_good_is_reported_at_once(owners) -> None:
    # Issue 25 item 5: a misconfigured relay or a refused certificate used to be retried for 600 s
    # (discovery) and then 900 s (each call); it never heals by waiting, so it is raised at once.
    grid = MemoryGrid({11: owners[0], 22: owners[1]})
    misconfigured = pack_error("relay_misconfigured", "cannot read the relay key /srv/St John's/relay.key")
    grid.broken[22] = SimpleNamespace(content=misconfigured, has_error=lambda: False)
    router = GridRouter(grid, poll_s=0.01, log=lambda *_: None)
    start = time.monotonic()
    with pytest.raises(OwnerCallError) as exc:
        router.discover(2, wait_s=30)
    assert time.monotonic() - start < 5
    assert exc.value.code == "relay_misconfigured" and "node 22" in exc.value.message and not exc.value.retryable

    grid.broken.clear()
    router.discover(2)
    for code in ("unauthenticated", "peer_not_allowed"):
        grid.broken[22] = SimpleNamespace(content=pack_error(code, "refused"), has_error=lambda: False)
        client = OwnerClient(router.transport("owner-b"), "owner-b", retry_window_s=30, log=lambda *_: None)
        start = time.monotonic()
        with pytest.raises(OwnerRefused) as refused:
            client.budget()
        assert refused.value.code == code and time.monotonic() - start < 5


def test_a_relay_flower_could_not_run_is_not_retried(owners) -> None:
    grid = MemoryGrid({11: owners[0]})
    router = GridRouter(grid, poll_s=0.01, log=lambda *_: None)
    router.discover(1)
    for flower_code, code in ((2, "relay_failed"), (1, "relay_failed"), (5, "node_unavailable")):
        error = SimpleNamespace(code=flower_code, reason="boom")
        grid.broken[11] = SimpleNamespace(content=None, has_error=lambda: True, error=error)
        with pytest.raises(OwnerCallError) as exc:
            router.call_node(11, "Budget", b"", timeout_s=5)
        assert exc.value.code == code and exc.value.retryable == (code == "node_unavailable")


@pytest.mark.parametrize(("value", "expected"), [(-1, PRESETS["default"]["subspace_dim"]), (0, 0), (64, 64)])
def test_the_run_config_can_ask_for_no_projection(value: int, expected: int) -> None:
    # 0 means "no projection" over Flower as on the command line; -1 (the default) is the preset's.
    def subspace_dim(run_config: dict) -> int:
        *_, settings = run_settings(run_config)
        return settings.distiller_config().sampling.subspace_dim

    assert subspace_dim({"preset": "default", "subspace-dim": value}) == expected
    assert subspace_dim({"preset": "default"}) == PRESETS["default"]["subspace_dim"]
    with pytest.raises(ValueError, match="subspace-dim must be"):
        run_settings({"preset": "default", "subspace-dim": -2})
