"""What a load produced, beside the images: counts, what was ignored or skipped, cache use, time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.datasets import ImageSet


@dataclass(frozen=True)
class LoadReport:
    source: str  # e.g. "image-folder /data/xray"
    images: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    image_shape: tuple[int, ...]  # [C, H, W]
    ignored: int = 0  # hidden entries and non-image files left out (folders)
    ignored_examples: tuple[str, ...] = ()  # the first few of them, relative paths
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of unreadable files, only with skip_unreadable
    cache: str = "off"  # off | miss | hit | rebuilt (a corrupt entry was found and replaced)
    cache_file: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{n}: {c}" for n, c in zip(self.class_names, self.class_counts, strict=True))
        shape = " x ".join(map(str, self.image_shape))
        lines = [f"{self.source}: {self.images:,} images of {shape} in {len(self.class_names)} classes ({counts})"]
        if self.ignored:
            examples = ", ".join(self.ignored_examples)
            lines.append(f"  {self.ignored:,} hidden or non-image entries ignored (e.g. {examples})")
        if self.skipped:
            lines.append(f"  {len(self.skipped):,} unreadable files skipped (first: {self.skipped[0][1]})")
        lines.append(f"  cache: {self.cache}{f' ({self.cache_file})' if self.cache_file else ''}; {self.seconds:.1f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadResult:
    """A loaded set with its report. ``files`` and ``columns`` are aligned with ``data`` (empty when
    the source has no files or no extra columns); ``columns`` holds a manifest's extra columns, e.g.
    ``patient_id``, for patient-level grouping."""

    data: ImageSet
    report: LoadReport
    files: tuple[str, ...] = ()
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def report_for(data: ImageSet, source: str, **extra) -> LoadReport:
    return LoadReport(
        source=source,
        images=len(data),
        class_names=data.class_names,
        class_counts=tuple(data.class_counts()),
        image_shape=tuple(data.images.shape[1:]),
        **extra,
    )
