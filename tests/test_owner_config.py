"""owner.toml: each setting stated once (``OwnerConfig``'s fields say where it lives and its default),
read and written from that statement, and the shipped example agreeing with the code (issue 28.1)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, fields, replace
from pathlib import Path

import pytest

from owner_node.config import NESTED_TABLES, Limits, OwnerConfig, ServiceConfig, toml_keys, write_config

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "owner.example.toml"
# Keys whose example value illustrates a choice rather than stating the default.
ILLUSTRATIONS = {
    ("", "owner_id"),
    ("data", "path"),
    ("data", "normalization"),
    ("data", "image_size"),
    ("data", "channels"),
    ("data", "classes"),
    ("data", "name"),
    ("data", "cache"),
    ("data", "holdout"),
    ("data", "volume_axis"),
    ("auxiliary", "path"),
    ("ledger", "path"),
    ("privacy", "epsilon"),
    ("service", "tls_cert"),
    ("service", "tls_key"),
    ("service", "client_ca"),
    ("service", "client_names"),
}


def _example_with_every_key() -> dict:
    """The example with its commented-out settings (``# key = value``) switched on."""
    keys = {k for names in toml_keys().values() for k in names}
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"#\s?(\w+)\s*=", line)
        lines.append(line[line.index(m.group(1)) :] if m and m.group(1) in keys else line)
    return tomllib.loads("\n".join(lines))


def _defaults() -> dict[tuple[str, str], object]:
    out = {}
    for f in fields(OwnerConfig):
        if f.name not in NESTED_TABLES:
            out[f.metadata["toml"]] = f.default
    for table, cls in (("limits", Limits), ("service", ServiceConfig)):
        out |= {(table, f.name): f.default for f in fields(cls)}
    return out


def test_the_example_names_every_setting_and_states_the_defaults() -> None:
    example = _example_with_every_key()
    defaults = _defaults()
    missing, differs = [], []
    for (table, key), default in defaults.items():
        section = example if not table else example.get(table, {})
        if key not in section:
            missing.append(f"[{table}] {key}")
        elif (table, key) not in ILLUSTRATIONS and default is not MISSING:
            value = section[key]
            value = tuple(value) if isinstance(value, list) else value
            if value != default:
                differs.append(f"[{table}] {key}: example {value!r}, code {default!r}")
    assert not missing, f"owner.example.toml lacks {missing}"
    assert not differs, f"owner.example.toml disagrees with the code: {differs}"
    assert OwnerConfig.load(EXAMPLE).limits == Limits()


def test_write_then_load_gives_the_same_config(tmp_path: Path) -> None:
    config = replace(
        OwnerConfig.load(EXAMPLE),
        data_source="csv",
        data_path=tmp_path / "my scans" / "manifest.csv",
        image_size=64,
        channels=3,
        classes=("normal", 'with "quote"', "Größe"),
        privacy_unit="patient",
        holdout=0.1,
        volume_axis=2,
        limits=Limits(max_draws_per_request=7, max_activation_mb=64.5),
    )
    write_config(tmp_path / "owner.toml", config)
    assert OwnerConfig.load(tmp_path / "owner.toml") == config


@pytest.mark.parametrize(
    ("privacy", "error"),
    [
        ("epsilon = 1.0\ndelat = 1e-6", r"unknown \[privacy\] keys \['delat'\]"),
        ("delta = 1e-6", r"lacks required key \[privacy\] epsilon"),
        ("epsilon = 1.0\naccountant = 3", r"\[privacy\] accountant must be a string"),
        ("epsilon = inf", r"\[privacy\] epsilon must be a finite number"),
    ],
)
def test_load_names_the_key_that_is_wrong(tmp_path: Path, privacy: str, error: str) -> None:
    path = tmp_path / "owner.toml"
    path.write_text(f'[auxiliary]\npath = "aux.npz"\n[ledger]\npath = "l.sqlite"\n[privacy]\n{privacy}\n')
    with pytest.raises(ValueError, match=error):
        OwnerConfig.load(path)


def test_an_unknown_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "owner.toml"
    path.write_text('[auxiliary]\npath = "a.npz"\n[ledger]\npath = "l"\n[privacy]\nepsilon = 1.0\n[limit]\nx = 1\n')
    with pytest.raises(ValueError, match="unknown top-level key 'limit'"):
        OwnerConfig.load(path)
