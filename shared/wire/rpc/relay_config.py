"""The relay's settings as they travel in the SuperNode's ``--node-config`` (set by the hospital only).

Flower 1.41 parses ``--node-config`` with a regular expression (``key=value`` pairs, a value either a
``'...'`` or ``"..."`` string or a run of non-blank characters) and then TOML. A single-quoted value
ends at the first apostrophe, and a double-quoted one at the first double quote, so a path such as
``/srv/St John's Hospital/ca.pem`` used to arrive as ``/srv/St John``. Here every character outside a
small safe set is written as a TOML ``\\uXXXX`` (or ``\\UXXXXXXXX``) escape inside double quotes: the
value then holds no quote, blank or backslash that the regular expression could cut at, and TOML
turns the escapes back into the exact text. Any path that is valid text round-trips (spaces,
apostrophes, double quotes, backslashes, newlines, non-ASCII).

``python -m shared.wire.rpc.relay_config`` is what ``deploy/roles/supernode.sh`` runs: it reads
OWNER_ADDRESS, OWNER_CA, RELAY_CERT and RELAY_KEY from the environment, makes the paths absolute,
checks that this user can read and use the files, and prints the ``--node-config`` argument (or
names what is wrong and exits with status 2). Imports only the standard library and grpc.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from shared.wire.rpc.channel import OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError

# node-config key -> (the OwnerEndpoint field it fills, the supernode.sh variable that sets it)
SETTINGS: dict[str, tuple[str, str]] = {
    "owner-address": ("address", "OWNER_ADDRESS"),
    "owner-ca": ("root_cert", "OWNER_CA"),
    "relay-cert": ("client_cert", "RELAY_CERT"),
    "relay-key": ("client_key", "RELAY_KEY"),
}
PATH_KEYS = ("owner-ca", "relay-cert", "relay-key")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._:-[]@+,")


def toml_string(value: str) -> str:
    """``value`` as a double-quoted TOML string that Flower's ``--node-config`` parser keeps whole."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        # What Python makes of bytes that are not UTF-8 (surrogateescape); TOML carries text only.
        raise ValueError(f"{value!r} is not valid UTF-8 text, which Flower's node config needs: rename it")
    out = []
    for c in value:
        if c in _SAFE:
            out.append(c)
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(f"\\U{ord(c):08X}")
    return '"' + "".join(out) + '"'


def node_config_arg(settings: Mapping[str, str]) -> str:
    """The ``--node-config`` argument for the relay settings given (keys of ``SETTINGS``)."""
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown relay settings {sorted(unknown)}; expected some of {sorted(SETTINGS)}")
    return " ".join(f"{key}={toml_string(value)}" for key, value in settings.items())


def endpoint_from_node_config(node_config: Mapping[str, object]) -> OwnerEndpoint | None:
    """The owner endpoint the hospital set in ``node_config``; None when it has no owner-address.

    An endpoint the settings cannot make (a CA missing for a non-loopback address, a certificate
    without its key) is ``OwnerCallError("relay_misconfigured")``, naming the setting.
    """
    values = {key: str(node_config[key]) for key in SETTINGS if node_config.get(key) not in (None, "")}
    if "owner-address" not in values:
        return None
    try:
        return OwnerEndpoint(**{SETTINGS[key][0]: value for key, value in values.items()})
    except ValueError as exc:
        raise OwnerCallError("relay_misconfigured", f"the SuperNode's --node-config: {exc}") from None


def from_environment(environ: Mapping[str, str]) -> str:
    """The checked ``--node-config`` argument from supernode.sh's variables (``ValueError`` names the fault)."""
    settings: dict[str, str] = {}
    for key, (_, variable) in SETTINGS.items():
        value = environ.get(variable, "")
        if value:
            settings[key] = os.path.abspath(value) if key in PATH_KEYS else value
    if "owner-address" not in settings:
        raise ValueError("set OWNER_ADDRESS (host:port of the owner service)")
    arg = node_config_arg(settings)  # refuses text Flower cannot carry before any check below
    endpoint = endpoint_from_node_config(settings)
    assert endpoint is not None
    try:
        endpoint.tls_context()  # readable by this user, valid PEM, key matching its certificate
    except OwnerCallError as exc:
        raise ValueError(exc.message) from None
    return arg


def main() -> int:
    try:
        print(from_environment(os.environ))
    except (ValueError, OwnerCallError) as exc:
        message = exc.message if isinstance(exc, OwnerCallError) else str(exc)
        print(f"supernode.sh: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
