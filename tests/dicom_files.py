"""pydicom's own test files for the tests, from the pydicom wheel or pydicom-data (never downloaded)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


def dicom_file(name: str) -> Path:
    """The shipped test file ``name``; the test is skipped, saying why, where neither package ships it."""
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is shipped neither by pydicom nor by the installed pydicom-data")
    return Path(path)
