"""Errors of the image-loading layer: each message names the file, row or class folder at fault.

All are ``ValueError``s (bad input, not a bug), so callers that already turn ``ValueError`` into a
user-facing refusal keep working. A missing root folder or file raises ``DataNotFound`` instead, for
every reader alike.
"""

from __future__ import annotations

from pathlib import Path


class DataNotFound(RuntimeError):
    """No copy of a dataset could be found or fetched; the message says how to provide one."""


class ImageDecodeError(ValueError):
    """One file could not be decoded faithfully (corrupt, truncated, too large, unsupported)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageSourceError(ValueError):
    """A collection's layout or manifest is wrong (empty class folder, bad CSV row, unknown class...)."""


class ClassMismatchError(ValueError):
    """Two image sets disagree on their class names or their order (a silent label permutation)."""


class NotAnImage(ImageDecodeError):
    """A file that holds no image at all (a ``DICOMDIR``, a DICOM report or structure set without pixel
    data): collections ignore and count it like ``.DS_Store``; it is never an error there."""


# Why a file was ignored, as the load report counts them.
IGNORED_HIDDEN = "hidden or system entry"
IGNORED_NOT_IMAGE = "not an image file"
IGNORED_OUTSIDE_CLASS = "not inside a class folder"
IGNORED_DICOMDIR = "DICOMDIR"
IGNORED_NO_PIXELS = "DICOM without pixel data"
