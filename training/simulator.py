"""Realistic payment traffic with labelled fraud patterns and delayed labels.

A population of cards (each with its own spending level, pace and usual terminals) pays at
terminals through the day. On top, four fraud patterns:

- ``card_testing``: a stolen card is probed with a burst of tiny online payments at many
  terminals within minutes, then cashed out with one large one;
- ``compromised_terminal``: every payment at a skimmed terminal for two weeks is fraud;
- ``account_takeover``: for two weeks about a third of a card's payments are 3-8x its usual;
- ``unusual_hours``: night-time online payments abroad.

Each fraud payment gets a label reported after a source-dependent delay: chargebacks after
days to weeks, analyst verdicts and customer reports sooner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from model.features import DAY, HOUR

PATTERNS = ("card_testing", "compromised_terminal", "account_takeover", "unusual_hours")
COUNTRIES = ("FR", "DE", "ES", "IT", "NL", "BE")
MCCS = ("5411", "5812", "5999", "4111", "5732", "5311", "7011", "5541")


@dataclass(frozen=True)
class SimulationConfig:
    days: int = 45
    cards: int = 2000
    terminals: int = 200
    start: datetime = datetime(2026, 9, 1, tzinfo=UTC)
    seed: int = 7
    id_prefix: str = ""  # payment ids are f"{id_prefix or 'sim' + seed}_{n}"
    # Per day: chance that a given card starts a card-testing or takeover episode, and
    # number of terminals compromised / night-time fraud attacks started.
    card_testing_rate: float = 0.0008
    takeover_rate: float = 0.0010
    compromised_terminals_per_day: float = 0.15
    unusual_hours_per_day: float = 2.0

    def __post_init__(self) -> None:
        if self.days < 1 or self.cards < 1 or self.terminals < 2:
            raise ValueError("simulation needs days >= 1, cards >= 1 and terminals >= 2")


def simulate(
    config: SimulationConfig, progress: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """One row per payment, in timestamp order, in the history-import format."""
    rng = np.random.default_rng(config.seed)
    t0 = config.start.timestamp()
    span = config.days * DAY

    card_mean = rng.lognormal(mean=3.3, sigma=0.7, size=config.cards)  # ~27 EUR median
    card_rate = rng.gamma(shape=2.0, scale=0.6, size=config.cards)  # payments per day
    card_country = rng.choice(COUNTRIES, size=config.cards, p=[0.5, 0.15, 0.1, 0.1, 0.1, 0.05])
    term_mcc = rng.choice(MCCS, size=config.terminals)
    term_channel = np.where(rng.random(config.terminals) < 0.3, "ecom", "pos")

    cols: dict[str, list] = {k: [] for k in ("ts", "card", "terminal", "amount", "country",
                                              "pattern")}

    def add(ts: np.ndarray, card: int, terminals: np.ndarray, amounts: np.ndarray,
            country: np.ndarray | str, pattern: str | None) -> None:
        n = len(ts)
        cols["ts"].append(ts)
        cols["card"].append(np.full(n, card))
        cols["terminal"].append(terminals)
        cols["amount"].append(np.round(amounts, 2))
        cols["country"].append(np.broadcast_to(np.asarray(country), (n,)).copy())
        cols["pattern"].append(np.full(n, pattern or "", dtype=object))

    for card in range(config.cards):
        n = rng.poisson(card_rate[card] * config.days)
        days = rng.integers(0, config.days, size=n)
        hours = rng.normal(14.0, 3.5, size=n).clip(6.0, 23.9)
        ts = t0 + days * DAY + hours * HOUR + rng.uniform(0, 60, size=n)
        usual = rng.choice(config.terminals, size=rng.integers(2, 6))
        terminals = rng.choice(usual, size=n)
        # Now and then a new terminal, as people travel or shop online.
        wander = rng.random(n) < 0.1
        terminals[wander] = rng.integers(0, config.terminals, size=int(wander.sum()))
        amounts = rng.lognormal(np.log(card_mean[card]), 0.5, size=n).clip(0.5, 5000)
        add(ts, card, terminals, amounts, card_country[card], None)

        if rng.random() < config.card_testing_rate * config.days:
            start = t0 + rng.uniform(0, span - DAY)
            k = int(rng.integers(5, 16))
            probe_ts = start + np.sort(rng.uniform(0, 20 * 60, size=k))
            add(probe_ts, card, rng.integers(0, config.terminals, size=k),
                rng.uniform(0.5, 4.0, size=k), "NL", "card_testing")
            add(np.array([probe_ts[-1] + rng.uniform(60, 3600)]), card,
                rng.integers(0, config.terminals, size=1),
                np.array([rng.uniform(300, 1500)]), "NL", "card_testing")
        if rng.random() < config.takeover_rate * config.days:
            start = t0 + rng.uniform(0, span - DAY)
            k = int(rng.poisson(card_rate[card] * 14 / 3)) + 1
            ato_ts = start + rng.uniform(0, 14 * DAY, size=k)
            add(ato_ts, card, rng.choice(usual, size=k),
                card_mean[card] * rng.uniform(3, 8, size=k), card_country[card],
                "account_takeover")
        if progress is not None and card % 100 == 99:
            progress(100)

    for _ in range(rng.poisson(config.unusual_hours_per_day * config.days)):
        card = int(rng.integers(0, config.cards))
        day = int(rng.integers(0, config.days))
        ts = t0 + day * DAY + rng.uniform(1, 5) * HOUR
        add(np.array([ts]), card, rng.integers(0, config.terminals, size=1),
            np.array([card_mean[card] * rng.uniform(1.5, 4)]),
            rng.choice(["US", "BR", "NG", "RU"]), "unusual_hours")

    frame = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    frame = frame[frame["ts"] < t0 + span]
    # Millisecond timestamps: exact through JSON, Parquet and float seconds alike.
    frame["ts"] = np.round(frame["ts"], 3)

    # Skimmed terminals: every payment there during the window turns fraudulent.
    for _ in range(rng.poisson(config.compromised_terminals_per_day * config.days)):
        terminal = int(rng.integers(0, config.terminals))
        start = t0 + rng.uniform(0, span)
        hit = (frame["terminal"] == terminal) & frame["ts"].between(start, start + 14 * DAY)
        hit &= frame["pattern"] == ""
        frame.loc[hit, "pattern"] = "compromised_terminal"

    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    is_fraud = frame["pattern"] != ""
    n = len(frame)
    source = rng.choice(["chargeback", "analyst", "customer_report"], size=n, p=[0.7, 0.2, 0.1])
    delay_days = np.where(
        source == "chargeback",
        rng.lognormal(np.log(10), 0.5, size=n).clip(2, 60),
        rng.uniform(0.5, 4, size=n),
    )
    ts_utc = pd.to_datetime(np.round(frame["ts"] * 1000).astype("int64"), unit="ms", utc=True)
    if progress is not None:
        progress(config.cards % 100)
    return pd.DataFrame(
        {
            "payment_id": [f"{config.id_prefix or f'sim{config.seed}'}_{i:07d}" for i in range(n)],
            "timestamp": ts_utc,
            "card_id": [f"card_{c:05d}" for c in frame["card"]],
            "terminal_id": [f"term_{t:04d}" for t in frame["terminal"]],
            "amount": frame["amount"].to_numpy(),
            "currency": "EUR",
            "country": frame["country"].to_numpy(),
            "channel": np.where(frame["pattern"].isin(["card_testing", "unusual_hours"]),
                                "ecom", term_channel[frame["terminal"].to_numpy()]),
            "merchant_category": term_mcc[frame["terminal"].to_numpy()],
            "is_fraud": is_fraud.to_numpy(),
            "label_reported_at": (
                ts_utc + pd.to_timedelta(np.round(delay_days * DAY), unit="s")
            ).where(is_fraud),
            "label_source": np.where(is_fraud, source, None),
            "fraud_pattern": frame["pattern"].where(is_fraud, None).to_numpy(),
        }
    )
