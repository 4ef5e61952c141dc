"""Command-line options several commands share, and their conversion to the run's objects."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.presets import PRESETS
from deploy.run_settings import RunSettings
from shared.images.policy import DEFAULT_RESIZE, RESIZE_POLICIES, UNREADABLE_POLICIES, ReadPolicy

if TYPE_CHECKING:
    from distiller_node.config import DistillerConfig


def distiller_config_from_args(a: argparse.Namespace) -> DistillerConfig:
    return RunSettings.from_args(a).distiller_config()


def run_config_from_args(a: argparse.Namespace, out: Path, public) -> dict:
    """The CLI options as a Flower run config (keys of deploy/flower_app/pyproject.toml): the same
    ``RunSettings`` the in-process route uses, plus where to write, how many owners and the public sets."""
    return {
        **RunSettings.from_args(a).to_run_config(),
        "out": str(out.resolve()),
        "owners": a.owners,
        **public.run_config(),
    }


def owner_settings_from_args(a: argparse.Namespace) -> dict:
    """The simulated owners' own choices (their owner.toml) that the command line sets."""
    given = {
        "privacy_unit": a.unit,
        "patient_column": a.patient_column,
        "patient_from": a.patient_from,
        "holdout": a.holdout,
        "device": a.device,
        "precision": a.precision,
    }
    # An option not given leaves the owner's own default (owner_node.config.OwnerConfig) in place.
    settings: dict = {key: value for key, value in given.items() if value is not None}
    if a.class_counts_epsilon:
        settings |= {"class_counts": "dp", "class_counts_epsilon": a.class_counts_epsilon}
    return settings


def user_sets(a: argparse.Namespace):
    """(PublicSets, the owner's own ImageSource or None) from ``--data``, ``--aux``, ``--test``."""
    from deploy.public_sets import PublicSets
    from shared.images.source import source_for_path

    reading = read_policy_from_args(a)
    aux_per_class = getattr(a, "aux_per_class", None) or PRESETS[a.preset]["aux_per_class"]
    data, aux, test = getattr(a, "data", None), getattr(a, "aux", None), getattr(a, "test", None)
    validation = getattr(a, "validation", None)
    if validation is not None and getattr(a, "transport", "in-process") != "in-process":
        raise ValueError("--validation is scored by the in-process simulation only")
    if data is not None and aux is None:
        raise ValueError(
            "--data needs --aux: a public auxiliary set with the same classes (SER subspaces are built from it)"
        )
    if test is not None and aux is None:
        raise ValueError("--test goes with --aux (the public auxiliary set it is compared with)")

    def absolute(path: str | None) -> str | None:  # run configs travel to other processes
        return str(Path(path).resolve()) if path is not None else None

    public = PublicSets(
        aux=absolute(aux),
        test=absolute(test),
        validation=absolute(validation),
        image_size=a.image_size,
        channels=a.channels,
        resize=a.resize,
        aux_per_class=aux_per_class,
        data_root=a.data_root,
        download=getattr(a, "download", False),
        reading=reading,
    )
    private = source_for_path(data, a.image_size, a.channels, a.resize, "train", reading) if data is not None else None
    return public, private


def read_policy_from_args(a: argparse.Namespace):
    """--unreadable, --max-skipped, --volume-axis, --slice-range as the ``ReadPolicy`` of every file set."""
    from shared.images.policy import ReadPolicy

    return ReadPolicy(a.unreadable, a.max_skipped, a.volume_axis, tuple(a.slice_range))


def own_image_options(p: argparse.ArgumentParser, data_help: str, test: bool = True) -> None:
    """--data (private), --aux and --test (public) and their pixel format: any labelled image collection."""
    kinds = "a folder of class folders, a CSV manifest (path,label,...) or an npz"
    p.add_argument("--data", help=f"{data_help}: {kinds}")
    p.add_argument(
        "--aux", help="the public auxiliary set (same classes; folder, CSV or npz); default: Fashion-MNIST's"
    )
    if test:
        p.add_argument("--test", help="a public test set (same classes); with --aux and without it, no evaluation")
    p.add_argument("--image-size", type=int, help="image side in pixels (public; needed for folders and CSV)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (gray) or 3 (RGB) (public; folders and CSV)")
    p.add_argument(
        "--resize", choices=RESIZE_POLICIES, default=DEFAULT_RESIZE, help="shorter side + centre crop, or pad"
    )
    p.add_argument(
        "--unreadable",
        choices=UNREADABLE_POLICIES,
        default=ReadPolicy.unreadable,
        help="a file that cannot be decoded stops the run (refuse), or is left out and listed in the load report",
    )
    p.add_argument(
        "--max-skipped",
        type=float,
        default=ReadPolicy.max_skipped,
        help="with --unreadable skip: the largest share of files left out",
    )
    p.add_argument(
        "--volume-axis",
        type=int,
        choices=(0, 1, 2),
        help="volumes (multi-frame DICOM, NIfTI) are read as 2D slices along this axis (default: DICOM frames, "
        "NIfTI axial)",
    )
    p.add_argument(
        "--slice-range",
        type=float,
        nargs=2,
        default=ReadPolicy.slice_range,
        metavar=("START", "STOP"),
        help="keep the slices of each volume within these fractions of its axis (default 0 1: all)",
    )
