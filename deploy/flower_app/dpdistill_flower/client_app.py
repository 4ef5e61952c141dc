"""The relay Flower runs at the hospital: forwards each call to the owner service and nothing else.

Where the owner service is and how to trust it come only from the SuperNode's node config, which
the hospital sets through ``deploy/roles/supernode.sh`` (``shared.wire.rpc.relay_config`` writes it so that
any path survives Flower's parser); a message cannot redirect the relay. It imports neither torch
nor the data and needs no access to either: every privacy rule is enforced by the owner service,
which Flower cannot replace.

Every failure comes back to the distiller as a code, never as an exception in Flower: the relay's own
settings or files wrong is ``relay_misconfigured``, a certificate refused in either direction is
``unauthenticated`` (or the owner's ``peer_not_allowed``); neither is retried. Only an owner that
cannot be reached (``owner_unavailable``) is worth retrying.
"""

from __future__ import annotations

import json
import os

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError
from shared.wire.rpc.flower_records import pack_error, pack_reply, unpack_call
from shared.wire.rpc.relay_config import endpoint_from_node_config

app = ClientApp()


SIMULATED_OWNERS_ENV = "DPDISTILL_SIMULATED_OWNERS"


def endpoint_from(node_config: dict) -> OwnerEndpoint:
    endpoint = endpoint_from_node_config(node_config)
    if endpoint is None and "partition-id" in node_config and os.environ.get(SIMULATED_OWNERS_ENV):
        # Flower's simulation gives nodes only a partition id; the local launcher lists the
        # owner services' loopback addresses in the environment (not in any message).
        addresses = json.loads(os.environ[SIMULATED_OWNERS_ENV])
        endpoint = OwnerEndpoint(addresses[int(node_config["partition-id"])])
    if endpoint is None:
        raise OwnerCallError("relay_misconfigured", "the SuperNode has no owner-address in its --node-config")
    return endpoint


def answer(content: RecordDict, node_config: dict) -> RecordDict:
    """The reply content for one call: the owner's answer, or an error record with its code."""
    try:
        method, body = unpack_call(content)
    except (KeyError, TypeError, ValueError) as exc:
        return pack_error("relay_error", f"not a call to an owner: {type(exc).__name__}: {exc}")
    try:
        channel = OwnerChannel(endpoint_from(node_config))
    except OwnerCallError as exc:
        return pack_error(exc.code, exc.message)
    except Exception as exc:  # whatever it is, the hospital must see it, not a retry loop
        return pack_error("relay_misconfigured", f"the relay could not open its channel: {type(exc).__name__}: {exc}")
    try:
        return pack_reply(channel.call(method, body))
    except OwnerCallError as exc:
        return pack_error(exc.code, exc.message)
    except Exception as exc:  # a bug in the relay: reported, not retried
        return pack_error("relay_error", f"the relay failed: {type(exc).__name__}: {exc}")
    finally:
        channel.close()


@app.query()
def relay(msg: Message, context: Context) -> Message:
    return Message(content=answer(msg.content, dict(context.node_config)), reply_to=msg)
