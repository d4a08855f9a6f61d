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
from tests.conftest import cli, import_ecom_history

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
def test_features_list_and_check_on_this_installations_history(stack: Settings) -> None:
    import_ecom_history(stack, days=6, cards=150, terminals=40, seed=5)
    (stack.home / "features.toml").write_text(TEAM)

    # What the commands print is a table as wide as the terminal: the assertions read
    # the lines rich never wraps, and the check's own report.
    listed = cli("features", "list", "--group", "links")
    assert listed.exit_code == 0, listed.output
    links = [f for f in installation_catalogue(stack.home / "features.toml", 1000).features
             if f.group == "links"]
    assert Distinct("merchant", "card", HOUR, 500) in links
    assert f"{len(links)} features (default catalogue and " in listed.output

    checked = cli("features", "check", "--sample", "1500")
    assert checked.exit_code == 0, checked.output
    assert "catalogue OK" in checked.output and "1,500 payments" in checked.output
    from training.feature_check import check

    report = check(stack, installation_catalogue(stack.home / "features.toml", 1000), 1500)
    row = next(r for r in report.rows if r.feature == "merchant_cards_1h_cap500")
    assert row.online_differs == 0 and row.present > 0.5 and row.distinct > 1
    assert report.parity_ok and report.commands_per_payment > 0

    (stack.home / "features.toml").write_text(TEAM.replace('"1d"', '"400d"'))
    bad = cli("features", "check")
    assert bad.exit_code == 2 and "features[1]" in bad.output and "retention" in bad.output
