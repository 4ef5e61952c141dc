"""Sends the probe to every SuperNode and writes what each found to ``out``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from shared.wire.messages import DescribeRequest
from shared.wire.protocol import encode

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    nodes = list(grid.get_node_ids())
    deadline = time.time() + 120
    while not nodes and time.time() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    probe = ConfigRecord({"paths": str(rc["paths"]), "describe": encode(DescribeRequest())})
    messages = [Message(RecordDict({"probe": probe}), dst_node_id=n, message_type="query") for n in nodes]
    replies = grid.send_and_receive(messages, timeout=300)
    found = [dict(r.content["found"]) if not r.has_error() else {"error": r.error.reason} for r in replies]
    Path(str(rc["out"])).write_text(json.dumps(found, indent=1))
