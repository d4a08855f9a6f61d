"""What the product's wheel ships: the service's packages, and none of the development tools
(the local launcher, the chaos harness, the tests' environment live in ``devtools/``, a
distribution of their own)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = {"model", "stores", "api", "stream", "training", "ops"}


def _shipped() -> set[str]:
    # The discovery setuptools runs for ``[tool.setuptools.packages.find]`` (namespaces on).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    return set(find_namespace_packages(where=str(ROOT), include=find["include"],
                                       exclude=find.get("exclude", ())))


def test_the_wheel_ships_every_product_package_and_no_development_tool() -> None:
    shipped = _shipped()
    assert {name.split(".")[0] for name in shipped} == PRODUCT
    assert "ops.cli" in shipped and "stores" in shipped
    assert not any(name.split(".")[0] in {"devtools", "fraudstream_dev", "tests",
                                          "benchmarks"} for name in shipped)


def test_the_development_tools_are_a_distribution_of_their_own() -> None:
    config = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())
    assert config["project"]["name"] == "fraudstream-devtools"
    entry_points = config["project"]["entry-points"]["fraudstream.commands"]
    assert any(target.startswith("fraudstream_dev.") for target in entry_points.values())
