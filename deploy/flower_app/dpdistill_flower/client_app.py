"""The relay Flower runs at the hospital: forwards each call to the owner service and nothing else.

Where the owner service is and how to trust it come only from the SuperNode's node config, which
the hospital sets (``--node-config "owner-address='127.0.0.1:50051' owner-ca='...'"``); a message
cannot redirect the relay. It imports neither torch nor the data and needs no access to either:
every privacy rule is enforced by the owner service, which Flower cannot replace.
"""

from __future__ import annotations

import json
import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from shared.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.rpc.errors import OwnerCallError
from shared.rpc.flower_records import pack_error, pack_reply, unpack_call

app = ClientApp()


SIMULATED_OWNERS_ENV = "DPDISTILL_SIMULATED_OWNERS"


def endpoint_from(node_config: dict) -> OwnerEndpoint:
    def get(key: str) -> str | None:
        value = node_config.get(key)
        return str(value) if value not in (None, "") else None

    address = get("owner-address")
    if address is None and "partition-id" in node_config and os.environ.get(SIMULATED_OWNERS_ENV):
        # Flower's simulation gives nodes only a partition id; the local launcher lists the
        # owner services' loopback addresses in the environment (not in any message).
        addresses = json.loads(os.environ[SIMULATED_OWNERS_ENV])
        address = addresses[int(node_config["partition-id"])]
    if address is None:
        raise OwnerCallError("relay_misconfigured", "the SuperNode has no owner-address in its --node-config")
    return OwnerEndpoint(address, get("owner-ca"), get("relay-cert"), get("relay-key"))


@app.query()
def relay(msg: Message, context: Context) -> Message:
    try:
        method, body = unpack_call(msg.content)
        channel = OwnerChannel(endpoint_from(context.node_config))
        try:
            reply = pack_reply(channel.call(method, body))
        finally:
            channel.close()
    except OwnerCallError as exc:
        reply = pack_error(exc.code, exc.message)
    except (KeyError, TypeError, ValueError) as exc:
        reply = pack_error("relay_error", f"{type(exc).__name__}: {exc}")
    return Message(content=reply, reply_to=msg)
