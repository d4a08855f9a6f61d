"""The payment simulator: shape of its output, each fraud family, the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.simulator import PATTERNS, SimulationConfig, simulate

COLUMNS = ["payment_id", "timestamp", "card_id", "terminal_id", "amount", "currency",
           "country", "channel", "merchant_category", "is_fraud", "label_reported_at",
           "label_source", "fraud_pattern"]
DAY = pd.Timedelta(days=1)
# Small, but with every family frequent enough to be looked at.
BUSY = dict(days=30, cards=600, terminals=120, seed=3, card_testing_rate=0.003,
            stolen_card_rate=0.003, takeover_rate=0.003, hard_limit_rate=0.002,
            unusual_hours_rate=0.003, compromised_terminals_per_day=0.2)


@pytest.fixture(scope="module")
def busy() -> pd.DataFrame:
    return simulate(SimulationConfig(**BUSY))


def without(df: pd.DataFrame, family: str) -> pd.DataFrame:
    return df[df["fraud_pattern"] != family]


def test_output_shape_and_order(busy):
    assert list(busy.columns) == COLUMNS
    assert busy["timestamp"].is_monotonic_increasing
    assert busy["payment_id"].is_unique
    start = SimulationConfig().start
    assert busy["timestamp"].min() >= pd.Timestamp(start)
    assert busy["timestamp"].max() < pd.Timestamp(start) + 30 * DAY
    ms = busy["timestamp"].astype("int64")  # microseconds
    assert (ms % 1000 == 0).all()
    assert set(busy["channel"]) <= {"pos", "ecom", "moto", "atm"}
    assert (busy["amount"] >= 0).all()
    assert busy["fraud_pattern"].notna().eq(busy["is_fraud"]).all()


def test_reproducible_by_seed():
    cfg = SimulationConfig(days=12, cards=120, terminals=15, seed=5)
    a, b = simulate(cfg), simulate(cfg)
    pd.testing.assert_frame_equal(a, b)
    other = simulate(SimulationConfig(days=12, cards=120, terminals=15, seed=6))
    assert not a["amount"].equals(other["amount"])


def test_progress_counts_every_card_once():
    seen: list[int] = []
    simulate(SimulationConfig(days=3, cards=700, terminals=20), progress=seen.append)
    assert sum(seen) == 700 and len(seen) > 1


def test_every_family_appears_and_labels_come_after_payments(busy):
    fraud = busy[busy["is_fraud"]]
    assert set(fraud["fraud_pattern"]) == set(PATTERNS)
    assert fraud["fraud_pattern"].value_counts().min() >= 5
    assert (fraud["label_reported_at"] > fraud["timestamp"]).all()
    assert set(fraud["label_source"]) == {"chargeback", "analyst", "customer_report"}
    legit = busy[~busy["is_fraud"]]
    assert legit["label_reported_at"].isna().all() and legit["label_source"].isna().all()


@pytest.mark.parametrize("family", PATTERNS)
def test_a_family_switched_off_disappears_and_leaves_the_others(busy, family):
    others = tuple(p for p in PATTERNS if p != family)
    off = simulate(SimulationConfig(**BUSY, patterns=others))
    assert family not in set(off["fraud_pattern"].dropna())
    assert set(off["fraud_pattern"].dropna()) == set(others)
    # The other families draw from their own random streams: not one of their payments
    # changes (compromised terminals only relabel legit payments, stolen cards remove the
    # owner's, so those two are compared on what they leave).
    keep = ["timestamp", "card_id", "terminal_id", "amount", "fraud_pattern"]
    for other in others:
        if other == "compromised_terminal" and family == "stolen_card":
            continue
        mine = busy.loc[busy["fraud_pattern"] == other, keep].reset_index(drop=True)
        theirs = off.loc[off["fraud_pattern"] == other, keep].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs)


def test_a_zero_rate_switches_a_family_off():
    df = simulate(SimulationConfig(**{**BUSY, "takeover_rate": 0.0, "hard_limit_rate": 0.0}))
    assert not {"account_takeover", "hard_limit"} & set(df["fraud_pattern"].dropna())


def test_compromised_terminals_relabel_payments_and_add_none(busy):
    off = simulate(SimulationConfig(
        **BUSY, patterns=tuple(p for p in PATTERNS if p != "compromised_terminal")))
    keep = ["timestamp", "card_id", "terminal_id", "amount"]
    pd.testing.assert_frame_equal(busy[keep], off[keep])
    assert busy["is_fraud"].sum() > off["is_fraud"].sum()


def test_compromised_terminal_frauds_cluster_in_time_per_terminal():
    df = simulate(SimulationConfig(days=120, cards=300, terminals=60, seed=8,
                                   patterns=("compromised_terminal",),
                                   compromised_terminals_per_day=0.05))
    hit = df[df["fraud_pattern"] == "compromised_terminal"]
    assert hit["terminal_id"].nunique() >= 3
    waves = 0
    for terminal, frauds in hit.groupby("terminal_id"):
        # A wave: frauds at the terminal with no week-long pause between them.
        ts = frauds["timestamp"].reset_index(drop=True)
        wave = (ts.diff() > 7 * DAY).cumsum()
        for _, when in ts.groupby(wave):
            waves += 1
            first, last = when.min(), when.max()
            assert last - first <= 35 * DAY, terminal
            at = df[(df["terminal_id"] == terminal) & df["timestamp"].between(first, last)]
            if len(at) >= 10:  # most of the terminal's payments during the wave
                assert at["is_fraud"].mean() > 0.5, terminal
    assert waves < len(hit) / 20
    # Nothing but the terminal gives them away: amounts look like everybody else's.
    legit = df.loc[~df["is_fraud"] & (df["amount"] > 0), "amount"]
    assert 0.3 < hit["amount"].median() / legit.median() < 3


def test_card_testing_is_a_burst_of_tiny_online_payments_then_a_cash_out(busy):
    testing = busy[busy["fraud_pattern"] == "card_testing"]
    assert (testing["channel"] == "ecom").all()
    for card, rows in testing.groupby("card_id"):
        probes = rows[rows["amount"] <= 3.0]
        cash = rows[rows["amount"] > 3.0]
        assert len(probes) >= 4, card
        assert probes["timestamp"].max() - probes["timestamp"].min() <= pd.Timedelta(minutes=25)
        assert probes["terminal_id"].nunique() >= 2 or len(probes) < 6, card
        assert len(cash) >= 1 and cash["timestamp"].min() > probes["timestamp"].max(), card


def test_stolen_card_the_owner_pays_nothing_meanwhile(busy):
    stolen = busy[busy["fraud_pattern"] == "stolen_card"]
    assert len(stolen) >= 20
    for card, rows in stolen.groupby("card_id"):
        first, last = rows["timestamp"].min(), rows["timestamp"].max()
        assert last - first <= 5 * DAY, card
        owner = busy[(busy["card_id"] == card) & ~busy["is_fraud"]
                     & busy["timestamp"].between(first, last)]
        # only merchant-initiated subscriptions go through
        assert owner["channel"].eq("ecom").all(), card
        before = busy[(busy["card_id"] == card) & ~busy["is_fraud"]
                      & (busy["timestamp"] < first)]
        # mostly at terminals the card never used before
        if len(before):
            assert (~rows["terminal_id"].isin(before["terminal_id"])).mean() > 0.5, card


def test_account_takeover_pays_several_times_the_usual_amount_online(busy):
    ato = busy[busy["fraud_pattern"] == "account_takeover"]
    assert (ato["channel"] == "ecom").all()
    legit = busy[~busy["is_fraud"] & (busy["amount"] > 0)]
    usual = legit.groupby("card_id")["amount"].median()
    ratio = ato["amount"] / ato["card_id"].map(usual)
    assert ratio.median() > 3
    for card, rows in ato.groupby("card_id"):
        assert rows["timestamp"].max() - rows["timestamp"].min() <= 18 * DAY, card


def test_hard_limit_is_exactly_the_amounts_at_or_above_the_limit(busy):
    limit = SimulationConfig().hard_limit
    above = busy["amount"] >= limit
    assert above.any()
    assert (busy.loc[above, "fraud_pattern"] == "hard_limit").all()
    assert (busy.loc[busy["fraud_pattern"] == "hard_limit", "amount"] >= limit).all()
    # Legit large payments just below it, so that "large" alone is not fraud.
    assert (~busy["is_fraud"] & (busy["amount"] >= 0.8 * limit)).any()


def test_unusual_hours_are_night_time_for_the_card(busy):
    night = busy[busy["fraud_pattern"] == "unusual_hours"]
    # 0:30-5:30 local for cards living at UTC+1, a burst lasting up to half an hour
    assert night["timestamp"].dt.hour.isin([23, 0, 1, 2, 3, 4]).all()
    assert (night["channel"] == "ecom").all()
    # Some legit payments happen at night too (night owls, subscriptions, travellers).
    legit_hours = busy.loc[~busy["is_fraud"], "timestamp"].dt.hour
    assert legit_hours.between(0, 4).mean() > 0.01


def test_zero_amount_verifications_exist_and_are_legit(busy):
    zero = busy[busy["amount"] == 0]
    assert len(zero) >= 0.002 * len(busy)
    assert not zero["is_fraud"].any()
    assert (busy.loc[busy["amount"] > 0, "amount"] >= 0.3).all()


def test_chargebacks_take_1_to_60_days_mostly_5_to_20(busy):
    more = simulate(SimulationConfig(**{**BUSY, "seed": 4}))
    both = pd.concat([busy, more])
    cb = both[both["label_source"] == "chargeback"]
    delay = (cb["label_reported_at"] - cb["timestamp"]) / DAY
    assert len(delay) > 300
    assert delay.min() >= 1 and delay.max() <= 60
    assert delay.min() < 3 and delay.max() > 30  # the whole range is used
    assert 0.6 < delay.between(5, 20).mean() < 0.95
    quick = both[both["label_source"].isin(["analyst", "customer_report"])]
    quick_delay = (quick["label_reported_at"] - quick["timestamp"]) / DAY
    assert quick_delay.median() < delay.median() / 3
    assert quick_delay.min() >= 1 / 24


@pytest.mark.parametrize("delay", [7.0, 0.25])
def test_label_delay_override_labels_every_payment_exactly_then(delay):
    df = simulate(SimulationConfig(days=12, cards=120, terminals=15, seed=5,
                                   label_delay_days=delay))
    assert df["label_reported_at"].notna().all()
    assert ((df["label_reported_at"] - df["timestamp"]) == pd.Timedelta(days=delay)).all()
    assert (df.loc[~df["is_fraud"], "label_source"] == "analyst").all()
    assert set(df["label_source"]) <= {"chargeback", "analyst", "customer_report"}
    plain = simulate(SimulationConfig(days=12, cards=120, terminals=15, seed=5))
    pd.testing.assert_series_equal(df["is_fraud"], plain["is_fraud"])


def test_analyst_verdicts_on_legit_payments():
    df = simulate(SimulationConfig(days=12, cards=300, terminals=30, seed=5,
                                   legit_verdict_rate=0.02))
    cleared = df[~df["is_fraud"] & df["label_reported_at"].notna()]
    assert 0.005 < len(cleared) / (~df["is_fraud"]).sum() < 0.05
    assert (cleared["label_source"] == "analyst").all()
    assert (cleared["label_reported_at"] > cleared["timestamp"]).all()


def test_tiny_runs_still_have_several_families():
    df = simulate(SimulationConfig(days=12, cards=120, terminals=15, seed=5,
                                   card_testing_rate=0.004, takeover_rate=0.003))
    assert df["fraud_pattern"].nunique() >= 4
    assert df["is_fraud"].sum() > 20


def test_default_run_fraud_rate_is_within_the_stated_band():
    df = simulate(SimulationConfig())
    assert 150_000 < len(df) < 200_000
    assert 0.005 < df["is_fraud"].mean() < 0.015
    share = df["fraud_pattern"].value_counts(normalize=True)
    assert set(share.index) == set(PATTERNS)
    assert share.max() < 0.6  # no family dominates
    # Legit traffic is varied: not one simple signal separates it from fraud.
    legit = df[~df["is_fraud"]]
    assert 0.2 < (legit["channel"] == "ecom").mean() < 0.4
    home = legit.groupby("card_id")["country"].agg(lambda c: c.mode().iloc[0])
    assert 0.03 < (legit["country"] != legit["card_id"].map(home)).mean() < 0.3  # abroad


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown fraud patterns"):
        SimulationConfig(patterns=("skimming",))
    with pytest.raises(ValueError, match=">= 0"):
        SimulationConfig(takeover_rate=-1.0)
    with pytest.raises(ValueError):
        SimulationConfig(terminals=1)


def test_amounts_are_cents(busy):
    cents = np.round(busy["amount"].to_numpy() * 100)
    np.testing.assert_allclose(cents / 100, busy["amount"].to_numpy(), atol=1e-9)


# ---- the "ecom" preset: card-not-present details and families ----------------------------
ECOM = dict(days=40, cards=600, terminals=120, seed=3, preset="ecom")
SMALL = dict(days=12, cards=120, terminals=15, seed=5)


@pytest.fixture(scope="module")
def ecom() -> pd.DataFrame:
    return simulate(SimulationConfig(**ECOM))


def test_the_default_preset_is_todays_traffic_and_holds_nothing_of_ecom():
    from training.simulator import ECOM_PATTERNS

    assert SimulationConfig().preset == "pos"
    assert SimulationConfig.for_preset("pos", **SMALL) == SimulationConfig(**SMALL)
    plain = simulate(SimulationConfig(**SMALL))
    assert list(plain.columns) == COLUMNS  # no detail column, not even an empty one
    assert not set(ECOM_PATTERNS) & set(plain["fraud_pattern"].dropna())
    # The ecom knobs are inert under "pos": no family of theirs runs, no stream is drawn.
    knobs = simulate(SimulationConfig(**SMALL, fraud_rings_per_day=3.0, hijack_rate=0.05,
                                      bin_enumerations_per_day=3.0, friendly_fraud_share=0.2,
                                      synthetic_identities_per_day=3.0))
    pd.testing.assert_frame_equal(plain, knobs)


def test_ecom_leaves_the_card_present_families_as_they_were(ecom):
    pos = simulate(SimulationConfig(**{**ECOM, "preset": "pos"}))
    keep = ["timestamp", "card_id", "terminal_id", "amount", "fraud_pattern"]
    for family in PATTERNS:
        mine = pos.loc[pos["fraud_pattern"] == family, keep].reset_index(drop=True)
        theirs = ecom.loc[ecom["fraud_pattern"] == family, keep].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs)


def test_ecom_has_every_detail_column_and_every_family_labelled(ecom):
    from model.schemas import PAYMENT_DETAILS
    from training.simulator import ECOM_PATTERNS

    assert list(ecom.columns) == COLUMNS + list(PAYMENT_DETAILS)
    assert ecom["timestamp"].is_monotonic_increasing and ecom["payment_id"].is_unique
    counts = ecom["fraud_pattern"].value_counts()
    for family in ECOM_PATTERNS:
        rows = ecom[ecom["fraud_pattern"] == family]
        assert counts.get(family, 0) >= 5, family
        assert rows["is_fraud"].all(), family
        assert (rows["label_reported_at"] > rows["timestamp"]).all(), family
    assert ecom["fraud_pattern"].notna().eq(ecom["is_fraud"]).all()
    assert 0.005 < ecom["is_fraud"].mean() < 0.04


def test_ecom_values_are_valid_payments_and_nothing_looks_like_a_card_number(ecom):
    from model.schemas import Payment, looks_like_pan
    from training.traffic import payment_body

    sample = pd.concat([ecom.sample(400, random_state=1),
                        ecom[ecom["fraud_pattern"].notna()].groupby("fraud_pattern").head(20)])
    bodies = [payment_body(row) for _, row in sample.iterrows()]  # as --to-api sends
    for body in bodies:
        Payment(**body)
    assert sum("device_id" in b for b in bodies) > 50
    for col in ("card_id", "customer_id", "device_id", "merchant_id", "email"):
        assert not ecom[col].dropna().map(looks_like_pan).any(), col
    ips = ecom["ip"].dropna()
    assert ips.str.startswith(("198.51.100.", "203.0.113.", "2001:db8:")).all()
    assert ecom["email"].dropna().str.contains(r"@example\.(?:com|org|net)$").all()


def test_card_present_payments_have_no_online_details(ecom):
    pos = ecom[ecom["channel"] != "ecom"]
    online = ecom[ecom["channel"] == "ecom"]
    for col in ("ip", "email", "device_id", "shipping_country", "three_ds"):
        assert pos[col].isna().all(), col
    assert set(pos["entry_mode"]) <= {"chip", "contactless", "magstripe"}
    assert set(online["entry_mode"]) <= {"ecommerce", "card_on_file"}
    assert online["email"].notna().all() and online["ip"].notna().all()
    legit = online[~online["is_fraud"]]
    assert 0.05 < legit["device_id"].isna().mean() < 0.15  # some devices go unseen
    assert (legit["shipping_country"] == legit["billing_country"]).mean() > 0.85
    assert ecom["card_bin"].notna().all() and ecom["merchant_id"].notna().all()
    # several terminals per merchant; a card's billing country is its BIN's
    assert ecom.groupby("merchant_id")["terminal_id"].nunique().max() >= 2
    assert (ecom.groupby("card_bin")["billing_country"].nunique() == 1).all()
    # customers: mostly one card each, some with two or three; devices per customer 1-2
    cards = ecom[~ecom["is_fraud"]].groupby("customer_id")["card_id"].nunique()
    assert cards.max() <= 3 and 0.7 < (cards == 1).mean() < 0.98


def test_a_ring_device_serves_many_cards(ecom):
    from model.pseudonym import ip_network

    ring = ecom[ecom["fraud_pattern"] == "fraud_ring"]
    legit = ecom[~ecom["is_fraud"]]
    per_ring_device = ring.groupby("device_id")["card_id"].nunique()
    per_legit_device = legit.groupby("device_id")["card_id"].nunique()
    assert per_ring_device.min() > per_legit_device.max()
    assert per_ring_device.median() > 3 * per_legit_device.max()
    assert ring["ip"].map(ip_network).nunique() == 1  # one /24
    # A card twice stolen may come back in another ring: rings are told by their devices.
    which = ring["device_id"].str.extract(r"^dev_ring(\d+)_", expand=False)
    assert which.notna().all()
    per_card = ring.groupby([which, ring["card_id"]])
    assert per_card.size().max() <= 3
    assert per_card["email"].nunique().eq(1).all()  # a new e-mail per card
    assert ring["email"].nunique() == per_card.ngroups
    assert (ring["shipping_country"] != ring["billing_country"]).mean() > 0.8


def test_a_hijacked_account_pays_from_a_device_it_never_used(ecom):
    hijack = ecom[ecom["fraud_pattern"] == "account_hijack"]
    assert hijack["customer_id"].notna().all()
    for customer, rows in hijack.groupby("customer_id"):
        before = ecom[(ecom["customer_id"] == customer)
                      & (ecom["timestamp"] < rows["timestamp"].min())]
        assert not rows["device_id"].isin(before["device_id"].dropna()).any(), customer
        assert not rows["email"].isin(before["email"].dropna()).any(), customer
        assert (rows["shipping_country"] != rows["billing_country"]).all(), customer
    usual = ecom[~ecom["is_fraud"] & (ecom["amount"] > 0)].groupby("card_id")["amount"].median()
    # after the first payment, which only checks that the account works
    burst = hijack[hijack.groupby("card_id").cumcount() > 0]
    assert (burst["amount"] / burst["card_id"].map(usual)).median() > 3


def test_bin_enumeration_is_one_bin_at_one_merchant_in_a_short_burst(ecom):
    enum = ecom[ecom["fraud_pattern"] == "bin_enumeration"]
    for device, rows in enum.groupby("device_id"):
        assert rows["card_bin"].nunique() == 1, device
        assert rows["terminal_id"].nunique() == 1 and rows["merchant_id"].nunique() == 1
        assert rows["timestamp"].max() - rows["timestamp"].min() <= pd.Timedelta(hours=1)
        assert rows["card_id"].nunique() >= 30 and (rows["amount"] <= 2.0).all()
        # sequential card ids, never seen in the legit traffic
        numbers = sorted(int(c.split("_")[1]) for c in rows["card_id"].unique())
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert not enum["card_id"].isin(ecom.loc[~ecom["is_fraud"], "card_id"]).any()


def test_synthetic_identities_behave_for_weeks_then_bust_out(ecom):
    bust = ecom[ecom["fraud_pattern"] == "synthetic_identity"]
    for customer, rows in bust.groupby("customer_id"):
        history = ecom[(ecom["customer_id"] == customer) & ~ecom["is_fraud"]]
        assert len(history) >= 5, customer
        assert rows["timestamp"].min() - history["timestamp"].min() >= 14 * DAY, customer
        assert rows["amount"].median() > 5 * history["amount"].median(), customer
        assert history["device_id"].nunique() == 1  # one device, its own
        assert set(rows["device_id"]) == set(history["device_id"])


def test_friendly_fraud_is_a_chargeback_from_the_cards_usual_device(ecom):
    friendly = ecom[ecom["fraud_pattern"] == "friendly_fraud"]
    assert (friendly["label_source"] == "chargeback").all()
    assert (friendly["channel"] == "ecom").all()
    legit = ecom[~ecom["is_fraud"]]
    usual = legit.dropna(subset=["device_id"]).groupby("card_id")["device_id"].agg(
        lambda d: d.mode().iloc[0])
    assert (friendly["device_id"] == friendly["card_id"].map(usual)).mean() > 0.9
    seen = legit.groupby("card_id")["ip"].agg(set)
    assert all(ip in seen[card] for card, ip in zip(friendly["card_id"], friendly["ip"],
                                                     strict=True))


def test_ecom_is_reproducible_by_seed_and_a_family_can_be_switched_off():
    from training.simulator import ECOM_PATTERNS

    cfg = SimulationConfig(**SMALL, preset="ecom")
    pd.testing.assert_frame_equal(simulate(cfg), simulate(cfg))
    others = tuple(p for p in ECOM_PATTERNS if p != "fraud_ring")
    off = simulate(SimulationConfig(**SMALL, preset="ecom", ecom_patterns=others))
    assert "fraud_ring" not in set(off["fraud_pattern"].dropna())
    assert set(others) <= set(off["fraud_pattern"].dropna())
    with pytest.raises(ValueError, match="unknown preset"):
        SimulationConfig(preset="web")
    with pytest.raises(ValueError, match="unknown ecom patterns"):
        SimulationConfig(preset="ecom", ecom_patterns=("skimming",))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_an_ecom_file_imports_with_its_emails_and_ips_pseudonymised(tmp_path, suffix):
    from stores.history import HistoryStore
    from training.importer import import_history
    from training.simulator import write_traffic

    traffic = simulate(SimulationConfig(**SMALL, preset="ecom"))
    path = tmp_path / f"history{suffix}"
    write_traffic(traffic, path)  # as the CLI writes it
    store = HistoryStore(tmp_path / "hist")
    result = import_history(store, path, pii_key=b"an-import-key-of-32-bytes-......")
    assert result.payments == len(traffic)
    got = store.query("SELECT email, ip, device_id, card_bin FROM payments")
    assert got["email"].dropna().str.startswith("em_").all()
    assert got["ip"].dropna().str.startswith("ip_").all()
    assert got["card_bin"].notna().all()
    files = b"".join(p.read_bytes() for p in store.root.rglob("*.parquet"))
    assert b"@example." not in files


def test_cli_simulate_ecom_preset_writes_a_file(tmp_path):
    from typer.testing import CliRunner

    from ops.cli import app
    from training.simulator import ECOM_PATTERNS

    out = tmp_path / "ecom.parquet"
    done = CliRunner().invoke(app, ["simulate", "--preset", "ecom", "--days", "12",
                                    "--cards", "120", "--terminals", "15", "--seed", "5",
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    written = pd.read_parquet(out)
    assert set(ECOM_PATTERNS) <= set(written["fraud_pattern"].dropna())
    assert written["device_id"].notna().any()
    refused = CliRunner().invoke(app, ["simulate", "--preset", "web", "--out", str(out)])
    assert refused.exit_code != 0
