"""Tries every path it is sent, then calls the owner service through the SuperNode's configured channel."""

from __future__ import annotations

import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def probe(msg: Message, context: Context) -> Message:
    found = {"uid": str(os.getuid())}
    for i, path in enumerate(str(msg.content["probe"]["paths"]).split(":")):
        try:
            with open(path, "rb") as f:
                found[f"read{i}"] = f"READ {len(f.read(64))} bytes"
        except OSError as exc:
            found[f"read{i}"] = f"{type(exc).__name__}: {exc}"
    try:
        from deploy.flower_app.dpdistill_flower.client_app import endpoint_from
        from shared.wire.rpc.channel import OwnerChannel

        channel = OwnerChannel(endpoint_from(context.node_config), timeout_s=60)
        found["service"] = f"answered {len(channel.call('Describe', bytes(msg.content['probe']['describe'])))} bytes"
        channel.close()
    except Exception as exc:  # report, do not crash: the test reads this
        found["service"] = f"{type(exc).__name__}: {exc}"
    return Message(content=RecordDict({"found": ConfigRecord(found)}), reply_to=msg)
