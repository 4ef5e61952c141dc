"""Class names: natural order, an explicit list from the caller, and the cross-set consistency check.

Labels are indices into ``class_names``, so two sets whose names differ, or are the same names in
another order, would silently permute labels; ``check_same_classes`` refuses that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from shared.identifiers import distinct_identifiers, normalise_identifier
from shared.images.errors import ClassMismatchError, ImageSourceError
from shared.images.image_set import ImageSet

_CHUNKS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "2" < "10", "class2" < "class10", case-insensitively.

    The whole name is the final tie-break, so the order is total and deterministic ("2" vs "02").
    """
    parts: list[tuple] = []
    for i, chunk in enumerate(_CHUNKS.split(name)):
        if not chunk:
            continue
        parts.append((0, int(chunk), "") if i % 2 else (1, 0, chunk.casefold()))
    return (tuple(parts), name)


def natural_sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def resolve_classes(found: Iterable[str], classes: Sequence[str] | None, *, what: str) -> tuple[str, ...]:
    """The class names of a collection: ``found`` in natural order, or exactly ``classes`` when given.

    With an explicit list, a found class missing from it and a listed class never found are both
    refused (``what`` says where classes come from, e.g. "class folder" or "label in the CSV").
    Names on both sides are compared in their normalised form (``shared.identifiers``).
    """
    found_set = {normalise_identifier(f) for f in found}
    if classes is None:
        if not found_set:
            raise ImageSourceError(f"no {what} found")
        return tuple(natural_sorted(found_set))
    try:
        classes = distinct_identifiers(classes, "the classes list")
    except ValueError as exc:
        raise ImageSourceError(str(exc)) from None
    extra = natural_sorted(found_set - set(classes))
    if extra:
        raise ImageSourceError(
            f"{what} {', '.join(map(repr, extra))} not in the given classes {list(classes)}; "
            "add them to the list or remove them from the data"
        )
    missing = [c for c in classes if c not in found_set]
    if missing:
        raise ImageSourceError(f"listed classes {', '.join(map(repr, missing))} have no {what}")
    return classes


def check_same_classes(
    a: ImageSet | Sequence[str], b: ImageSet | Sequence[str], names: tuple[str, str] = ("first set", "second set")
) -> None:
    """Refuse two sets whose class names differ in any way, including order (labels would be permuted)."""
    a_names = tuple(a.class_names) if isinstance(a, ImageSet) else tuple(map(normalise_identifier, a))
    b_names = tuple(b.class_names) if isinstance(b, ImageSet) else tuple(map(normalise_identifier, b))
    if a_names == b_names:
        return
    first, second = names
    only_a = [c for c in a_names if c not in b_names]
    only_b = [c for c in b_names if c not in a_names]
    if only_a or only_b or len(a_names) != len(b_names):
        details = []
        if only_a:
            details.append(f"only in the {first}: {only_a}")
        if only_b:
            details.append(f"only in the {second}: {only_b}")
        if not details:
            details.append(f"{len(a_names)} names vs {len(b_names)} (repeated names)")
        raise ClassMismatchError(f"class names differ between the {first} and the {second} ({'; '.join(details)})")
    position = next(i for i, (x, y) in enumerate(zip(a_names, b_names, strict=True)) if x != y)
    raise ClassMismatchError(
        f"the {first} and the {second} have the same class names in a different order (label {position} is "
        f"{a_names[position]!r} in the {first} but {b_names[position]!r} in the {second}); labels would be "
        f"silently permuted. Give both the same explicit classes list: {list(a_names)}"
    )
