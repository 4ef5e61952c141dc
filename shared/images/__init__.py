"""Loading labelled image collections of any size and channel count into ``shared.datasets.ImageSet``.

One module per responsibility: ``decode`` (one file, faithfully), ``dicom`` (one DICOM file),
``nifti`` (one NIfTI volume), ``policy`` (unreadable files and volumes: ``ReadPolicy``),
``resize`` (output shape and policy), ``folder`` (class folders), ``manifest`` (CSV), ``medmnist``,
``named`` (torchvision datasets), ``cache`` (decoded arrays on disk), ``collection`` (decode a
listing through the cache), ``classes`` (class order and the cross-set check), ``source`` (one
description, one loader). Normalisation constants are public: nothing here computes mean or std
of a loaded (private) set.
"""

from shared.images.cache import ImageCache, default_cache_dir
from shared.images.classes import check_same_classes, natural_key, natural_sorted
from shared.images.decode import MAX_IMAGE_PIXELS, convert_channels, decode_file, decode_slices
from shared.images.errors import ClassMismatchError, ImageDecodeError, ImageSourceError, NotAnImage
from shared.images.folder import load_folder, scan_image_folder
from shared.images.manifest import load_manifest, read_manifest
from shared.images.medmnist import load_medmnist
from shared.images.named import NAMED_DATASETS, load_named
from shared.images.policy import ReadPolicy
from shared.images.report import LoadReport, LoadResult
from shared.images.resize import RESIZE_POLICIES, TargetFormat, convert_array_images, resize_image
from shared.images.source import SOURCE_KINDS, ImageSource, load_source, load_sources_matching

__all__ = [
    "MAX_IMAGE_PIXELS",
    "NAMED_DATASETS",
    "RESIZE_POLICIES",
    "SOURCE_KINDS",
    "ClassMismatchError",
    "ImageCache",
    "ImageDecodeError",
    "ImageSource",
    "ImageSourceError",
    "LoadReport",
    "LoadResult",
    "NotAnImage",
    "ReadPolicy",
    "TargetFormat",
    "check_same_classes",
    "convert_array_images",
    "convert_channels",
    "decode_file",
    "decode_slices",
    "default_cache_dir",
    "load_folder",
    "load_manifest",
    "load_medmnist",
    "load_named",
    "load_source",
    "load_sources_matching",
    "natural_key",
    "natural_sorted",
    "read_manifest",
    "resize_image",
    "scan_image_folder",
]
