"""How a collection's awkward files are read: unreadable files (refuse or skip, within a share) and volumes.

PACS and CD exports routinely hold a truncated file, an odd DICOM or a volume. ``ReadPolicy`` is the
owner's choice for them, stated once and carried by ``ImageSource`` (owner.toml ``[data]``, and the
``simulate`` / ``deploy-local`` options):

* ``unreadable``: ``"refuse"`` (default: the first file that cannot be decoded stops the load, naming
  it) or ``"skip"`` (every such file is left out and listed with its reason in the load report), as
  long as at most ``max_skipped`` of the image files are skipped; more is refused (a folder where a
  tenth of the files fail is a broken export, not a few bad files).
* Volumes (a multi-frame DICOM, a 3D NIfTI) are read as 2D slices along ``volume_axis`` (None: a
  DICOM's frames, a NIfTI's third axis, axial in RAS orientation), keeping the slices whose centre
  lies in ``slice_range`` (fractions of the axis: ``(0.25, 0.75)`` keeps the middle half). A
  single-frame file is always one image. Every slice of a volume comes from one person: the owner
  treats a volume's slices as one patient (``owner_node.data``).

Files that are not images at all (``DICOMDIR``, DICOM objects without pixel data) are never errors:
they are ignored and counted in the report, like ``.DS_Store``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

UNREADABLE_POLICIES = ("refuse", "skip")
DEFAULT_MAX_SKIPPED = 0.05


@dataclass(frozen=True)
class ReadPolicy:
    unreadable: str = "refuse"  # "refuse" | "skip"
    max_skipped: float = DEFAULT_MAX_SKIPPED  # with "skip": the largest share of image files left out
    volume_axis: int | None = None  # 0, 1 or 2; None: a DICOM's frames, a NIfTI's third (axial) axis
    slice_range: tuple[float, float] = (0.0, 1.0)  # fractions of the volume axis whose slices are kept

    def __post_init__(self) -> None:
        if self.unreadable not in UNREADABLE_POLICIES:
            raise ValueError(f"unreadable must be one of {UNREADABLE_POLICIES}, got {self.unreadable!r}")
        if isinstance(self.max_skipped, bool) or not isinstance(self.max_skipped, int | float):
            raise ValueError(f"max_skipped must be a number in [0, 1], got {self.max_skipped!r}")
        if not 0.0 <= float(self.max_skipped) <= 1.0:
            raise ValueError(f"max_skipped must be a share in [0, 1], got {self.max_skipped!r}")
        if self.volume_axis is not None and (isinstance(self.volume_axis, bool) or self.volume_axis not in (0, 1, 2)):
            raise ValueError(f"volume_axis must be 0, 1 or 2 (or unset), got {self.volume_axis!r}")
        try:
            start, stop = (float(v) for v in self.slice_range)
        except (TypeError, ValueError):
            raise ValueError(f"slice_range must be [start, stop], got {self.slice_range!r}") from None
        if not (math.isfinite(start) and math.isfinite(stop) and 0.0 <= start < stop <= 1.0):
            raise ValueError(f"slice_range must be [start, stop] with 0 <= start < stop <= 1, got {self.slice_range!r}")
        object.__setattr__(self, "slice_range", (start, stop))
        object.__setattr__(self, "max_skipped", float(self.max_skipped))

    @property
    def skip_unreadable(self) -> bool:
        return self.unreadable == "skip"

    def slices(self, count: int) -> list[int]:
        """The kept slice indices of an axis of ``count`` slices: centres in ``slice_range``, at least one."""
        start, stop = self.slice_range
        kept = [k for k in range(count) if start <= (k + 0.5) / count < stop]
        return kept or [min(count - 1, int(start * count))]

    def volume_material(self) -> dict:
        """What changes the decoded images (the decoded-image cache's key; the skip share does not)."""
        return {
            "skip_unreadable": self.skip_unreadable,
            "volume_axis": self.volume_axis,
            "slice_range": list(self.slice_range),
        }
