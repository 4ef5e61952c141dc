"""Numeric settings: the one place their type, finiteness and range are checked.

Every number an owner or distiller reads (owner.toml, the command line, a Flower run config,
presets) lands in a dataclass field declared with ``bounded(...)``; ``check_settings`` then checks
each such field and names the key in its error. TOML reads ``inf``, ``nan`` and ``1e309`` as
floats and a float where an integer belongs (``1.9``) is a float: all of these are refused here,
as are booleans and strings where numbers belong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any


class SettingError(ValueError):
    """A setting with the wrong type or outside its range; the message names the key."""


@dataclass(frozen=True)
class Bound:
    """The type (int or float) and range one numeric setting must have."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is excluded
    high_open: bool = False
    optional: bool = False  # None is allowed (e.g. "choose by image size")

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        lo = "" if self.low is None else (f"> {self.low:g}" if self.low_open else f">= {self.low:g}")
        hi = "" if self.high is None else (f"< {self.high:g}" if self.high_open else f"<= {self.high:g}")
        rng = " and ".join(p for p in (lo, hi) if p)
        return what + (f" {rng}" if rng else "") + (" (or absent)" if self.optional else "")


def bounded(default: Any, kind: type, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A dataclass field whose value ``check_settings`` checks against ``Bound(kind, low, high, ...)``."""
    key = options.pop("key", None)
    bound = Bound(kind, low, high, **options)
    return field(default=default, metadata={"bound": bound, "key": key})


def same_as(cls: type, name: str, key: str | None = None, unset: bool = False) -> Any:
    """A dataclass field with the default and range of ``cls``'s field ``name``: a setting that two
    configs carry (the run's table and the config it builds) is stated once, in ``cls``.
    ``unset``: the default is None instead ("someone else's value", e.g. a preset's)."""
    source = next(f for f in fields(cls) if f.name == name)
    metadata = dict(source.metadata)
    if key is not None:
        metadata["key"] = key
    if unset and "bound" in metadata:
        metadata["bound"] = replace(metadata["bound"], optional=True)
    return field(default=None if unset else source.default, metadata=metadata)


def check_number(key: str, value: Any, bound: Bound) -> int | float | None:
    """``value`` as the setting's type, or ``SettingError`` naming ``key`` and what it must be."""
    if value is None and bound.optional:
        return None
    wrong = SettingError(f"{key} must be {bound.describe()}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong
    if bound.kind is int:
        if not isinstance(value, int):
            raise wrong
    elif not math.isfinite(value):
        raise wrong
    else:
        value = float(value)
    if bound.low is not None and (value < bound.low or (bound.low_open and value == bound.low)):
        raise wrong
    if bound.high is not None and (value > bound.high or (bound.high_open and value == bound.high)):
        raise wrong
    return value


def check_settings(obj: Any, section: str = "") -> None:
    """Check every ``bounded`` field of the dataclass ``obj`` (frozen or not), storing the checked value.

    The key in an error is the field's declared ``key``, else ``section`` and the field's name
    (``[limits] max_draws_per_request``, ``--epsilon``).
    """
    for f in fields(obj):
        bound = f.metadata.get("bound")
        if bound is None:
            continue
        key = f.metadata.get("key") or (f"{section} {f.name}".strip() if section else f.name)
        value = check_number(key, getattr(obj, f.name), bound)
        object.__setattr__(obj, f.name, value)
