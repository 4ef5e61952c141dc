"""Identifiers read from data or configuration (class names, labels, patient ids, column names), in one form.

The same name can arrive as different code points: macOS writes file names decomposed (NFD: "e"
followed by a combining acute accent), most other tools composed (NFC: "é"), and spreadsheets keep
stray spaces. Compared raw, one patient written two ways would be two patients, each clipped to C,
so that person could move a release by 2C. So every identifier is brought to Unicode NFC without
surrounding whitespace where it enters (``normalise_identifier``), and a list of names that must
be distinct (classes) refuses two spellings of one name rather than guessing (``distinct_identifiers``).
Case is kept: "MRN7" and "mrn7" stay different identifiers.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


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
