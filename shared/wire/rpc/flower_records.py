"""How a call to an owner and its answer travel inside Flower messages.

The serialised Message bytes (owner.proto) go in an ArrayRecord as one raw uint8 array, which
Flower moves in 5 MiB chunks; the RPC name and any refusal go in a ConfigRecord. No torch, no
numpy: the relay imports this.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

MESSAGE_TYPE = "query"


def _blob(body: bytes) -> ArrayRecord:
    return ArrayRecord({"message": Array(dtype="uint8", shape=(len(body),), stype="raw", data=body)})


def pack_call(method: str, body: bytes) -> RecordDict:
    return RecordDict({"call": ConfigRecord({"method": method}), "body": _blob(body)})


def unpack_call(content: RecordDict) -> tuple[str, bytes]:
    return str(content["call"]["method"]), bytes(content["body"]["message"].data)


def pack_reply(body: bytes) -> RecordDict:
    return RecordDict({"body": _blob(body)})


def pack_error(code: str, message: str) -> RecordDict:
    return RecordDict({"error": ConfigRecord({"code": code, "message": message})})


def unpack_reply(content: RecordDict) -> tuple[bytes | None, tuple[str, str] | None]:
    """(body, None) for an answer, (None, (code, message)) for a refusal or failure."""
    if "error" in content:
        err = content["error"]
        return None, (str(err["code"]), str(err["message"]))
    return bytes(content["body"]["message"].data), None
