"""A team's own features, declared in a file (``features.toml`` in the home), added to the
default catalogue without code.

    [[features]]
    kind = "distinct"      # count | distinct | novelty | since_last | mismatch
    entity = "merchant"    # card, terminal, merchant, customer, device, ip, ip_prefix,
    of = "card"            #   email, bin
    window = "1h"          # seconds, or a number with s, m, h or d
    cap = 500              # distinct and novelty: keys kept per entity (default 1000)

Every entry is checked as the code's declarations are (``model.catalogue``), and the file
as a whole against a cost budget: the Redis commands a payment costs when every entity is
present. Errors name the entry (``features[2]``) and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from model.catalogue import (
    DEFAULT,
    DISTINCT_CAP,
    Catalogue,
    CatalogueError,
    Count,
    Distinct,
    Feature,
    Mismatch,
    Novelty,
    SinceLast,
)
from model.features import DAY, HOUR

_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_window(value: str | float) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _SPAN.fullmatch(value.strip())
    if not match:
        raise ValueError(f"window {value!r}: write seconds or a number with s, m, h or d "
                         "(e.g. '1h', '7d')")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Windowed(_Entry):
    entity: str
    window: float

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: str | float) -> float:
        return parse_window(v)


class CountEntry(_Windowed):
    kind: Literal["count"]
    include_self: bool = True
    label: str = ""

    def feature(self) -> Feature:
        return Count(self.entity, self.window, self.include_self, self.label)


class DistinctEntry(_Windowed):
    kind: Literal["distinct"]
    of: str
    cap: int = DISTINCT_CAP

    def feature(self) -> Feature:
        return Distinct(self.entity, self.of, self.window, self.cap)


class NoveltyEntry(_Windowed):
    kind: Literal["novelty"]
    of: str
    cap: int = DISTINCT_CAP

    def feature(self) -> Feature:
        return Novelty(self.entity, self.of, self.window, self.cap)


class SinceLastEntry(_Entry):
    kind: Literal["since_last"]
    entity: str

    def feature(self) -> Feature:
        return SinceLast(self.entity)


class MismatchEntry(_Entry):
    kind: Literal["mismatch"]
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    left: str
    right: str

    def feature(self) -> Feature:
        return Mismatch(self.name, self.left, self.right)


EntryModel = Annotated[CountEntry | DistinctEntry | NoveltyEntry | SinceLastEntry
                       | MismatchEntry, Field(discriminator="kind")]
_ENTRIES = TypeAdapter(list[EntryModel])


def commands_per_payment(catalogue: Catalogue) -> int:
    """Redis commands the catalogue's store runs for a payment with every entity present
    (``stores/lua/catalogue_entity.lua``): the bound a budget is checked against."""
    total = 0
    by_entity: dict[str, list[Feature]] = {}
    for f in catalogue.features:
        if isinstance(f, Count | SinceLast | Distinct | Novelty):
            by_entity.setdefault(f.entity, []).append(f)
    for fs in by_entity.values():
        counts = [f for f in fs if isinstance(f, Count)]
        if counts or any(isinstance(f, SinceLast) for f in fs):
            total += 3 + len(counts) + any(isinstance(f, SinceLast) for f in fs)
        sets = {(f.of, f.cap) for f in fs if isinstance(f, Distinct | Novelty)}
        total += 6 * len(sets) + sum(isinstance(f, Distinct) for f in fs)
    return total


def read(path: Path) -> list[Feature]:
    """The file's features, checked one by one; raises CatalogueError naming the entry."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read it ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"features"}
    if unknown:
        raise CatalogueError(f"{path}: unknown table(s) {sorted(unknown)}; the file holds "
                             "[[features]] entries")
    try:
        entries = _ENTRIES.validate_python(doc.get("features", []))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise CatalogueError(f"{path}: features{where}: {first['msg']}") from exc
    features = []
    for i, entry in enumerate(entries):
        feature = entry.feature()
        try:
            Catalogue([feature])
        except CatalogueError as exc:
            raise CatalogueError(f"{path}: features[{i}]: {exc}") from exc
        features.append(feature)
    return features


def installation_catalogue(path: Path | None, budget: int,
                           base: Catalogue = DEFAULT) -> Catalogue:
    """The default catalogue plus the file's features (none if there is no file),
    checked as a whole: no name twice, and within the cost budget."""
    extra = read(path) if path is not None and path.exists() else []
    try:
        catalogue = Catalogue((*base.features, *extra), base.retention)
    except CatalogueError as exc:
        raise CatalogueError(f"{path}: {exc} (the default catalogue has it already?)"
                             ) from exc
    cost = commands_per_payment(catalogue)
    if cost > budget:
        raise CatalogueError(
            f"{path}: the catalogue costs {cost} Redis commands per payment, over the "
            f"budget of {budget} (FRAUDSTREAM_FEATURES_COST_BUDGET); drop entries or "
            "share windows")
    return catalogue
