"""Hand-written wire bytes for the hostile-input tests: what only a hostile or old encoder would send."""

from __future__ import annotations

import json
import struct


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint (unsigned ``n``; a negative int64 is its 2^64 complement)."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (sub-message, string or bytes) with its tag."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def v1_message(kind: str = "describe", fields: dict | None = None) -> bytes:
    """A message as dpdistill's version 1 framed it: magic, version byte, header length, JSON header."""
    head = json.dumps({"kind": kind, "fields": fields or {}, "arrays": [], "body_bytes": 0}, sort_keys=True).encode()
    return b"DPDM" + struct.pack("<BI", 1, len(head)) + head


def v1_envelope(message: bytes) -> bytes:
    """Version 1's gRPC request: ``Envelope { bytes dpdm = 1; }`` around a version 1 message."""
    return length_delimited(1, message)
