"""The distiller's transport over Flower: calls to owners become messages to the SuperNodes' relays.

Each owner is found by asking every connected node to describe its owner (the relay forwards the
call to its own owner service), so the distiller addresses owners by owner id, not by Flower node
id. A node that vanishes (killed SuperNode, lost connection) is a retryable failure: the client
retries the same request id, rediscovering nodes first, and the owner's ledger makes the retry free.
A fault that waiting cannot mend (a relay that is misconfigured, a certificate refused, a relay
Flower could not run) is raised at once, naming the node, also while owners are being discovered.
"""

from __future__ import annotations

import threading
import time

from flwr.app import Message
from flwr.serverapp import Grid

from distiller_node.client import Transport
from shared.wire.messages import DescribeRequest, OwnerInfo
from shared.wire.protocol import decode, encode
from shared.wire.rpc.errors import OwnerCallError
from shared.wire.rpc.flower_records import MESSAGE_TYPE, pack_call, unpack_reply

# Flower's error codes (flwr.common.constant.ErrorCode) that say the relay itself could not run: the
# ClientApp failed to load (1), raised (2) or came in an invalid FAB (7). Retrying does not help.
RELAY_FAILED_ERRORS = frozenset({1, 2, 7})


class GridRouter:
    """Thread-safe calls through a Flower ``Grid`` (owners are served by parallel threads)."""

    def __init__(
        self,
        grid: Grid,
        poll_s: float = 0.2,
        liveness_every_s: float = 20.0,
        rediscover_wait_s: float = 60.0,
        log=print,
    ):
        self.grid = grid
        self.rediscover_wait_s = rediscover_wait_s
        self.poll_s = poll_s
        self.liveness_every_s = liveness_every_s
        self.log = log
        self._grid_lock = threading.Lock()
        self._discover_lock = threading.Lock()
        self.node_of: dict[str, int] = {}

    def node_ids(self) -> list[int]:
        with self._grid_lock:
            return list(self.grid.get_node_ids())

    def call_node(self, node_id: int, method: str, body: bytes, timeout_s: float) -> bytes:
        msg = Message(content=pack_call(method, body), dst_node_id=node_id, message_type=MESSAGE_TYPE)
        with self._grid_lock:
            ids = list(self.grid.push_messages([msg]))
        start = time.monotonic()
        next_check = start + self.liveness_every_s
        while True:
            with self._grid_lock:
                replies = list(self.grid.pull_messages(ids))
            if replies:
                break
            now = time.monotonic()
            if now - start > timeout_s:
                raise OwnerCallError("timeout", f"no answer from node {node_id} within {timeout_s:.0f} s")
            if now > next_check:
                next_check = now + self.liveness_every_s
                if node_id not in self.node_ids():
                    raise OwnerCallError("node_unavailable", f"node {node_id} left the federation")
            time.sleep(self.poll_s)
        reply = replies[0]
        if reply.has_error():
            code = "relay_failed" if reply.error.code in RELAY_FAILED_ERRORS else "node_unavailable"
            raise OwnerCallError(code, f"node {node_id}: Flower error {reply.error.code}: {reply.error.reason}")
        body, error = unpack_reply(reply.content)
        if error is not None:
            raise OwnerCallError(*error)
        return body

    def discover(self, expected: int, wait_s: float = 600.0, timeout_s: float = 300.0) -> list[str]:
        """Wait for ``expected`` nodes and learn which owner each relays to; returns the owner ids."""
        with self._discover_lock:
            deadline = time.monotonic() + wait_s
            while True:
                nodes = self.node_ids()
                found: dict[str, int] = {}
                for node in nodes:
                    try:
                        info = decode(self.call_node(node, "Describe", encode(DescribeRequest()), timeout_s))
                    except OwnerCallError as exc:
                        if not exc.retryable:
                            raise OwnerCallError(exc.code, f"node {node}, asked for its owner: {exc.message}") from None
                        self.log(f"node {node} did not describe its owner ({exc}); will retry")
                        continue
                    if isinstance(info, OwnerInfo):
                        if info.owner_id in found and found[info.owner_id] != node:
                            self.log(f"owner '{info.owner_id}' is reachable through two nodes; using {node}")
                        found[info.owner_id] = node
                if len(found) >= expected:
                    self.node_of = found
                    return sorted(found)
                if time.monotonic() > deadline:
                    raise OwnerCallError(
                        "node_unavailable",
                        f"found {len(found)} of {expected} owners ({sorted(found)}) after {wait_s:.0f} s",
                    )
                time.sleep(min(3.0, wait_s))

    def transport(self, owner_id: str, timeout_s: float = 6 * 3600.0) -> Transport:
        """A transport to one owner, rerouting when its node changed (e.g. after a SuperNode restart)."""

        def call(method: str, body: bytes) -> bytes:
            node = self.node_of.get(owner_id)
            if node is None or node not in self.node_ids():
                self.discover(len(self.node_of) or 1, wait_s=self.rediscover_wait_s)
                node = self.node_of.get(owner_id)
                if node is None:
                    raise OwnerCallError("node_unavailable", f"no node relays to owner '{owner_id}' now")
            return self.call_node(node, method, body, timeout_s)

        return call
