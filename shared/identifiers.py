"""Identifiers read from data or configuration (class names, labels, patient ids, column names), in one form.

The same name can arrive as different code points: macOS writes file names decomposed (NFD: "e"
followed by a combining acute accent), most other tools composed (NFC: "é"), and spreadsheets keep
stray spaces. Compared raw, one patient written two ways would be two patients, each clipped to C,
so that person could move a release by 2C. So every identifier is brought to Unicode NFC without
surrounding whitespace where it enters (``normalise_identifier``), and a list of names that must
be distinct (classes) refuses two spellings of one name rather than guessing (``distinct_identifiers``).
Case and leading zeros are kept: "MRN7", "mrn7" and "MRN007" stay different identifiers, since each can
be a different person; ``lookalike_identifiers`` finds such groups so that an owner can be told (a
spreadsheet that drops leading zeros from one export and not another splits one patient in two).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_DIGITS = re.compile(r"[0-9]+")


def normalise_identifier(value: object) -> str:
    """``value`` as text in Unicode NFC, without leading or trailing whitespace."""
    return unicodedata.normalize("NFC", str(value)).strip()


def distinct_identifiers(names: Iterable[object], what: str = "class names") -> tuple[str, ...]:
    """The normalised ``names``; two that are the same once normalised are refused, naming both spellings."""
    first: dict[str, object] = {}
    out: list[str] = []
    for raw in names:
        name = normalise_identifier(raw)
        if name in first:
            if first[name] == raw:
                raise ValueError(f"{what}: {name!r} is named more than once")
            raise ValueError(
                f"{what}: {first[name]!r} and {raw!r} are two spellings of the same name {name!r} "
                "(Unicode NFC, surrounding spaces removed); rename one of them"
            )
        first[name] = raw
        out.append(name)
    return tuple(out)


def lookalike_identifiers(ids: Iterable[object]) -> list[tuple[str, ...]]:
    """Groups of distinct normalised ``ids`` that differ only in letter case or in leading zeros of a run
    of digits ("MRN007", "mrn7"), each group sorted, the groups in order of first appearance."""
    groups: dict[str, dict[str, None]] = {}
    for raw in dict.fromkeys(ids):  # one pass per distinct id, not per image
        name = normalise_identifier(raw)
        key = _DIGITS.sub(lambda m: m.group().lstrip("0") or "0", name).casefold()
        groups.setdefault(key, {})[name] = None
    return [tuple(sorted(g)) for g in groups.values() if len(g) > 1]
