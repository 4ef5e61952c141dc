"""What a load produced, beside the images: counts, what was ignored or skipped, cache use, time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shared.images.image_set import ImageSet


@dataclass(frozen=True)
class LoadReport:
    source: str  # e.g. "image-folder /data/xray"
    images: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    image_shape: tuple[int, ...]  # [C, H, W]
    # Entries that are not images, left out and counted, never errors: hidden or system entries
    # (.DS_Store), other files, DICOMDIRs, DICOM objects without pixel data (reports, RT structures).
    ignored: int = 0
    ignored_examples: tuple[str, ...] = ()  # the first few of them, relative paths
    ignored_by_reason: tuple[tuple[str, int], ...] = ()  # (reason, count)
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of every unreadable file left out (policy "skip")
    volumes: int = 0  # files read as several slices (multi-frame DICOM, NIfTI)
    cache: str = "off"  # off | miss | hit | rebuilt (a corrupt entry was found and replaced)
    cache_file: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{n}: {c}" for n, c in zip(self.class_names, self.class_counts, strict=True))
        shape = " x ".join(map(str, self.image_shape))
        lines = [f"{self.source}: {self.images:,} images of {shape} in {len(self.class_names)} classes ({counts})"]
        if self.volumes:
            lines.append(f"  {self.volumes:,} volumes read as 2D slices")
        if self.ignored:
            reasons = ", ".join(f"{n:,} {r}" for r, n in self.ignored_by_reason)
            examples = ", ".join(self.ignored_examples)
            lines.append(f"  {self.ignored:,} hidden or non-image entries ignored ({reasons}; e.g. {examples})")
        if self.skipped:
            lines.append(f"  {len(self.skipped):,} unreadable files skipped:")
            lines += [f"    {f}: {r}" for f, r in self.skipped]
        lines.append(f"  cache: {self.cache}{f' ({self.cache_file})' if self.cache_file else ''}; {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready values (what an owner writes at start-up)."""
        return {
            "source": self.source,
            "images": self.images,
            "class_names": list(self.class_names),
            "class_counts": list(self.class_counts),
            "image_shape": list(self.image_shape),
            "volumes": self.volumes,
            "ignored": self.ignored,
            "ignored_by_reason": dict(self.ignored_by_reason),
            "ignored_examples": list(self.ignored_examples),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "cache": self.cache,
            "cache_file": self.cache_file,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class LoadResult:
    """A loaded set with its report. ``files`` and ``columns`` are aligned with ``data`` (empty when
    the source has no files or no extra columns); ``columns`` holds a manifest's extra columns, e.g.
    ``patient_id``, for patient-level grouping. ``dicom_patients``, aligned with ``data`` too, holds
    each image's DICOM PatientID ("" where its file has none); a volume's slices share their file."""

    data: ImageSet
    report: LoadReport
    files: tuple[str, ...] = ()
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dicom_patients: tuple[str, ...] = ()


def count_reasons(entries: Iterable[tuple[str, str]]) -> tuple[tuple[str, int], ...]:
    """(reason, count) of (file, reason) pairs, most frequent first."""
    return tuple(Counter(reason for _, reason in entries).most_common())


def report_for(data: ImageSet, source: str, **extra) -> LoadReport:
    return LoadReport(
        source=source,
        images=len(data),
        class_names=data.class_names,
        class_counts=tuple(data.class_counts()),
        image_shape=tuple(data.images.shape[1:]),
        **extra,
    )
