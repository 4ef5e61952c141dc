"""The owner's private data: loaded once, held as uint8 (4x smaller than floats), grouped by class."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from owner_node.config import OwnerConfig
from owner_node.randomness import SecureRandom
from shared.datasets import to_float
from shared.identifiers import lookalike_identifiers, normalise_identifier
from shared.images.image_set import ImageSet
from shared.images.npz import load_npz
from shared.images.report import LoadReport, LoadResult
from shared.images.source import load_source


@dataclass
class PrivateData:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]
    by_class: list[torch.Tensor]  # indices of each class
    normalization: tuple[float, float]
    # Patient-level privacy: the patient (0..P-1) of each image; None when one image is one record.
    patients: torch.Tensor | None = None
    # The counts the owner publishes (Describe): the true ones, or noisy ones (class_counts = "dp").
    # Rates and expected counts derive from these, so replies reveal nothing more about the counts.
    public_counts: tuple[int, ...] | None = None
    # What the loader reported (files ignored or skipped, cache, time) and the images held out of every
    # release ([data] holdout): the owner's load summary shows them. None: data given in memory.
    load_report: LoadReport | None = None
    held_out: int = 0
    source_files: tuple[str, ...] = ()  # the loaded files (file kinds), for the summary's format check
    # Patient ids that differ only in case or leading zeros (``shared.identifiers.lookalike_identifiers``).
    patient_lookalikes: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def from_image_set(
        cls, data: ImageSet, normalization: tuple[float, float], patients: torch.Tensor | None = None
    ) -> PrivateData:
        by_class = [torch.nonzero(data.labels == c).flatten() for c in range(data.num_classes)]
        if any(len(ix) == 0 for ix in by_class):
            raise ValueError("every class must have at least one private example")
        if patients is not None and patients.shape != data.labels.shape:
            raise ValueError("patients must name one patient per image")
        return cls(data.images, data.labels.clone(), data.class_names, by_class, tuple(normalization), patients)

    @property
    def num_patients(self) -> int:
        return int(self.patients.max()) + 1 if self.patients is not None and len(self.patients) else 0

    def float_images(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised float images of ``index`` (converted on demand)."""
        return to_float(self.images[index], self.normalization)

    @property
    def class_counts(self) -> list[int]:
        return [len(ix) for ix in self.by_class]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def sample_rate(self, expected_group_size: float) -> float:
        """One rate q = g / n_min (capped at 1) for every class: the smallest class contributes about ``g``
        examples per draw and class c about q * n_c.

        The guarantee depends only on the largest rate, so sampling the large classes at that same
        rate costs nothing and raises their signal-to-noise (imbalanced data: a rare finding of a few
        hundred images beside tens of thousands of normal ones).
        """
        return min(1.0, expected_group_size / min(self.published_counts))

    def sample_rates(self, expected_group_size: float) -> list[float]:
        """Each class's rate: the one rate of ``sample_rate`` (the samplers take a rate per class)."""
        return [self.sample_rate(expected_group_size)] * len(self.by_class)

    def expected_sample(self, expected_group_size: float) -> float:
        """Expected records in one draw, all classes together: the owner's compute per draw."""
        return self.sample_rate(expected_group_size) * sum(self.published_counts)

    @property
    def published_counts(self) -> tuple[int, ...]:
        return self.public_counts if self.public_counts is not None else tuple(self.class_counts)

    def poisson_sample(self, rates: list[float], stream: SecureRandom) -> torch.Tensor:
        """Each example of class c is included independently with probability rates[c] (exactly, see
        ``owner_node.randomness``), decided by the owner's secret stream.

        Patient mode: each *patient* is included with the one rate, and with it every image it has.
        """
        if self.patients is not None:
            if len(set(rates)) != 1:
                raise ValueError("patient-level sampling needs one rate for every class")
            chosen = stream.bernoulli(self.num_patients, rates[0])
            return torch.nonzero(chosen[self.patients]).flatten()
        chosen = [ix[stream.bernoulli(len(ix), q)] for ix, q in zip(self.by_class, rates, strict=True)]
        return torch.cat(chosen)


def patient_index(ids: Sequence[object]) -> torch.Tensor:
    """Each image's patient as an index 0..P-1 (in order of first appearance).

    Ids are compared normalised (``shared.identifiers``: NFC, no surrounding spaces), so one patient
    written two ways is one record, clipped to C once.
    """
    seen: dict[str, int] = {}
    return torch.tensor([seen.setdefault(normalise_identifier(i), len(seen)) for i in ids], dtype=torch.int64)


@dataclass(frozen=True)
class OwnerImages:
    data: ImageSet
    patients: torch.Tensor | None = None  # patient mode: each image's patient index
    report: LoadReport | None = None  # the loader's report on the whole set (before any holdout)
    files: tuple[str, ...] = ()  # the whole set's files (file kinds), as the loader listed them
    patient_lookalikes: tuple[tuple[str, ...], ...] = ()  # the whole set's (lookalike_identifiers)

    def subset(self, index: torch.Tensor) -> OwnerImages:
        patients = None if self.patients is None else patient_index(self.patients[index].tolist())
        return OwnerImages(self.data.subset(index), patients, self.report, self.files, self.patient_lookalikes)


def holdout_split(
    data: ImageSet, fraction: float, seed: int, patients: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(release indices, held-out indices): ``fraction`` of each class (of the patients, in patient
    mode, so no patient is on both sides), drawn with a fixed seed.

    Every class keeps at least one image on each side (refused otherwise), so the released
    statistics and the evaluation both cover every class.
    """
    g = torch.Generator().manual_seed(seed)
    if patients is not None:
        num = int(patients.max()) + 1
        held_patients = torch.randperm(num, generator=g)[: round(fraction * num)]
        mask = torch.zeros(num, dtype=torch.bool)
        mask[held_patients] = True
        held_mask = mask[patients]
        for c, name in enumerate(data.class_names):
            in_class = data.labels == c
            if fraction > 0 and not (held_mask & in_class).any() or not (~held_mask & in_class).any():
                raise ValueError(
                    f"[data] holdout = {fraction}: class {name!r} has too few patients to keep {fraction:.0%} of "
                    "them apart and still release the rest"
                )
        return torch.nonzero(~held_mask).flatten(), torch.nonzero(held_mask).flatten()
    keep, held = [], []
    for c, name in enumerate(data.class_names):
        ix = torch.nonzero(data.labels == c).flatten()
        n_held = round(fraction * len(ix))
        if fraction > 0 and not 1 <= n_held < len(ix):
            raise ValueError(
                f"[data] holdout = {fraction}: class {name!r} has {len(ix)} images, too few to keep "
                f"{fraction:.0%} of them apart and still release the rest"
            )
        order = ix[torch.randperm(len(ix), generator=g)]
        held.append(order[:n_held])
        keep.append(order[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def patient_ids(config: OwnerConfig, result: LoadResult) -> tuple[str, ...]:
    """Each loaded image's patient, as ``[data] patient_from`` says: the manifest's ``patient_column``,
    the DICOM PatientID of its file, or its file (a volume's slices are one patient)."""
    source = config.data_path
    if config.patient_from == "file":
        return result.files
    if config.patient_from == "dicom":
        ids, where = result.dicom_patients, "DICOM PatientID"
    else:
        name = normalise_identifier(config.patient_column)
        column = result.columns.get(name)
        if column is None:
            raise ValueError(
                f'[privacy] unit = "patient": the manifest {source} has no {name!r} '
                f"column (columns: path, label, {', '.join(result.columns) or 'nothing else'})"
            )
        ids, where = column, repr(name)
    empty = sorted({f for f, v in zip(result.files, ids, strict=True) if not normalise_identifier(v)})
    if empty:
        raise ValueError(
            f"{source}: {len(empty)} files have an empty {where} (e.g. {', '.join(empty[:3])}); every image "
            "needs its patient in patient mode"
        )
    return ids


def check_volumes_have_a_patient(config: OwnerConfig, result: LoadResult) -> None:
    """A volume's slices are one person's: as separate image-level records they would be protected
    one slice at a time. Refused outside patient mode."""
    if config.privacy_unit == "patient" or len(set(result.files)) == len(result.files):
        return
    volume, slices = Counter(result.files).most_common(1)[0]
    raise ValueError(
        f"{volume} was read as {slices} slices ({result.report.volumes} volumes in all): with [privacy] "
        'unit = "image" each slice would be its own record. Set unit = "patient" with [data] patient_from = '
        '"dicom" or "file" (or a manifest column), so that a volume is protected as a whole'
    )


def load_owner_images(config: OwnerConfig, progress: bool = True) -> tuple[OwnerImages, ImageSet | None]:
    """(the images releases are computed from, the held-out split or None) as ``[data]`` describes them.

    Decoded images are cached as uint8 in ``config.image_cache_dir`` (beside the ledger by default,
    so private pixels stay in the owner's own storage), which makes a restart take seconds. In
    patient mode each image's patient comes from ``patient_ids``.
    """
    result = load_source(config.image_source(), progress=progress, cache_dir=config.image_cache_dir)
    check_volumes_have_a_patient(config, result)
    patients, lookalikes = None, ()
    if config.privacy_unit == "patient":
        ids = patient_ids(config, result)
        patients = patient_index(ids)
        if config.patient_from != "file":  # ids typed by people (a column, PatientID), not file paths
            lookalikes = tuple(lookalike_identifiers(ids))
    images = OwnerImages(result.data, patients, result.report, result.files, lookalikes)
    if not config.holdout:
        return images, None
    release, held = holdout_split(result.data, config.holdout, config.holdout_seed, patients)
    return images.subset(release), result.data.subset(held)


def load_private_images(config: OwnerConfig, progress: bool = True) -> ImageSet:
    """The images every release is computed from: the private set less any held-out split."""
    return load_owner_images(config, progress)[0].data


def public_normalization(aux: ImageSet) -> tuple[float, float]:
    """Pixel mean and std of the *public* auxiliary set: the default scaling (never private pixels)."""
    pixels = aux.images.to(torch.float64) / 255.0
    std = float(pixels.std())
    return float(pixels.mean()), std if std > 0 else 1.0


def normalization_for(config: OwnerConfig, aux: ImageSet) -> tuple[float, float]:
    """The owner's configured constants, or else the public auxiliary set's (Describe publishes them)."""
    if config.normalization is not None:
        return (float(config.normalization[0]), float(config.normalization[1]))
    return public_normalization(aux)


def load_private_data(config: OwnerConfig, normalization: tuple[float, float], progress: bool = True) -> PrivateData:
    images, held = load_owner_images(config, progress)
    data = PrivateData.from_image_set(images.data, normalization, images.patients)
    data.load_report, data.held_out = images.report, len(held) if held is not None else 0
    data.source_files, data.patient_lookalikes = images.files, images.patient_lookalikes
    return data


def load_auxiliary(config: OwnerConfig) -> ImageSet:
    """The public auxiliary images the owner agreed to use for subspaces (pinned by hash)."""
    return load_npz(config.aux_path)
