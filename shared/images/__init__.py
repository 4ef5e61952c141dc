"""Loading labelled image collections of any size and channel count into an ``ImageSet``.

One module per responsibility: ``image_set`` (the in-memory form, ``ImageSet``), ``errors`` (what
goes wrong, ``DataNotFound`` among them), ``pixels`` (limits and the 8-bit stretch every decoder
shares), ``decode`` (one file, faithfully), ``dicom`` (one DICOM file), ``nifti`` (one NIfTI
volume), ``policy`` (unreadable files and volumes: ``ReadPolicy``), ``resize`` (output shape and
policy), ``folder`` (class folders), ``manifest`` (CSV), ``medmnist``, ``named`` (torchvision
datasets), ``fashion_mnist`` (IDX files), ``npz``, ``cache`` (decoded arrays on disk),
``collection`` (decode a listing through the cache), ``classes`` (class order and the cross-set
check), ``source`` (one description, one loader). Normalisation constants are public: nothing here
computes mean or std of a loaded (private) set.
"""

from __future__ import annotations

import importlib

# Each public name and the module it lives in: imported when first used, so that importing one light
# module of this package (``shared.images.policy`` for a command's --help, say) loads no decoder or torch.
_HOME = {
    "ClassMismatchError": "errors",
    "DataNotFound": "errors",
    "FASHION_MNIST_NORMALIZATION": "fashion_mnist",
    "ImageCache": "cache",
    "ImageDecodeError": "errors",
    "ImageSet": "image_set",
    "ImageSource": "source",
    "ImageSourceError": "errors",
    "LoadReport": "report",
    "LoadResult": "report",
    "MAX_IMAGE_PIXELS": "pixels",
    "NAMED_DATASETS": "named",
    "NotAnImage": "errors",
    "RESIZE_POLICIES": "resize",
    "ReadPolicy": "policy",
    "SOURCE_KINDS": "source",
    "TargetFormat": "resize",
    "check_same_classes": "classes",
    "convert_array_images": "resize",
    "convert_channels": "decode",
    "decode_file": "decode",
    "decode_slices": "decode",
    "default_cache_dir": "cache",
    "load_fashion_mnist": "fashion_mnist",
    "load_folder": "folder",
    "load_manifest": "manifest",
    "load_medmnist": "medmnist",
    "load_named": "named",
    "load_npz": "npz",
    "load_source": "source",
    "load_sources_matching": "source",
    "natural_key": "classes",
    "natural_sorted": "classes",
    "read_manifest": "manifest",
    "resize_image": "resize",
    "save_npz": "npz",
    "scan_image_folder": "folder",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
