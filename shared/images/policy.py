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

from dataclasses import dataclass

from shared.settings import Bound, SettingError, bounded, check_number, check_settings

UNREADABLE_POLICIES = ("refuse", "skip")
# How an image of another size becomes the target size (shared.images.resize): shorter side then centre crop, or pad.
RESIZE_POLICIES = ("crop", "pad")
DEFAULT_RESIZE = "crop"
# Where patient mode finds each image's patient: a CSV column, the DICOM PatientID tag, or the file
# itself (each file, e.g. a volume whose slices are images, is one patient).
PATIENT_SOURCES = ("column", "dicom", "file")
DEFAULT_MAX_SKIPPED = 0.05
_FRACTION = Bound(float, 0, 1)


@dataclass(frozen=True)
class ReadPolicy:
    unreadable: str = "refuse"  # "refuse" | "skip"
    # With "skip": the largest share of image files left out.
    max_skipped: float = bounded(DEFAULT_MAX_SKIPPED, float, 0, 1)
    # 0, 1 or 2; None: a DICOM's frames, a NIfTI's third (axial) axis.
    volume_axis: int | None = bounded(None, int, 0, 2, optional=True)
    slice_range: tuple[float, float] = (0.0, 1.0)  # fractions of the volume axis whose slices are kept

    def __post_init__(self) -> None:
        if self.unreadable not in UNREADABLE_POLICIES:
            raise ValueError(f"unreadable must be one of {UNREADABLE_POLICIES}, got {self.unreadable!r}")
        check_settings(self)  # numbers: shared.settings, the one place their type and range are checked
        pair = self.slice_range
        if isinstance(pair, str | bytes) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise SettingError(f"slice_range must be [start, stop], got {pair!r}")
        start, stop = (check_number("slice_range", v, _FRACTION) for v in pair)
        if not start < stop:
            raise SettingError(f"slice_range must be [start, stop] with start < stop, got {pair!r}")
        object.__setattr__(self, "slice_range", (start, stop))

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
