"""The package metadata builds without setuptools deprecation warnings (``make setup`` shows
them to every user)."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_metadata_has_no_deprecation_warnings_and_an_spdx_license() -> None:
    """``license = { text = ... }`` made setuptools warn "`project.license` as a TOML table is
    deprecated" on every install; the SPDX string form (setuptools >= 77) says the same."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), PYPROJECT)
    deprecated = [str(w.message).splitlines()[0] for w in caught if "deprecat" in str(w.message)]
    assert not deprecated, deprecated
    assert dist.metadata.license_expression == "Apache-2.0"
