"""A team's own features in ``features.toml``: parsed, checked with errors that name the
entry, within the cost budget; and ``fraudstream features list/check`` on a history of
this installation, the check driving the live Redis (integration part)."""

from pathlib import Path

import pytest

from model.catalogue import DEFAULT, CatalogueError, Count, Distinct, Mismatch, Novelty
from model.catalogue_file import (
    commands_per_payment,
    installation_catalogue,
    parse_window,
)
from model.config import Settings
from model.features import DAY, HOUR
from tests.conftest import cli

TEAM = """
[[features]]
kind = "distinct"
entity = "merchant"
of = "card"
window = "1h"
cap = 500

[[features]]
kind = "count"
entity = "bin"
window = "1d"

[[features]]
kind = "novelty"
entity = "customer"
of = "ip_prefix"
window = "14d"

[[features]]
kind = "mismatch"
name = "bin_country_differs_from_billing"
left = "country"
right = "billing_country"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "features.toml"
    path.write_text(text)
    return path


def test_the_file_adds_its_features_to_the_default(tmp_path: Path) -> None:
    catalogue = installation_catalogue(write(tmp_path, TEAM), 1000)
    assert catalogue.names[:len(DEFAULT.names)] == DEFAULT.names
    assert catalogue.features[len(DEFAULT.names):] == (
        Distinct("merchant", "card", HOUR, 500), Count("bin", DAY),
        Novelty("customer", "ip_prefix", 14 * DAY),
        Mismatch("bin_country_differs_from_billing", "country", "billing_country"))
    assert installation_catalogue(tmp_path / "absent.toml", 1000).names == DEFAULT.names


@pytest.mark.parametrize(("text", "message"), [
    ('[[features]]\nkind = "count"\nentity = "planet"\nwindow = "1h"',
     r"features\[0\]: .*unknown entity 'planet'"),
    ('[[features]]\nkind = "count"\nentity = "card"\nwindow = "200d"',
     r"features\[0\]: .*longer than the retention"),
    ('[[features]]\nkind = "count"\nentity = "card"\nwindow = "soon"',
     r"features\[0\]\.count\.window: .*write seconds or a number with s, m, h or d"),
    ('[[features]]\nkind = "sum"\nentity = "card"\nwindow = "1h"',
     r"features\[0\]: .*expected tags: 'count', 'distinct', 'novelty', 'since_last', "
     r"'mismatch'"),
    ('[[features]]\nkind = "count"\nentity = "card"\nwindow = "1h"\ncolour = "red"',
     r"features\[0\]\.count\.colour: Extra inputs are not permitted"),
    ('[[features]]\nkind = "count"\nentity = "device"\nwindow = "1h"',
     r"duplicate feature name 'device_count_1h'"),
    ("[[features]\nkind = 1", r"not valid TOML"),
    ('[feature]\nkind = "count"', r"unknown table\(s\) \['feature'\]"),
])
def test_errors_name_the_entry_and_the_problem(tmp_path: Path, text: str,
                                               message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        installation_catalogue(write(tmp_path, text), 1000)


def test_a_catalogue_over_its_cost_budget_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TEAM)
    cost = commands_per_payment(installation_catalogue(path, 1000))
    assert cost > commands_per_payment(DEFAULT)
    assert installation_catalogue(path, cost).names  # at the budget: accepted
    with pytest.raises(CatalogueError, match=f"costs {cost} Redis commands per payment, "
                                             f"over the budget of {cost - 1}"):
        installation_catalogue(path, cost - 1)


def test_windows_read_as_people_write_them() -> None:
    assert [parse_window(w) for w in ("90", "90s", "15m", "1.5h", "7d", 60)] == [
        90.0, 90.0, 900.0, 1.5 * HOUR, 7 * DAY, 60.0]


@pytest.mark.integration
def test_features_list_and_check_on_this_installations_history(
        stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from stores import pii_key
    from stores.history import HistoryStore
    from training.importer import import_history
    from training.simulator import SimulationConfig, simulate

    sim = simulate(SimulationConfig.for_preset(
        "ecom", days=6, cards=150, terminals=40, seed=5,
        start=datetime(2026, 10, 1, tzinfo=UTC)))
    path = stack.home / "ecom.parquet"
    sim.to_parquet(path)
    import_history(HistoryStore(stack.history_dir), path, pii_key=pii_key.load(stack))
    (stack.home / "features.toml").write_text(TEAM)
    monkeypatch.setenv("COLUMNS", "250")  # the tables' rows on one line each

    listed = cli("features", "list", "--group", "links")
    assert listed.exit_code == 0, listed.output
    assert "merchant_cards_1h_cap500" in listed.output and "card_count_1h" not in listed.output

    checked = cli("features", "check", "--sample", "1500")
    assert checked.exit_code == 0, checked.output
    assert "catalogue OK" in checked.output and "1,500 payments" in checked.output
    line = next(li for li in checked.output.splitlines() if "merchant_cards_1h_cap500" in li)
    assert "yes" in line  # online equals offline for the team's own feature

    (stack.home / "features.toml").write_text(TEAM.replace('"1d"', '"400d"'))
    bad = cli("features", "check")
    assert bad.exit_code == 2 and "features[1]" in bad.output and "retention" in bad.output
