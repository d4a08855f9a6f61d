"""fraudstream's version: the one in pyproject.toml, read from the installed package's
metadata, so that there is one number to bump."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("fraudstream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


VERSION = package_version()
