"""The distiller's public sets, as every entry point names them: an auxiliary set (SER subspaces, and
the start with ``--init aux``) and an optional test set, from the user's paths or, with no path,
Fashion-MNIST's public split (the default benchmark).

One description serves the command line, the Flower run config (keys ``aux``, ``test``,
``image-size``, ``channels``, ``resize``) and the launchers, so every path loads them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.datasets import public_split
from shared.images.classes import check_same_classes
from shared.images.image_set import ImageSet
from shared.images.policy import DEFAULT_MAX_SKIPPED, ReadPolicy
from shared.images.resize import check_resize_policy
from shared.images.source import ImageSource, load_source, source_for_path


@dataclass(frozen=True)
class PublicSets:
    aux: str | None = None  # folder of class folders, CSV manifest or npz; None: Fashion-MNIST's split
    test: str | None = None  # same kinds; None: none (evaluation is skipped), or Fashion-MNIST's rest
    # Same kinds: a public validation split the same trainings are also scored on, to choose settings
    # by (never by the test set). In-process simulation only.
    validation: str | None = None
    image_size: int | None = None  # needed for folders and manifests; npz keeps its own unless given
    channels: int | None = None
    resize: str = "crop"
    aux_per_class: int = 50  # Fashion-MNIST only: test-split images per class kept for the auxiliary set
    data_root: str | None = None  # Fashion-MNIST only: where its IDX files are
    download: bool = False
    reading: ReadPolicy = ReadPolicy()  # folders and manifests: unreadable files, volumes

    def __post_init__(self) -> None:
        if self.aux is None and self.test is not None:
            raise ValueError("a public test set needs the auxiliary set it goes with (--aux / run config 'aux')")
        if self.validation is not None and self.test is None:
            raise ValueError("a public validation set goes with a public test set (--validation needs --test)")
        check_resize_policy(self.resize)

    @property
    def is_fashion_mnist(self) -> bool:
        return self.aux is None

    def source(self, path: str, split: str) -> ImageSource:
        return source_for_path(path, self.image_size, self.channels, self.resize, split, self.reading)

    def load(self, show_progress: bool = True) -> tuple[ImageSet, ImageSet | None]:
        """(auxiliary, test or None). The two must name the same classes in the same order."""
        if self.aux is None:
            return public_split(self.aux_per_class, self.data_root, self.download)
        aux = load_source(self.source(self.aux, "val"), progress=show_progress, cache=False).data
        if self.test is None:
            return aux, None
        test = load_source(self.source(self.test, "test"), progress=show_progress, cache=False).data
        check_same_classes(aux, test, names=("auxiliary set", "test set"))
        return aux, test

    def load_validation(self, aux: ImageSet, show_progress: bool = True) -> ImageSet | None:
        """The validation set, or None; it must name ``aux``'s classes in the same order."""
        if self.validation is None:
            return None
        val = load_source(self.source(self.validation, "val"), progress=show_progress, cache=False).data
        check_same_classes(aux, val, names=("auxiliary set", "validation set"))
        return val

    def run_config(self) -> dict:
        """As Flower run-config entries (strings and numbers only; "" and 0 mean unset)."""
        return {
            "aux": self.aux or "",
            "test": self.test or "",
            "image-size": self.image_size or 0,
            "channels": self.channels or 0,
            "resize": self.resize,
            "aux-per-class": self.aux_per_class,
            "data-root": self.data_root or "",
            "unreadable": self.reading.unreadable,
            "max-skipped": self.reading.max_skipped,
            "volume-axis": -1 if self.reading.volume_axis is None else self.reading.volume_axis,
            "slice-start": self.reading.slice_range[0],
            "slice-stop": self.reading.slice_range[1],
        }

    @classmethod
    def from_run_config(cls, rc: dict, default_aux_per_class: int) -> PublicSets:
        return cls(
            aux=str(rc.get("aux", "")) or None,
            test=str(rc.get("test", "")) or None,
            image_size=int(rc.get("image-size", 0)) or None,
            channels=int(rc.get("channels", 0)) or None,
            resize=str(rc.get("resize", "")) or "crop",
            aux_per_class=int(rc.get("aux-per-class", 0)) or default_aux_per_class,
            data_root=str(rc.get("data-root", "")) or None,
            reading=ReadPolicy(
                str(rc.get("unreadable", "")) or "refuse",
                float(rc.get("max-skipped", DEFAULT_MAX_SKIPPED)),
                None if int(rc.get("volume-axis", -1)) < 0 else int(rc["volume-axis"]),
                (float(rc.get("slice-start", 0.0)), float(rc.get("slice-stop", 1.0))),
            ),
        )
