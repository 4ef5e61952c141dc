"""The relay's settings from supernode.sh to the relay (issue 25, item 5): any path survives Flower's
``--node-config`` parser, files the relay cannot use stop the SuperNode before it starts, and a relay
that cannot use its settings answers with a code the distiller does not retry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import RecordDict
from flwr.common.config import parse_config_args

from deploy.certs import make_certs
from deploy.flower_app.dpdistill_flower.client_app import answer
from shared.wire.messages import BudgetRequest
from shared.wire.protocol import encode
from shared.wire.rpc.errors import OwnerCallError
from shared.wire.rpc.flower_records import pack_call, unpack_reply
from shared.wire.rpc.relay_config import endpoint_from_node_config, node_config_arg, toml_string

ROOT = Path(__file__).resolve().parents[1]
HOSPITAL = 'St John\'s Hospital/cérts "x" \\ 100% = #1 ☃'


@pytest.fixture(scope="module")
def odd_certs(tmp_path_factory) -> Path:
    """A full certificate set under a folder whose name has everything Flower's parser used to cut at."""
    folder = tmp_path_factory.mktemp("srv") / HOSPITAL
    make_certs(folder, ["127.0.0.1"], ["a"])
    return folder


def fake_venv(folder: Path) -> Path:
    """A DPDISTILL_VENV whose python is this one and whose flower-supernode records its arguments."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "flower-supernode").write_text(
        f"#!{sys.executable}\nimport json, os, sys\nopen(os.environ['ARGS_OUT'], 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return folder


def run_supernode_sh(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    args_out = tmp_path / "args.json"
    full = {
        **os.environ,
        "DPDISTILL_VENV": str(fake_venv(tmp_path / "venv")),
        "ARGS_OUT": str(args_out),
        "CA": "ca.pem",
        "NODE_KEY": "node.key",
        "SUPERLINK_ADDRESS": "superlink.example:9093",
        "FLWR_HOME": str(tmp_path / "flwr"),
        "RETRIES": "1",
        **env,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "roles" / "supernode.sh")], env=full, capture_output=True, text=True, timeout=60
    )
    return done, args_out


def test_any_path_reaches_the_relay_whole_through_supernode_sh_and_flowers_parser(odd_certs, tmp_path) -> None:
    settings = {
        "OWNER_ADDRESS": "owner-service.hospital.example:50051",
        "OWNER_CA": str(odd_certs / "ca.pem"),
        "RELAY_CERT": str(odd_certs / "relay-a.pem"),
        "RELAY_KEY": str(odd_certs / "relay-a.key"),
    }
    done, args_out = run_supernode_sh(tmp_path, **settings)
    assert done.returncode == 0, done.stderr
    argv = json.loads(args_out.read_text())
    # What flower-supernode does with its --node-config (flwr/supernode/cli/flower_supernode.py).
    node_config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node_config == {
        "owner-address": settings["OWNER_ADDRESS"],
        "owner-ca": settings["OWNER_CA"],
        "relay-cert": settings["RELAY_CERT"],
        "relay-key": settings["RELAY_KEY"],
    }
    endpoint = endpoint_from_node_config(node_config)
    assert endpoint.root_cert == settings["OWNER_CA"] and Path(endpoint.client_key).read_bytes()


@pytest.mark.parametrize(
    "value",
    [
        '/srv/St John\'s Hospital/cérts "x"/ca.pem',
        "C:\\certs\\ca.pem",
        "line\nbreak\ttab",
        "ends with a quote'",
        "'",
        '"',
        "a=b c=d",
        "x.toml",
        "𝔘nicode ☃ 病院",
        "",
    ],
)
def test_flowers_parser_gives_back_exactly_what_was_written(value: str) -> None:
    assert parse_config_args([node_config_arg({"owner-ca": value, "relay-key": value})]) == {
        "owner-ca": value,
        "relay-key": value,
    }


def test_text_flower_cannot_carry_is_refused_by_name() -> None:
    undecodable = b"/srv/h\xf4pital/ca.pem".decode("utf-8", "surrogateescape")  # a Latin-1 folder name
    with pytest.raises(ValueError, match="not valid UTF-8"):
        toml_string(undecodable)
    with pytest.raises(ValueError, match="unknown relay settings"):
        node_config_arg({"owner_address": "x"})


def test_supernode_sh_refuses_to_start_with_tls_files_it_cannot_use(odd_certs, tmp_path) -> None:
    base = {"OWNER_ADDRESS": "10.0.0.5:50051", "OWNER_CA": str(odd_certs / "ca.pem")}
    cases = {
        "missing": dict(RELAY_CERT=str(odd_certs / "relay-a.pem"), RELAY_KEY=str(odd_certs / "gone.key")),
        "swapped": dict(RELAY_CERT=str(odd_certs / "relay-a.pem"), RELAY_KEY=str(odd_certs / "owner-a.key")),
        "no CA off loopback": dict(OWNER_CA=""),
    }
    expected = {
        "missing": "cannot read the relay key",
        "swapped": "do not work together",
        "no CA off loopback": "not a loopback address",
    }
    for name, env in cases.items():
        done, args_out = run_supernode_sh(tmp_path / name.replace(" ", "-"), **{**base, **env})
        assert done.returncode == 2, (name, done.stderr)
        assert expected[name] in done.stderr, (name, done.stderr)
        assert not args_out.exists(), name  # flower-supernode never started


def test_a_key_the_supernodes_user_cannot_read_stops_it_before_it_starts(odd_certs, tmp_path) -> None:
    key = tmp_path / "relay.key"
    key.write_bytes((odd_certs / "relay-a.key").read_bytes())
    key.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(key, 65534, 65534)  # supernode.sh drops root's capabilities: root cannot read it either
    else:
        key.chmod(0)
    done, args_out = run_supernode_sh(
        tmp_path,
        OWNER_ADDRESS="10.0.0.5:50051",
        OWNER_CA=str(odd_certs / "ca.pem"),
        RELAY_CERT=str(odd_certs / "relay-a.pem"),
        RELAY_KEY=str(key),
    )
    assert done.returncode == 2 and "Permission denied" in done.stderr and str(key) in done.stderr, done.stderr
    assert not args_out.exists()


def relay_error(node_config: dict) -> OwnerCallError:
    body, error = unpack_reply(answer(pack_call("Budget", encode(BudgetRequest())), node_config))
    assert body is None and error is not None
    return OwnerCallError(*error)


def test_the_relay_answers_a_code_not_an_exception_when_its_settings_are_wrong(odd_certs) -> None:
    good = {
        "owner-address": "127.0.0.1:1",
        "owner-ca": str(odd_certs / "ca.pem"),
        "relay-cert": str(odd_certs / "relay-a.pem"),
        "relay-key": str(odd_certs / "relay-a.key"),
    }
    # The case: a path cut at its apostrophe names a file that does not exist.
    cut = relay_error({**good, "owner-ca": str(odd_certs).split("'")[0]})
    assert cut.code == "relay_misconfigured" and "CA certificate of the owner service" in cut.message
    assert not cut.retryable
    for config, words in [
        ({**good, "relay-key": str(odd_certs / "ca.pem")}, "do not work together"),
        ({**good, "owner-ca": str(odd_certs / "relay-a.key")}, "not a PEM certificate"),
        ({**good, "owner-address": "10.0.0.5:50051", "owner-ca": ""}, "not a loopback address"),
        ({k: v for k, v in good.items() if k != "relay-key"}, "both a client certificate and its key"),
        ({}, "no owner-address"),
    ]:
        error = relay_error(config)
        assert error.code == "relay_misconfigured" and words in error.message, error
    # Nothing listens on port 1: the owner is unreachable, which is worth retrying.
    down = relay_error(good)
    assert down.code == "owner_unavailable" and down.retryable
    # A call that is not a call is the relay's error, also not retried.
    body, error = unpack_reply(answer(RecordDict(), good))
    assert body is None and error[0] == "relay_error"


def test_run_config_text_survives_any_path() -> None:
    """``flwr run --run-config`` had the same quoting fault as the node config (repr of the value)."""
    from deploy.flower_runs import format_run_config

    rc = {"out": '/srv/St John\'s "x"/r\\uns é', "epsilon": 1e-06, "pea": True, "owners": 2, "lr": 0.3}
    assert parse_config_args([format_run_config(rc)]) == rc
