"""What the product's wheel ships: the service's packages, and none of the development tools
(the local launcher, the chaos harness, the tests' environment live in ``devtools/``, a
distribution of their own)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

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


# ---- dependencies: floors above known advisories, and the lock setup installs -----------
# package -> (the first version without the advisory, what it was); a floor in
# pyproject.toml may not fall below these, nor the lock.
ADVISORY_FLOORS = {
    "aiohttp": ("3.12.14", "request smuggling in the pure-Python parser, CVE-2025-53643"),
    "starlette": ("0.49.1", "Range header DoS in FileResponse, CVE-2025-62727; multipart "
                            "DoS, CVE-2025-54121"),
    "h11": ("0.16.0", "request smuggling through chunked trailers, CVE-2025-43859"),
    "urllib3": ("2.5.0", "redirects not disabled as asked, CVE-2025-50181"),
    "requests": ("2.32.4", ".netrc credentials leak, CVE-2024-47081"),
    "idna": ("3.7", "quadratic decoding DoS, CVE-2024-3651"),
    "certifi": ("2024.7.4", "GLOBALTRUST roots removed, CVE-2024-39689"),
    "anyio": ("4.4.0", "thread race crash, GHSA-9f2c-xxfm-32mj"),
    "pillow": ("11.3.0", "heap overflow in DDS writing, CVE-2025-48379"),
    "fonttools": ("4.60.2", "arbitrary file write in varLib, CVE-2025-66034"),
    "tornado": ("6.5", "multipart logging DoS, CVE-2025-47287"),
    "jinja2": ("3.1.6", "sandbox escape through attr, CVE-2025-27516"),
    "pyarrow": ("17.0.0", "IPC deserialisation, CVE-2023-47248 and later fixes"),
    "scikit-learn": ("1.5.0", "tokens stored in TfidfVectorizer, CVE-2024-5206"),
}


def _declared() -> dict[str, Any]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]
            + project["optional-dependencies"]["dev"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _locked() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            spec = line.split(";", 1)[0].strip()
            name, version = spec.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_floor_is_above_its_known_advisory_and_the_lock_keeps_them() -> None:
    from packaging.version import Version

    declared, locked = _declared(), _locked()
    for name, (fixed, what) in ADVISORY_FLOORS.items():
        assert name in declared, f"{name}: no floor in pyproject.toml ({what})"
        floors = [Version(s.version) for s in declared[name].specifier if s.operator == ">="]
        assert floors and min(floors) >= Version(fixed), f"{name} floor below {fixed}: {what}"
        assert Version(locked[name]) >= Version(fixed), f"{name} locked below {fixed}: {what}"


def test_the_lock_satisfies_every_declared_requirement_and_is_what_is_installed() -> None:
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    declared, locked = _declared(), _locked()
    for name, req in declared.items():
        assert name in locked, f"{name} is required but not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock pins {name}=={locked[name]}, outside {req}: run scripts/lock.sh"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    drifted = {n: (v, installed[n]) for n, v in locked.items()
               if n in installed and installed[n] != v}
    assert not drifted, f"installed versions differ from the lock (scripts/setup.sh): {drifted}"
    assert all(name in installed for name in declared)
