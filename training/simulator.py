"""Realistic payment traffic with labelled fraud families and delayed labels.

The simulator is a test bed for fraud models: each fraud family below is only visible to a
particular kind of feature, and the legitimate traffic is built to produce the same
signals now and then, so that no single feature separates fraud from legit and a model
benchmark can tell feature families apart. It follows the simulator of the Machine
Learning for Credit Card Fraud Detection handbook (Le Borgne et al.): customers with a home
location, spend level and pace who pay at terminals near home, plus fraud scenarios that
are found by amount, by terminal label history or by a change in a customer's spending.

Legitimate population
    Countries hold cities; cards (customers) live in a city and mostly pay at a few of
    their nearest physical terminals (the handbook's terminals within a radius) and at a
    few online merchants, with a favourite among each. Cards differ in spend level, pace,
    online share and hour habits (about 8% are night owls). Payments follow weekday and
    hour-of-day seasonality in the card's local time. The noise that overlaps the fraud
    signals: trips (new terminals in another city or country, local hours of another time
    zone, higher amounts, a faster pace), big-ticket purchases, airline and hotel MCCs with
    large amounts, bursts of purchases (a shopping afternoon, in-app micro-payments at one
    online merchant), monthly subscriptions billed at night, new online merchants,
    merchants abroad, and 0-amount card verifications (always legitimate). No legitimate
    payment reaches ``hard_limit``; a few land just below it.

Fraud families (``PATTERNS``; each is tagged in ``fraud_pattern``, switched on by being in
``SimulationConfig.patterns`` and a rate above 0):

``compromised_terminal``
    Waves: a terminal, sometimes several terminals of one city and channel at once (a
    merchant chain or a regional breach), is compromised for 7-35 days and most of its
    payments in that period are fraud. Amounts, cards and times are unchanged: only the
    terminal's label history (frauds reported at the terminal in the recent past) reveals
    it, and only once labels have arrived, which is why the label delays matter.
``card_testing``
    A stolen card number is probed with a burst of tiny online payments (0.50-3.00) at
    several online merchants within minutes, then cashed out with one to three large
    online payments. Caught by card velocity (count per hour, distinct terminals) together
    with amount; in-app micro-payment bursts and transit taps are the legit look-alikes.
``stolen_card``
    A physical card is used for 1-4 days in another city or country: new terminals, 2.5x
    the usual amounts and ATM withdrawals, several payments a day. The owner, who no
    longer has the card, makes no payment meanwhile. Caught by a change against the
    card's own history (new terminal or country, amount ratio, pace); legit trips look
    alike, only milder.
``account_takeover``
    The handbook's compromised customer: for 10-18 days, added online payments make about
    a third of the card's payments, each 3-8x its usual amount, in a third of the cases at
    merchants abroad. Caught by the amount relative to the card's own history; big-ticket
    and airline purchases are the legit look-alikes.
``hard_limit``
    The handbook's scenario 1: every payment at or above ``hard_limit`` is fraud (one to
    three per episode, mostly just above the limit, at big-ticket merchants). Rare; the
    raw amount alone catches it, which makes it a sanity check for any model.
``unusual_hours``
    A card's details are used online in the card's own night (0:30-5:30 local time), often
    at a merchant abroad, at 1.5-4x its usual amount. Caught by the hour against the card's
    habit; night owls, subscription billing at night and travellers in other time zones
    are the legit look-alikes.

Card-not-present preset (``SimulationConfig(preset="ecom")``; the default ``"pos"`` is
the traffic above, unchanged, and has none of this)
    Every payment gets the gateway's optional details (``model.schemas.PAYMENT_DETAILS``):
    customers holding one card mostly, some two or three; one or two devices per customer;
    a few IPs per customer, in a network shared by the neighbourhood (IPv6 /48s of
    2001:db8::/32) or a mobile carrier's shared NAT (198.51.100.0/24); an e-mail per
    customer (``u<n>@example.com``); a BIN per card from its country's few issuers, the
    billing country the BIN's; the shipping country mostly the billing one; a merchant
    behind several terminals; 3-D Secure and entry mode by channel. A card-present
    payment has no device, IP, e-mail, shipping country or 3-D Secure; about 10% of the
    online payments have no device. The card-present families' online fraud comes from
    the fraudster's device and network. Five families of ``ECOM_PATTERNS`` are added
    (``ecom_patterns`` switches them):

    ``fraud_ring``: a few devices and IPs of one /24 (203.0.113.0/24) behind 30-80
    stolen cards, each used one to three times with a new e-mail, shipped to two or
    three drop countries. ``account_hijack``: a customer's card paid from a new device,
    with a new e-mail and a foreign shipping country, a normal-looking payment then a
    burst at 3-10x the usual amount. ``bin_enumeration``: 30-120 made-up card numbers of
    one BIN in sequence, each tried with 0.50-2.00 at one merchant within an hour.
    ``synthetic_identity``: a new customer (new card, e-mail, device) pays normally for
    three to six weeks (legit: those were paid) and then busts out with large amounts
    (the fraud). ``friendly_fraud``: genuine online payments later charged back (label
    noise), from the card's usual device and IP.

Amounts of the other families are kept below ``hard_limit``, so that "amount >= limit" is
exactly the ``hard_limit`` family.

Labels: each fraud payment is labelled after a delay that depends on its source:
chargebacks 1-60 days after the payment (log-normal, most within 5-20 days), analyst
verdicts within hours to days, customer reports within a few days. The mix of sources
depends on the family (a lost card is reported by its owner, a probe is found by an
analyst, a skimmed card comes back as a chargeback). ``legit_verdict_rate`` adds analyst
"legitimate" verdicts on some legit payments (mostly on the look-alikes, as an analyst
only sees what was alerted). ``label_delay_days`` instead labels every payment, fraud or
legit, exactly that many days after it (as public benchmarks do), legit ones with source
``analyst``.

Everything is vectorised with numpy (no loop per payment), deterministic by seed, and each
part (population, legit traffic, each family, labels) draws from its own random stream, so
that switching a family off leaves the rest of the traffic as it was (payment ids aside,
which are numbered in time order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

# Own constants rather than model.features': the simulator must not move with the features.
MINUTE = 60.0
HOUR = 3_600.0
DAY = 86_400.0

PATTERNS = ("compromised_terminal", "card_testing", "stolen_card", "account_takeover",
            "hard_limit", "unusual_hours")
# The card-not-present families of the "ecom" preset. Kept out of ``PATTERNS`` (the
# default ``patterns``) so that the default run, which other tests train on with pinned
# expectations, stays exactly what it was.
ECOM_PATTERNS = ("fraud_ring", "account_hijack", "bin_enumeration", "synthetic_identity",
                 "friendly_fraud")
LEGIT = 0
# Codes continue after the card-present families': theirs, and so their streams, stay.
_CODE = {name: i + 1 for i, name in enumerate(PATTERNS + ECOM_PATTERNS)}
# What each preset holds (the CLI's help says this too).
PRESETS = {
    "pos": "today's traffic (card-present and online payments) with the six classic "
           "families and no card-not-present details (the default, unchanged)",
    "ecom": "the same traffic plus the card-not-present details (customer, device, IP, "
            "e-mail, BIN, countries, merchant, 3-D Secure, entry mode) and the families "
            + ", ".join(ECOM_PATTERNS),
}
LABEL_SOURCES = ("chargeback", "analyst", "customer_report")

# Share of (chargeback, analyst, customer_report) labels per family.
_SOURCE_MIX = {
    "compromised_terminal": (0.75, 0.15, 0.10),
    "card_testing": (0.35, 0.50, 0.15),
    "stolen_card": (0.35, 0.15, 0.50),
    "account_takeover": (0.55, 0.15, 0.30),
    "hard_limit": (0.30, 0.60, 0.10),
    "unusual_hours": (0.60, 0.20, 0.20),
}
_ECOM_SOURCE_MIX = {
    "fraud_ring": (0.70, 0.25, 0.05),
    "account_hijack": (0.30, 0.20, 0.50),  # the account's owner notices first
    "bin_enumeration": (0.20, 0.75, 0.05),  # the merchant's analysts see the burst
    "synthetic_identity": (0.10, 0.85, 0.05),  # written off: nobody to complain
    "friendly_fraud": (1.0, 0.0, 0.0),  # a chargeback is what friendly fraud is
}

# code, x and y (km), UTC offset (h), share of cards, weight as a destination abroad for
# travellers, weight as a fraud destination. Cards come from the first six only.
_COUNTRIES = (
    ("FR", 0, 0, 1, 0.40, 1.0, 0.3),
    ("DE", 550, 350, 1, 0.20, 1.0, 0.3),
    ("ES", -450, -700, 1, 0.12, 1.5, 0.4),
    ("IT", 700, -600, 1, 0.12, 1.5, 0.4),
    ("NL", 250, 650, 1, 0.10, 0.6, 0.5),
    ("BE", 150, 450, 1, 0.06, 0.4, 0.3),
    ("GB", -350, 700, 0, 0.0, 1.2, 1.0),
    ("PT", -900, -750, 0, 0.0, 1.0, 0.3),
    ("CH", 350, -150, 1, 0.0, 0.6, 0.2),
    ("AT", 900, 100, 1, 0.0, 0.5, 0.2),
    ("US", -6500, 800, -5, 0.0, 0.8, 2.0),
    ("TR", 2300, -900, 3, 0.0, 0.5, 0.8),
    ("MA", -1000, -1800, 0, 0.0, 0.5, 0.6),
    ("TH", 8500, -2500, 7, 0.0, 0.4, 0.6),
    ("AE", 4000, -2300, 4, 0.0, 0.3, 0.5),
    ("BR", -7500, -6500, -3, 0.0, 0.2, 1.5),
    ("NG", 400, -4500, 1, 0.0, 0.1, 1.5),
    ("RU", 2800, 1600, 3, 0.0, 0.1, 1.5),
)

# MCC, share among the channel's terminals, amount scale (x the card's spend level) and
# spread (sigma of the log-normal). Airlines, hotels, jewellers and electronics are where
# large legit amounts come from, so a large amount alone is not fraud.
_PHYSICAL_MCCS = (
    ("5411", 0.26, 1.0, 0.6), ("5812", 0.14, 1.0, 0.5), ("5814", 0.08, 0.4, 0.4),
    ("5541", 0.08, 1.8, 0.35), ("4111", 0.06, 0.12, 0.4), ("5311", 0.07, 1.8, 0.7),
    ("5999", 0.10, 1.2, 0.8), ("5732", 0.04, 4.0, 0.9), ("5944", 0.02, 5.0, 0.9),
    ("7011", 0.05, 5.0, 0.6), ("5912", 0.10, 0.7, 0.6),
)
_ECOM_MCCS = (
    ("5999", 0.28, 1.5, 0.8), ("5816", 0.20, 0.25, 0.7), ("4511", 0.06, 9.0, 0.6),
    ("7011", 0.06, 5.0, 0.6), ("5732", 0.08, 4.0, 0.9), ("5691", 0.15, 2.0, 0.6),
    ("4899", 0.10, 0.4, 0.3), ("5411", 0.07, 2.5, 0.5),
)
_ATM_MCC = ("6011", 1.0, 3.0, 0.5)
_BIG_TICKET_MCCS = ("5732", "5944", "4511", "7011")
_SUBSCRIPTION_MCCS = ("4899", "5816")
_VERIFICATION_MCCS = ("5541", "7011")  # fuel and hotel pre-authorisations at 0

# Hour-of-day weights in local time, 0h..23h.
_HOURS = np.array([
    # card present: lunch and after-work peaks
    [0.3, 0.15, 0.1, 0.1, 0.1, 0.2, 0.6, 1.5, 2.5, 3.0, 3.5, 4.5,
     6.0, 5.5, 4.0, 3.8, 4.2, 5.5, 6.0, 5.0, 3.5, 2.2, 1.3, 0.7],
    # online: flatter, evening peak, some night
    [1.2, 0.8, 0.5, 0.3, 0.3, 0.3, 0.6, 1.2, 2.0, 2.8, 3.2, 3.5,
     3.8, 3.6, 3.4, 3.4, 3.6, 4.0, 4.5, 5.2, 5.8, 5.5, 4.2, 2.5],
    # night owls and night workers
    [4.0, 4.5, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 0.6, 0.8, 1.0, 1.5,
     2.0, 2.0, 2.0, 2.0, 2.2, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.0],
])
_POS_HOURS, _ECOM_HOURS, _NIGHT_HOURS = 0, 1, 2
_WEEKDAY = np.array([0.92, 0.95, 0.98, 1.0, 1.12, 1.18, 0.85])  # Monday..Sunday

# Kinds of legit payment, kept for the analyst verdicts (analysts see the look-alikes).
_NORMAL, _TRIP, _BIG, _BURST, _NIGHT, _VERIFY, _SUBSCRIPTION = range(7)

_CARD_CHUNK = 256  # cards simulated together: bounds the working memory
_LOCAL_TERMINALS = 12  # nearest physical terminals a card may use
_ECOM_MERCHANTS = 8


@dataclass(frozen=True)
class SimulationConfig:
    days: int = 45
    cards: int = 2000
    terminals: int = 200
    start: datetime = datetime(2026, 9, 1, tzinfo=UTC)
    seed: int = 7
    id_prefix: str = ""  # payment ids are f"{id_prefix or 'sim' + seed}_{n}"
    patterns: tuple[str, ...] = PATTERNS  # the fraud families simulated
    # Per card and day: chance that the card starts an episode of the family (one at most
    # per card and family; at least one per family switched on, so short runs have each).
    card_testing_rate: float = 0.0003
    stolen_card_rate: float = 0.00035
    takeover_rate: float = 0.00035
    hard_limit_rate: float = 0.0004
    unusual_hours_rate: float = 0.0007
    # Per terminal and day: chance that a compromise wave starts there. Per terminal, so
    # the fraud share stays the same however many payments each terminal gets.
    compromised_terminal_rate: float = 0.00012
    compromised_terminals_per_day: float | None = None  # if set: waves per day instead
    hard_limit: float = 3000.0  # amounts at or above are fraud (``hard_limit``)
    payments_per_card_day: float = 1.7  # mean legit pace, before trips, bursts, etc.
    verification_share: float = 0.006  # legit payments that are 0-amount verifications
    label_delay_days: float | None = None  # if set: every payment labelled this much later
    legit_verdict_rate: float = 0.0  # share of legit payments given an analyst verdict
    # "pos": today's traffic, untouched. "ecom": card-not-present details on every payment
    # and the ``ECOM_PATTERNS`` families (``ecom_patterns``); nothing of it draws from the
    # random streams the "pos" run uses, so its card-present traffic is the same.
    preset: str = "pos"
    ecom_patterns: tuple[str, ...] = ECOM_PATTERNS
    fraud_rings_per_day: float = 0.06  # rings starting per day
    hijack_rate: float = 0.0003  # per card and day, as the card-level families
    bin_enumerations_per_day: float = 0.06  # enumeration bursts per day
    synthetic_identities_per_day: float = 0.12  # new synthetic customers per day
    friendly_fraud_share: float = 0.003  # of the legit online payments, charged back

    @classmethod
    def for_preset(cls, name: str, **overrides: object) -> SimulationConfig:
        """The config of a preset (``PRESETS``), other fields as given."""
        return cls(preset=name, **overrides)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        unknown_ecom = set(self.ecom_patterns) - set(ECOM_PATTERNS)
        if unknown_ecom:
            raise ValueError(f"unknown ecom patterns {sorted(unknown_ecom)}; "
                             f"known: {ECOM_PATTERNS}")
        if not 0 <= self.friendly_fraud_share < 0.5:
            raise ValueError("friendly_fraud_share must be in [0, 0.5)")
        if self.days < 1 or self.cards < 1 or self.terminals < 2:
            raise ValueError("simulation needs days >= 1, cards >= 1 and terminals >= 2")
        unknown = set(self.patterns) - set(PATTERNS)
        if unknown:
            raise ValueError(f"unknown fraud patterns {sorted(unknown)}; known: {PATTERNS}")
        rates = {k: v for k, v in vars(self).items() if k.endswith(("_rate", "_per_day"))}
        if any(v is not None and v < 0 for v in rates.values()):
            raise ValueError(f"rates must be >= 0: {rates}")
        if self.hard_limit <= 0 or self.payments_per_card_day <= 0:
            raise ValueError("hard_limit and payments_per_card_day must be > 0")
        if not 0 <= self.verification_share < 0.5:
            raise ValueError("verification_share must be in [0, 0.5)")
        if self.label_delay_days is not None and self.label_delay_days < 0:
            raise ValueError("label_delay_days must be >= 0")


# ---- the world: countries, cities, terminals, cards -------------------------------------
@dataclass
class _World:
    t0: float
    span: float
    limit: float
    country_code: np.ndarray  # per country
    country_tz: np.ndarray
    country_fraud_w: np.ndarray
    city_country: np.ndarray  # per city
    city_terms: _Groups  # physical terminals of each city
    city_ok: np.ndarray  # the city has physical terminals
    term_channel: np.ndarray  # per terminal
    term_mcc: np.ndarray
    term_country: np.ndarray
    term_city: np.ndarray
    term_scale: np.ndarray
    term_sigma: np.ndarray
    ecom: np.ndarray  # ecom terminal ids
    ecom_cum: np.ndarray  # cumulative popularity over ``ecom``
    card_city: np.ndarray  # per card
    card_country: np.ndarray
    card_mean: np.ndarray
    card_pace: np.ndarray
    card_ecom_share: np.ndarray
    card_night_owl: np.ndarray
    card_trips_per_year: np.ndarray
    local: np.ndarray  # cards x K nearest physical terminals
    local_cum: np.ndarray  # cards x K, cumulative choice weights, offset by row
    shops: np.ndarray  # cards x K' online merchants
    shops_cum: np.ndarray
    day_cum: np.ndarray  # cumulative weight of each simulated day

    def popular_ecom(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.ecom[np.minimum(np.searchsorted(self.ecom_cum, rng.random(n)),
                                    len(self.ecom) - 1)]

    def at_local_hour(self, ts: np.ndarray, hour: np.ndarray, tz: np.ndarray) -> np.ndarray:
        """The same local day as ``ts``, at local ``hour``, in UTC seconds."""
        day = np.floor((ts - self.t0 + tz * HOUR) / DAY)
        return self.t0 + day * DAY + (hour - tz) * HOUR


@dataclass
class _Groups:
    """Members grouped by a key, for drawing a random member of a given group."""

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, n_groups: int) -> _Groups:
        order = np.argsort(keys, kind="stable")
        count = np.bincount(keys, minlength=n_groups)
        return cls(order, np.concatenate([[0], np.cumsum(count)[:-1]]), count)

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """A random member of each group (every group asked for must have one)."""
        pos = self.start[groups] + (rng.random(len(groups)) * self.count[groups]).astype(int)
        return self.order[pos]


def _cum_rows(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative weights, normalised, plus the row number: one searchsorted on the
    flattened array then draws a column per row (see ``_draw_rows``)."""
    cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    return cum + np.arange(len(weights))[:, None]


def _draw_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # side="right" never lands on a zero-weight column nor on the previous row's end.
    k = cum.shape[1]
    flat = np.searchsorted(cum.ravel(), rows + rng.random(len(rows)), side="right")
    return np.minimum(flat - rows * k, k - 1)


def _hours(rng: np.random.Generator, profile: np.ndarray) -> np.ndarray:
    """Local hour (float) drawn from the given ``_HOURS`` profile per row."""
    return _draw_rows(rng, _HOURS_CUM, profile) + rng.random(len(profile))


_HOURS_CUM = _cum_rows(_HOURS)


def _build_world(cfg: SimulationConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    codes = np.array([c[0] for c in _COUNTRIES])
    cxy = np.array([(c[1], c[2]) for c in _COUNTRIES], dtype=float)
    tz = np.array([c[3] for c in _COUNTRIES], dtype=float)
    card_w = np.array([c[4] for c in _COUNTRIES])
    travel_w = np.array([c[5] for c in _COUNTRIES])
    fraud_w = np.array([c[6] for c in _COUNTRIES])
    home = card_w > 0

    n_ecom = max(1, round(0.25 * cfg.terminals))
    n_atm = round(0.05 * cfg.terminals) if cfg.terminals >= 20 else 0
    n_pos = cfg.terminals - n_ecom - n_atm
    # Few terminals: few cities, so that cards still share terminals with their neighbours.
    per_country = np.where(home, np.clip(n_pos // 150, 1, 6), np.clip(n_pos // 400, 1, 3))
    city_country = np.repeat(np.arange(len(codes)), per_country)
    rank = np.concatenate([np.arange(k) for k in per_country])
    city_xy = cxy[city_country] + rng.normal(0, 150, (len(city_country), 2))
    city_xy[rank == 0] = cxy[city_country[rank == 0]]  # the capital at the centre
    city_w = 1.0 / (rank + 1)  # Zipf: a big city and smaller ones

    def city_in(countries: np.ndarray) -> np.ndarray:
        # A city of each given country, by size.
        out = np.empty(len(countries), dtype=np.int64)
        for c in np.unique(countries):
            where = np.flatnonzero(countries == c)
            cand = np.flatnonzero(city_country == c)
            out[where] = rng.choice(cand, size=len(where), p=city_w[cand] / city_w[cand].sum())
        return out

    channel = np.array(["pos"] * n_pos + ["atm"] * n_atm + ["ecom"] * n_ecom, dtype=object)
    channel = channel[rng.permutation(cfg.terminals)]
    physical = channel != "ecom"
    abroad_share = np.where(physical, 0.12, 0.30)  # tourist spots; foreign web shops
    abroad = rng.random(cfg.terminals) < abroad_share
    t_country = np.where(
        abroad,
        rng.choice(len(codes), cfg.terminals, p=travel_w * ~home / (travel_w * ~home).sum()),
        rng.choice(len(codes), cfg.terminals, p=card_w / card_w.sum()),
    )
    t_city = city_in(t_country)
    t_xy = city_xy[t_city] + rng.normal(0, 5, (cfg.terminals, 2))

    t_mcc = np.empty(cfg.terminals, dtype=object)
    t_scale = np.empty(cfg.terminals)
    t_sigma = np.empty(cfg.terminals)
    for chan, table in (("pos", _PHYSICAL_MCCS), ("ecom", _ECOM_MCCS), ("atm", (_ATM_MCC,))):
        where = np.flatnonzero(channel == chan)
        share = np.array([m[1] for m in table])
        pick = rng.choice(len(table), size=len(where), p=share / share.sum())
        t_mcc[where] = np.array([m[0] for m in table], dtype=object)[pick]
        t_scale[where] = np.array([m[2] for m in table])[pick]
        t_sigma[where] = np.array([m[3] for m in table])[pick]

    ecom = np.flatnonzero(~physical)
    popularity = 1.0 / (rng.permutation(len(ecom)) + 1.0) ** 0.9
    ecom_p = popularity / popularity.sum()
    ecom_cum = np.cumsum(ecom_p)
    ecom_cum[-1] = 1.0

    n = cfg.cards
    c_country = rng.choice(len(codes), n, p=card_w / card_w.sum())
    c_city = city_in(c_country)
    c_xy = city_xy[c_city] + rng.normal(0, 5, (n, 2))
    card_mean = rng.lognormal(np.log(25.0), 0.6, n)
    card_pace = rng.gamma(1.8, cfg.payments_per_card_day / 1.8, n)
    ecom_share = rng.beta(2.0, 5.0, n)
    night_owl = rng.random(n) < 0.08
    trips = np.where(rng.random(n) < 0.5, rng.gamma(2.0, 2.0, n), 0.0)

    # The handbook's "terminals within a radius", as the K nearest so that sparse worlds
    # still give every card somewhere to pay; a few usual ones get most of the payments.
    phys_ids = np.flatnonzero(physical)
    k = min(_LOCAL_TERMINALS, len(phys_ids))
    local = np.empty((n, k), dtype=np.int64)
    for lo in range(0, n, 512):
        # Across a border counts as 300 km further: people shop in their own country
        # unless it has too few terminals (a tiny world).
        d2 = ((c_xy[lo:lo + 512, 0, None] - t_xy[None, phys_ids, 0]) ** 2
              + (c_xy[lo:lo + 512, 1, None] - t_xy[None, phys_ids, 1]) ** 2
              + 9e4 * (c_country[lo:lo + 512, None] != t_country[None, phys_ids]))
        near = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(phys_ids) else \
            np.broadcast_to(np.arange(k), d2.shape).copy()
        near = np.take_along_axis(near, np.argsort(
            np.take_along_axis(d2, near, axis=1), axis=1), axis=1)
        local[lo:lo + 512] = phys_ids[near]
    usual = 2 + rng.binomial(6, 0.4, n)
    rank_w = (np.arange(k) + 1.0)[None, :] ** -1.2 * rng.lognormal(0, 0.5, (n, k))
    local_w = np.where(np.arange(k)[None, :] < usual[:, None], rank_w, 0.01 * rank_w)

    ke = min(_ECOM_MERCHANTS, len(ecom))
    shops = ecom[np.minimum(np.searchsorted(ecom_cum, rng.random((n, ke))), len(ecom) - 1)]
    # Most of a card's web shops are domestic; the rest are the big shops of anywhere.
    for c in np.flatnonzero(home):
        mine = np.flatnonzero(c_country == c)
        domestic = np.flatnonzero(t_country[ecom] == c)
        if len(domestic) == 0:
            continue
        p = ecom_p[domestic] / ecom_p[domestic].sum()
        local_pick = ecom[rng.choice(domestic, size=(len(mine), ke), p=p)]
        keep = rng.random((len(mine), ke)) < 0.7
        shops[mine] = np.where(keep, local_pick, shops[mine])
    fav = 1 + rng.binomial(5, 0.4, n)
    rank_e = (np.arange(ke) + 1.0)[None, :] ** -1.2
    shops_w = np.where(np.arange(ke)[None, :] < fav[:, None], rank_e, 0.02 * rank_e)

    day = np.arange(cfg.days)
    weekday = (cfg.start.weekday() + day) % 7
    dom = np.array([(cfg.start + pd.Timedelta(days=int(d))).day for d in day])
    day_w = _WEEKDAY[weekday] * np.where(dom >= 25, 1.08, 1.0)  # payday at month end
    day_cum = np.cumsum(day_w / day_w.sum())
    day_cum[-1] = 1.0

    city_terms = _Groups.of(np.where(physical, t_city, len(city_country)), len(city_country) + 1)
    return _World(
        t0=cfg.start.timestamp(), span=cfg.days * DAY, limit=cfg.hard_limit,
        country_code=codes, country_tz=tz, country_fraud_w=fraud_w,
        city_country=city_country, city_terms=city_terms,
        city_ok=city_terms.count[:-1] > 0,
        term_channel=channel, term_mcc=t_mcc, term_country=t_country, term_city=t_city,
        term_scale=t_scale, term_sigma=t_sigma, ecom=ecom, ecom_cum=ecom_cum,
        card_city=c_city, card_country=c_country, card_mean=card_mean, card_pace=card_pace,
        card_ecom_share=ecom_share, card_night_owl=night_owl, card_trips_per_year=trips,
        local=local, local_cum=_cum_rows(local_w), shops=shops, shops_cum=_cum_rows(shops_w),
        day_cum=day_cum,
    )


def _pick_cities(rng: np.random.Generator, world: _World, home_city: np.ndarray,
                 domestic: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A destination city with physical terminals per row: another city of the home country
    where ``domestic``, else a city abroad (countries weighted by ``weight``)."""
    out = np.empty(len(home_city), dtype=np.int64)
    ok = np.flatnonzero(world.city_ok)
    for h in np.unique(home_city):
        same = world.city_country[ok] == world.city_country[h]
        for dom in (True, False):
            rows = np.flatnonzero((home_city == h) & (domestic == dom))
            if not len(rows):
                continue
            cand = ok[(same & (ok != h)) if dom else ~same]
            if not len(cand):  # a tiny world: anywhere else, or anywhere at all
                cand = ok[ok != h] if (ok != h).any() else ok
            w = (weight[world.city_country[cand]] + 1e-3) * world.city_terms.count[cand]
            out[rows] = rng.choice(cand, size=len(rows), p=w / w.sum())
    return out


def _foreign_ecom(rng: np.random.Generator, world: _World, card: np.ndarray) -> np.ndarray:
    """An online merchant outside the card's country per row, weighted towards the
    countries fraud comes from (falls back to any merchant)."""
    out = world.popular_ecom(rng, len(card))
    for c in np.unique(world.card_country[card]):
        rows = np.flatnonzero(world.card_country[card] == c)
        cand = world.ecom[world.term_country[world.ecom] != c]
        if len(cand):
            w = world.country_fraud_w[world.term_country[cand]]
            out[rows] = rng.choice(cand, size=len(rows), p=w / w.sum())
    return out


# ---- rows -------------------------------------------------------------------------------
@dataclass
class _Rows:
    ts: np.ndarray  # UTC seconds (float)
    card: np.ndarray
    term: np.ndarray
    amount: np.ndarray
    pattern: np.ndarray  # 0 legit, else _CODE of the family
    kind: np.ndarray  # legit kind (for analyst verdicts)
    # "ecom" only: card-not-present details a family sets itself. ``cnp`` is a table of
    # them, per ``_CNP`` field an object array of strings, None (missing) or ``_USUAL``
    # (the card's own, drawn at the end); ``cnp_at`` is each row's entry in it, -1 for a
    # row that leaves everything to the card's own, as legit traffic does. A table apart
    # keeps the legit rows' millions of details out of every concat and take.
    cnp: dict[str, np.ndarray] | None = None
    cnp_at: np.ndarray | None = None

    @classmethod
    def make(cls, ts: np.ndarray, card: np.ndarray, term: np.ndarray, amount: np.ndarray,
             pattern: int, kind: int | np.ndarray = _NORMAL,
             cnp: dict[str, object] | None = None) -> _Rows:
        n = len(ts)
        details = None if cnp is None else {
            f: _object_column(cnp.get(f, _USUAL), n) for f in _CNP}
        return cls(ts.astype(float), card.astype(np.int64), term.astype(np.int64),
                   amount.astype(float), np.full(n, pattern, dtype=np.int8),
                   np.broadcast_to(np.asarray(kind, dtype=np.int8), (n,)).copy(), details,
                   None if cnp is None else np.arange(n, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[_Rows]) -> _Rows:
        ts, card, term, amount, pattern, kind = (
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("ts", "card", "term", "amount", "pattern", "kind"))
        rows = cls(ts, card, term, amount, pattern, kind)
        if any(p.cnp is not None for p in parts):
            at, offset = [], 0
            for p in parts:
                if p.cnp is None or p.cnp_at is None:
                    at.append(np.full(len(p.ts), -1, dtype=np.int64))
                    continue
                at.append(np.where(p.cnp_at >= 0, p.cnp_at + offset, -1))
                offset += len(p.cnp[_CNP[0]])
            rows.cnp_at = np.concatenate(at)
            rows.cnp = {f: np.concatenate([p.cnp[f] for p in parts if p.cnp is not None])
                        for f in _CNP}
        return rows

    def take(self, keep: np.ndarray) -> _Rows:
        return _Rows(self.ts[keep], self.card[keep], self.term[keep], self.amount[keep],
                     self.pattern[keep], self.kind[keep], self.cnp,
                     None if self.cnp_at is None else self.cnp_at[keep])


# The details a family may set on its rows; billing country follows the BIN, merchant the
# terminal, so those two are never a family's own.
_CNP = ("customer_id", "device_id", "ip", "email", "card_bin", "shipping_country",
        "three_ds", "entry_mode")
_USUAL = ""  # not a valid value of any detail, so it cannot be confused with one


def _object_column(value: object, n: int) -> np.ndarray:
    """``value`` (a scalar or a sequence of ``n``) as an object array of ``n``."""
    if isinstance(value, np.ndarray | list | tuple):
        out = np.empty(n, dtype=object)
        out[:] = list(value)
        return out
    return np.full(n, value, dtype=object)


def _amounts(rng: np.random.Generator, world: _World, card: np.ndarray,
             term: np.ndarray) -> np.ndarray:
    """What a card usually pays at this kind of merchant."""
    return (world.card_mean[card] * world.term_scale[term]
            * np.exp(rng.normal(0.0, world.term_sigma[term])))


def _finish_amounts(rng: np.random.Generator, world: _World, term: np.ndarray,
                    amount: np.ndarray) -> np.ndarray:
    """Cents; cash in notes; nothing at or above the hard limit (only ``hard_limit`` fraud
    goes there), the largest pushed just below it."""
    atm = world.term_channel[term] == "atm"
    amount = np.where(atm, np.clip(np.round(amount / 20) * 20, 20, 1000), amount)
    over = amount >= world.limit * 0.999
    amount[over] = world.limit * rng.uniform(0.85, 0.999, int(over.sum()))
    return np.round(np.maximum(amount, 0.3), 2)


def _legit_chunk(cfg: SimulationConfig, world: _World, lo: int, hi: int) -> _Rows:
    rng = np.random.default_rng([cfg.seed, 1, lo])
    cards = np.arange(lo, hi)
    card = np.repeat(cards, rng.poisson(world.card_pace[cards] * cfg.days))
    n = len(card)
    day = np.minimum(np.searchsorted(world.day_cum, rng.random(n)), cfg.days - 1)
    online = rng.random(n) < world.card_ecom_share[card]
    night = world.card_night_owl[card] & (rng.random(n) < 0.6)
    profile = np.where(night, _NIGHT_HOURS, np.where(online, _ECOM_HOURS, _POS_HOURS))
    tz = world.country_tz[world.card_country[card]]
    ts = world.t0 + day * DAY + (_hours(rng, profile) - tz) * HOUR
    kind = np.where(night, _NIGHT, _NORMAL).astype(np.int8)

    term = world.local[card, _draw_rows(rng, world.local_cum, card)]
    wander = ~online & (rng.random(n) < 0.04) & (world.city_terms.count[world.card_city[card]] > 0)
    term[wander] = world.city_terms.draw(rng, world.card_city[card[wander]])
    shop = world.shops[card[online], _draw_rows(rng, world.shops_cum, card[online])]
    new_shop = rng.random(len(shop)) < 0.12
    shop[new_shop] = world.popular_ecom(rng, int(new_shop.sum()))
    term[online] = shop
    base = _Rows.make(ts, card, term, _amounts(rng, world, card, term), LEGIT, kind)
    parts = [base]

    # Trips: card-present payments move to another city or country and its local hours;
    # extra ones on top (hotels, restaurants), all a bit dearer.
    n_trips = rng.poisson(world.card_trips_per_year[cards] * cfg.days / 365)
    if n_trips.sum():
        t_card = np.repeat(cards, n_trips)
        t_start = world.t0 + rng.uniform(-3 * DAY, world.span, len(t_card))
        t_len = rng.uniform(2, 10, len(t_card)) * DAY
        dest = _pick_cities(rng, world, world.card_city[t_card],
                            rng.random(len(t_card)) < 0.4, _travel_weight())
        slot = _ranks(n_trips)
        width = int(n_trips.max())
        st = np.full((hi - lo, width), np.inf)
        en = np.full((hi - lo, width), -np.inf)
        st[t_card - lo, slot] = t_start
        en[t_card - lo, slot] = t_start + t_len
        trip_of = np.full((hi - lo, width), -1)
        trip_of[t_card - lo, slot] = np.arange(len(t_card))
        inside = (ts[:, None] >= st[card - lo]) & (ts[:, None] < en[card - lo])
        moved = np.flatnonzero(inside.any(axis=1) & ~online)
        which = trip_of[card[moved] - lo, inside[moved].argmax(axis=1)]
        d_tz = world.country_tz[world.city_country[dest[which]]]
        base.ts[moved] += (tz[moved] - d_tz) * HOUR
        base.term[moved] = world.city_terms.draw(rng, dest[which])
        base.amount[moved] = (_amounts(rng, world, card[moved], base.term[moved])
                              * rng.lognormal(np.log(1.3), 0.3, len(moved)))
        base.kind[moved] = _TRIP
        extra = rng.poisson(0.6 * world.card_pace[t_card] * t_len / DAY)
        e_trip = np.repeat(np.arange(len(t_card)), extra)
        e_card = t_card[e_trip]
        e_tz = world.country_tz[world.city_country[dest[e_trip]]]
        e_ts = world.at_local_hour(t_start[e_trip] + rng.random(len(e_trip)) * t_len[e_trip],
                                   _hours(rng, np.full(len(e_trip), _POS_HOURS)), e_tz)
        e_term = world.city_terms.draw(rng, dest[e_trip])
        e_amount = (_amounts(rng, world, e_card, e_term)
                    * rng.lognormal(np.log(1.3), 0.3, len(e_trip)))
        parts.append(_Rows.make(e_ts, e_card, e_term, e_amount, LEGIT, _TRIP))

    # Bursts: a shopping afternoon at several local shops, or in-app purchases in a row at
    # one online merchant: what card velocity alone would take for card testing.
    anchor = np.flatnonzero((base.kind == _NORMAL) & (rng.random(n) < 0.025))
    size = 1 + rng.poisson(2.0, len(anchor))
    b_anchor = np.repeat(anchor, size)
    b_card = card[b_anchor]
    b_online = online[b_anchor]
    gaps = rng.exponential(np.where(b_online, 2 * MINUTE, 12 * MINUTE))
    b_ts = base.ts[b_anchor] + _group_cumsum(gaps, size)
    b_term = world.local[b_card, _draw_rows(rng, world.local_cum, b_card)]
    b_term[b_online] = base.term[b_anchor[b_online]]
    parts.append(_Rows.make(b_ts, b_card, b_term, _amounts(rng, world, b_card, b_term),
                            LEGIT, _BURST))

    # Subscriptions: the same small amount, monthly, billed at night (UTC) by the merchant.
    subs = (rng.random(hi - lo) < 0.35) * (1 + rng.poisson(0.5, hi - lo))
    s_card = np.repeat(cards, subs)
    candidates = world.ecom[np.isin(world.term_mcc[world.ecom], _SUBSCRIPTION_MCCS)]
    if len(candidates) == 0:
        candidates = world.ecom
    s_term = rng.choice(candidates, len(s_card))
    s_amount = rng.choice([4.99, 7.99, 9.99, 12.99, 14.99, 19.99], len(s_card))
    phase = rng.uniform(0, 30.4, len(s_card))
    months = np.ceil((cfg.days - phase) / 30.4).astype(int)
    s_rep = np.repeat(np.arange(len(s_card)), months)
    s_k = _ranks(months)
    s_ts = (world.t0 + np.floor(phase[s_rep] + 30.4 * s_k) * DAY
            + rng.uniform(1, 6, len(s_rep)) * HOUR)
    parts.append(_Rows.make(s_ts, s_card[s_rep], s_term[s_rep], s_amount[s_rep], LEGIT,
                            _SUBSCRIPTION))

    rows = _Rows.concat(parts)
    m = len(rows.ts)
    # Big tickets: furniture, a phone, a holiday booked; several times the usual amount.
    big = (rows.kind == _NORMAL) & (rng.random(m) < 0.004)
    rows.amount[big] *= rng.lognormal(np.log(5.0), 0.5, int(big.sum()))
    rows.kind[big] = _BIG
    priced = rows.kind != _SUBSCRIPTION  # subscriptions keep their list price
    rows.amount[priced] = _finish_amounts(rng, world, rows.term[priced], rows.amount[priced])
    # Card verifications at 0: saving a card online, fuel and hotel pre-authorisations.
    can_verify = (rows.kind == _NORMAL) & ((world.term_channel[rows.term] == "ecom")
                                           | np.isin(world.term_mcc[rows.term],
                                                     _VERIFICATION_MCCS))
    share = cfg.verification_share * m / max(int(can_verify.sum()), 1)
    verify = can_verify & (rng.random(m) < share)
    rows.amount[verify] = 0.0
    rows.kind[verify] = _VERIFY
    return rows


def _travel_weight() -> np.ndarray:
    return np.array([c[5] for c in _COUNTRIES], dtype=float)


def _firsts(sizes: np.ndarray) -> np.ndarray:
    """Index of the first row of each group of ``sizes`` consecutive rows."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.cumsum(sizes) - sizes


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """0, 1, ..., size-1 for each group of consecutive rows."""
    return np.arange(int(np.sum(sizes))) - np.repeat(_firsts(sizes), sizes)


def _group_cumsum(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group of consecutive ``sizes`` rows."""
    total = np.cumsum(values)
    before = np.concatenate([[0.0], total])[_firsts(sizes)]
    return total - np.repeat(before, sizes)


# ---- fraud families -----------------------------------------------------------------------
def _episode_cards(cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """Cards hit by each card-level family, disjoint while there are cards enough, and
    drawn so that switching one family off changes nobody else's cards."""
    perm = np.random.default_rng([cfg.seed, 2]).permutation(cfg.cards)
    rates = {"card_testing": cfg.card_testing_rate, "stolen_card": cfg.stolen_card_rate,
             "account_takeover": cfg.takeover_rate, "hard_limit": cfg.hard_limit_rate,
             "unusual_hours": cfg.unusual_hours_rate}
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, rate in rates.items():
        rng = np.random.default_rng([cfg.seed, 10, _CODE[name]])
        n = int(rng.binomial(cfg.cards, min(1.0, rate * cfg.days))) if rate > 0 else 0
        if rate > 0:
            n = max(n, 1)
        out[name] = perm[(offset + np.arange(n)) % cfg.cards] if name in cfg.patterns else \
            np.zeros(0, dtype=np.int64)
        offset += n
    return out


def _family_rng(cfg: SimulationConfig, name: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, 11, _CODE[name]])


def _episode_starts(rng: np.random.Generator, world: _World, n: int,
                    room: float = HOUR) -> np.ndarray:
    return world.t0 + rng.uniform(0, max(world.span - room, HOUR), n)


def _cap(rng: np.random.Generator, world: _World, amount: np.ndarray) -> np.ndarray:
    over = amount >= world.limit * 0.999
    amount = amount.copy()
    amount[over] = world.limit * rng.uniform(0.9, 0.999, int(over.sum()))
    return np.round(amount, 2)


def _card_testing(cfg: SimulationConfig, world: _World, cards: np.ndarray) -> _Rows:
    rng = _family_rng(cfg, "card_testing")
    e = len(cards)
    start = _episode_starts(rng, world, e)
    window = rng.uniform(2, 25, e) * MINUTE
    # Fraudsters reuse the few merchants that do not check much (weak 3-D Secure, etc.).
    weak = rng.choice(world.ecom, size=max(1, len(world.ecom) // 10), replace=False)
    probes = 4 + rng.poisson(6, e)
    p_ep = np.repeat(np.arange(e), probes)
    p_ts = start[p_ep] + rng.random(len(p_ep)) * window[p_ep]
    p_ts[_firsts(probes)] = start  # the first probe at start
    p_term = np.where(rng.random(len(p_ep)) < 0.75, rng.choice(weak, len(p_ep)),
                      world.popular_ecom(rng, len(p_ep)))
    p_amount = np.where(rng.random(len(p_ep)) < 0.3, 1.0,
                        np.round(rng.uniform(0.5, 3.0, len(p_ep)), 2))
    cash = 1 + rng.binomial(2, 0.35, e)
    c_ep = np.repeat(np.arange(e), cash)
    c_ts = start[c_ep] + window[c_ep] + rng.uniform(5 * MINUTE, 6 * HOUR, len(c_ep))
    dear = world.ecom[np.isin(world.term_mcc[world.ecom], ("5732", "5944", "5999", "4511"))]
    c_term = rng.choice(dear if len(dear) else world.ecom, len(c_ep))
    c_amount = _cap(rng, world, rng.uniform(150, 1200, len(c_ep)))
    code = _CODE["card_testing"]
    return _Rows.concat([_Rows.make(p_ts, cards[p_ep], p_term, p_amount, code),
                         _Rows.make(c_ts, cards[c_ep], c_term, c_amount, code)])


def _stolen_card(cfg: SimulationConfig, world: _World,
                 cards: np.ndarray) -> tuple[_Rows, np.ndarray, np.ndarray]:
    """The fraud rows, and per episode the window in which the owner pays nothing."""
    rng = _family_rng(cfg, "stolen_card")
    e = len(cards)
    start = _episode_starts(rng, world, e)
    dur = rng.uniform(1, 4, e) * DAY
    pace = rng.uniform(2.5, 6.0, e)
    dest = _pick_cities(rng, world, world.card_city[cards], rng.random(e) < 0.55,
                        world.country_fraud_w)
    k = 2 + rng.poisson(pace * dur / DAY)
    ep = np.repeat(np.arange(e), k)
    d_tz = world.country_tz[world.city_country[dest[ep]]]
    ts = world.at_local_hour(start[ep] + rng.random(len(ep)) * dur[ep],
                             _hours(rng, np.full(len(ep), _POS_HOURS)), d_tz)
    ts = np.where(ts < start[ep], ts + DAY, ts)
    ts[_firsts(k)] = start
    term = world.city_terms.draw(rng, dest[ep])
    amount = _amounts(rng, world, cards[ep], term) * rng.lognormal(np.log(2.5), 0.5, len(ep))
    atm = world.term_channel[term] == "atm"
    amount[atm] = np.round(rng.uniform(100, 500, int(atm.sum())), -1)
    rows = _Rows.make(ts, cards[ep], term, _cap(rng, world, amount), _CODE["stolen_card"])
    # The owner notices half a day to a day after the last fraud and blocks the card.
    last = np.maximum.reduceat(ts, _firsts(k))
    return rows, start, last + rng.uniform(0.5, 1.0, e) * DAY


def _account_takeover(cfg: SimulationConfig, world: _World, cards: np.ndarray) -> _Rows:
    rng = _family_rng(cfg, "account_takeover")
    e = len(cards)
    start = _episode_starts(rng, world, e)
    length = rng.uniform(10, 18, e) * DAY
    # Half the owner's pace on top: a third of the card's payments in the window.
    k = 1 + rng.poisson(0.5 * world.card_pace[cards] * length / DAY)
    ep = np.repeat(np.arange(e), k)
    card = cards[ep]
    abroad = (rng.random(e) < 0.35)[ep]
    tz = world.country_tz[world.card_country[card]] + np.where(
        abroad, rng.integers(-7, 8, e)[ep], 0)
    ts = world.at_local_hour(start[ep] + rng.random(len(ep)) * length[ep],
                             _hours(rng, np.full(len(ep), _ECOM_HOURS)), tz)
    ts[_firsts(k)] = start
    term = np.where(abroad, _foreign_ecom(rng, world, card), world.popular_ecom(rng, len(ep)))
    amount = world.card_mean[card] * rng.uniform(3, 8, len(ep))
    return _Rows.make(ts, card, term, _cap(rng, world, amount), _CODE["account_takeover"])


def _hard_limit(cfg: SimulationConfig, world: _World, cards: np.ndarray) -> _Rows:
    rng = _family_rng(cfg, "hard_limit")
    e = len(cards)
    start = _episode_starts(rng, world, e, room=4 * HOUR)
    k = 1 + rng.binomial(2, 0.3, e)
    ep = np.repeat(np.arange(e), k)
    ts = start[ep] + rng.uniform(0, 3 * HOUR, len(ep))
    ts[_firsts(k)] = start
    dear = np.flatnonzero(np.isin(world.term_mcc, _BIG_TICKET_MCCS))
    term = rng.choice(dear if len(dear) else np.arange(len(world.term_mcc)), len(ep))
    amount = np.round(world.limit * (1 + rng.exponential(0.3, len(ep))), 2)
    return _Rows.make(ts, cards[ep], term, np.maximum(amount, world.limit),
                      _CODE["hard_limit"])


def _unusual_hours(cfg: SimulationConfig, world: _World, cards: np.ndarray) -> _Rows:
    rng = _family_rng(cfg, "unusual_hours")
    e = len(cards)
    day = rng.integers(0, cfg.days, e)
    tz = world.country_tz[world.card_country[cards]]
    start = world.t0 + day * DAY + (rng.uniform(0.5, 5.0, e) - tz) * HOUR
    start = np.maximum(start, world.t0)
    k = 1 + rng.poisson(1.2, e)
    ep = np.repeat(np.arange(e), k)
    ts = start[ep] + rng.uniform(0, 30 * MINUTE, len(ep))
    ts[_firsts(k)] = start
    card = cards[ep]
    term = np.where(rng.random(len(ep)) < 0.65, _foreign_ecom(rng, world, card),
                    world.popular_ecom(rng, len(ep)))
    amount = world.card_mean[card] * rng.uniform(1.5, 4.0, len(ep))
    return _Rows.make(ts, card, term, _cap(rng, world, amount), _CODE["unusual_hours"])


def _compromise_terminals(cfg: SimulationConfig, world: _World, legit: _Rows) -> None:
    """Waves: turn most legit payments at the wave's terminals during the wave into fraud."""
    rng = _family_rng(cfg, "compromised_terminal")
    n_terms = len(world.term_mcc)
    per_day = (cfg.compromised_terminals_per_day
               if cfg.compromised_terminals_per_day is not None
               else cfg.compromised_terminal_rate * n_terms)
    if per_day <= 0:
        return
    waves = max(1, int(rng.poisson(per_day * cfg.days)))
    # The biggest web shops are not where breaches go unnoticed for weeks.
    by_popularity = world.ecom[np.argsort(np.diff(world.ecom_cum, prepend=0.0))]
    big_shops = by_popularity[len(by_popularity) - len(by_popularity) // 10:]
    eligible = np.setdiff1d(np.arange(n_terms), big_shops)
    seed_term = rng.choice(eligible, waves)
    start = world.t0 + rng.uniform(-3 * DAY, max(world.span - 3 * DAY, world.span / 2), waves)
    length = rng.integers(7, 36, waves) * DAY
    frac = rng.uniform(0.55, 0.95, waves)
    several = rng.random(waves) < 0.3
    # At most 1% of all terminals at once: in a small world, one breach is not a quarter
    # of the month's fraud.
    extra = np.minimum(1 + rng.binomial(3, 0.5, waves), max(1, n_terms // 100))

    order = np.argsort(legit.term, kind="stable")
    bounds = np.searchsorted(legit.term[order], np.arange(n_terms + 1))
    code = _CODE["compromised_terminal"]
    for w in range(waves):
        hit = [int(seed_term[w])]
        if several[w]:
            t = seed_term[w]
            same = np.flatnonzero((world.term_city == world.term_city[t])
                                  & (world.term_channel == world.term_channel[t]))
            same = same[same != t]
            hit += rng.choice(same, min(len(same), int(extra[w])), replace=False).tolist()
        for t in hit:
            rows = order[bounds[t]:bounds[t + 1]]
            at = rows[(legit.ts[rows] >= start[w]) & (legit.ts[rows] < start[w] + length[w])
                      & (legit.pattern[rows] == LEGIT) & (legit.amount[rows] > 0)]
            legit.pattern[at[rng.random(len(at)) < frac[w]]] = code


# ---- card-not-present details and families (the "ecom" preset) ----------------------------
# Issuer BINs (made up, six digits: nowhere near a card number's 12-19) and their country,
# a handful per home country: a card's BIN says where its billing address is.
_ISSUERS = (
    ("497010", "FR"), ("513255", "FR"), ("453978", "FR"), ("497401", "FR"),
    ("492181", "DE"), ("535110", "DE"), ("416598", "DE"),
    ("454742", "ES"), ("520416", "ES"),
    ("402360", "IT"), ("532510", "IT"),
    ("465859", "NL"), ("520953", "NL"),
    ("479160", "BE"), ("536120", "BE"),
)
# The only IPv4 documentation /24s are three; 203.0.113.0/24 is left to the fraud rings
# (their one /24) and 198.51.100.0/24 is the mobile carriers' shared NAT, which many
# customers share too (the legit look-alike of a ring's /24). Neighbourhoods are IPv6 /48s
# of 2001:db8::/32 (the pseudonyms' network of an IPv6 address), 2001:db8:ff00:: upwards
# being the fraudsters' own networks.
_RING_NET = "203.0.113"
_MOBILE_NET = "198.51.100"
_HOOD_SIZE = 25  # customers per neighbourhood
_THREE_DS = ("none", "attempted", "authenticated", "failed")
_ONLINE_3DS = (0.20, 0.15, 0.60, 0.05)
_POS_ENTRY = ("chip", "contactless", "magstripe")
_POS_ENTRY_P = (0.45, 0.52, 0.03)
# The card-present families whose online payments come from the fraudster's own device
# and network; the others (compromised terminals, stolen cards) look like the card's own.
_FRAUDSTER_ONLINE = ("card_testing", "account_takeover", "hard_limit", "unusual_hours")
# New cards the ecom families make up get numbers of their own, apart from the population's
# and from each other's, so that switching one family off renames nobody else's cards.
_NEW_CARDS = {"bin_enumeration": 100_000, "synthetic_identity": 200_000}


@dataclass
class _Ident:
    """Who is behind each card: customers, their devices, IPs and e-mail, the card's BIN,
    and the merchant behind each terminal."""

    card_customer: np.ndarray  # per card
    card_bin: np.ndarray  # index into _ISSUERS
    cust_dev0: np.ndarray  # per customer: first device number
    cust_ndev: np.ndarray  # 1 or 2 devices
    cust_nip: np.ndarray  # 1 to 3 addresses
    ip_table: list[str]  # customer * 3 + slot
    term_merchant: np.ndarray  # per terminal


def _build_ident(cfg: SimulationConfig, world: _World) -> _Ident:
    rng = np.random.default_rng([cfg.seed, 12])
    n = cfg.cards
    # Customers hold one card mostly, some two or three; the cards of one customer live in
    # one city (cards sorted by city are dealt out to customers in order).
    sizes = rng.choice([1, 2, 3], size=n, p=[0.86, 0.11, 0.03])
    owner = np.repeat(np.arange(n), sizes)[:n]
    card_customer = np.empty(n, dtype=np.int64)
    card_customer[np.argsort(world.card_city, kind="stable")] = owner
    n_cust = int(owner[-1]) + 1
    cust_city = np.zeros(n_cust, dtype=np.int64)
    cust_city[card_customer] = world.card_city
    # Neighbourhoods: customers of one city, in groups, share a network.
    by_city = np.argsort(cust_city, kind="stable")
    hood = np.empty(n_cust, dtype=np.int64)
    hood[by_city] = np.arange(n_cust) // _HOOD_SIZE
    cust_ndev = 1 + (rng.random(n_cust) < 0.25)
    cust_dev0 = np.cumsum(cust_ndev) - cust_ndev
    cust_nip = 1 + rng.binomial(2, 0.35, n_cust)
    mobile_host = rng.integers(1, 255, n_cust)
    ip_table = []
    for c in range(n_cust):
        net = f"2001:db8:{int(hood[c]) % 0xff00 + 1:x}:{c % 0x10000:x}"
        ip_table += [f"{net}::1", f"{net}::2", f"{_MOBILE_NET}.{mobile_host[c]}"]
    # Each home country's cards are issued by its few banks, one bigger than the others.
    issuer_country = np.array([b[1] for b in _ISSUERS])
    card_bin = np.zeros(n, dtype=np.int64)
    for c in np.unique(world.card_country):
        cand = np.flatnonzero(issuer_country == world.country_code[c])
        mine = np.flatnonzero(world.card_country == c)
        w = 1.0 / (np.arange(len(cand)) + 1.0)
        card_bin[mine] = rng.choice(cand, size=len(mine), p=w / w.sum())
    # Merchants run several terminals (a chain's shops, a web shop's several sites): the
    # terminals of one channel and MCC are dealt out to merchants of 1 to 5 terminals.
    n_terms = len(world.term_mcc)
    order = np.lexsort((rng.random(n_terms), world.term_mcc.astype(str),
                        world.term_channel.astype(str)))
    per = 1 + rng.binomial(4, 0.35, n_terms)
    term_merchant = np.empty(n_terms, dtype=np.int64)
    term_merchant[order] = np.repeat(np.arange(n_terms), per)[:n_terms]
    return _Ident(card_customer, card_bin, cust_dev0, cust_ndev, cust_nip, ip_table,
                  term_merchant)


def _drop_countries(world: _World) -> np.ndarray:
    """Where fraudsters ship goods: countries fraud often comes from and no card lives in,
    so that a drop is always abroad for the card."""
    home = np.array([c[4] for c in _COUNTRIES]) > 0
    return np.flatnonzero(~home & (world.country_fraud_w > 0.4))


def _customer_name(c: int | np.integer) -> str:
    return f"cust_{int(c):05d}"


def _episodes(rng: np.random.Generator, per_day: float, days: int) -> int:
    """How many episodes of a family of ``per_day``: at least one when switched on."""
    return max(1, int(rng.poisson(per_day * days))) if per_day > 0 else 0


def _fraud_ring(cfg: SimulationConfig, world: _World, ident: _Ident) -> _Rows:
    """A few devices and IPs of one /24 behind many stolen cards: each card used once to
    three times from the ring's devices, with a new e-mail, shipped to a few drop
    countries."""
    rng = _family_rng(cfg, "fraud_ring")
    parts = []
    for r in range(_episodes(rng, cfg.fraud_rings_per_day, cfg.days)):
        # The whole ring inside the run, so that each device shows its many cards.
        length = min(rng.uniform(3, 15) * DAY, world.span / 2)
        start = _episode_starts(rng, world, 1, room=length)[0]
        devices = [f"dev_ring{r}_{k}" for k in range(int(rng.integers(2, 5)))]
        ips = [f"{_RING_NET}.{h}" for h in
               rng.choice(np.arange(1, 255), int(rng.integers(2, 6)), replace=False)]
        drops = world.country_code[rng.choice(_drop_countries(world), int(rng.integers(2, 4)),
                                              replace=False)]
        cards = rng.choice(cfg.cards, min(cfg.cards, int(rng.integers(30, 81))), replace=False)
        uses = 1 + rng.binomial(2, 0.35, len(cards))
        which = np.repeat(np.arange(len(cards)), uses)
        ts = start + rng.random(len(which)) * length
        m = len(which)
        dear = world.ecom[np.isin(world.term_mcc[world.ecom], ("5732", "5944", "5999", "5691"))]
        term = rng.choice(dear if len(dear) else world.ecom, m)
        amount = _cap(rng, world, rng.lognormal(np.log(180.0), 0.6, m))
        parts.append(_Rows.make(ts, cards[which], term, amount, _CODE["fraud_ring"], cnp={
            "customer_id": [f"cust_ring{r}_{j}" for j in which],
            "device_id": np.array(devices, dtype=object)[rng.integers(0, len(devices), m)],
            "ip": np.array(ips, dtype=object)[rng.integers(0, len(ips), m)],
            "email": [f"ring{r}.{j}@example.net" for j in which],
            "shipping_country": drops[rng.integers(0, len(drops), m)],
            "three_ds": np.where(rng.random(m) < 0.7, "none", "attempted"),
            "entry_mode": "ecommerce"}))
    return _Rows.concat(parts) if parts else _no_rows()


def _account_hijack(cfg: SimulationConfig, world: _World, ident: _Ident) -> _Rows:
    """An existing customer's card used from a new device, with a new e-mail and another
    shipping country, first a normal-looking payment, then a burst of larger ones."""
    rng = _family_rng(cfg, "account_hijack")
    e = max(1, int(rng.binomial(cfg.cards, min(1.0, cfg.hijack_rate * cfg.days))))
    cards = rng.choice(cfg.cards, min(e, cfg.cards), replace=False)
    e = len(cards)
    start = _episode_starts(rng, world, e, room=DAY)
    k = 3 + rng.poisson(2.5, e)
    ep = np.repeat(np.arange(e), k)
    rank = _ranks(k)
    # The first payment checks the account works; the burst follows within hours.
    ts = start[ep] + np.where(rank == 0, 0.0, rng.uniform(10 * MINUTE, 4 * HOUR, len(ep)))
    card = cards[ep]
    scale = np.where(rank == 0, rng.uniform(0.5, 1.5, len(ep)), rng.uniform(3, 10, len(ep)))
    amount = _cap(rng, world, world.card_mean[card] * scale)
    ship = world.country_code[rng.choice(_drop_countries(world), e)]
    return _Rows.make(ts, card, world.popular_ecom(rng, len(ep)), amount,
                      _CODE["account_hijack"], cnp={
                          "customer_id": [_customer_name(ident.card_customer[c]) for c in card],
                          "device_id": [f"dev_hijack{i}" for i in ep],
                          "ip": [f"2001:db8:ff01:{i % 0x10000:x}::9" for i in ep],
                          "email": [f"hj{i}@example.org" for i in ep],
                          "shipping_country": ship[ep],
                          "three_ds": np.where(rng.random(len(ep)) < 0.5, "none", "attempted"),
                          "entry_mode": "ecommerce"})


def _bin_enumeration(cfg: SimulationConfig, world: _World, ident: _Ident) -> _Rows:
    """Card numbers of one BIN, generated in sequence, each tried with a small amount at
    one merchant, all within a short burst."""
    rng = _family_rng(cfg, "bin_enumeration")
    parts = []
    first = cfg.cards + _NEW_CARDS["bin_enumeration"]
    for b in range(_episodes(rng, cfg.bin_enumerations_per_day, cfg.days)):
        start = _episode_starts(rng, world, 1, room=2 * HOUR)[0]
        window = rng.uniform(10, 60) * MINUTE
        n_cards = int(rng.integers(30, 121))
        issuer = _ISSUERS[int(rng.integers(0, len(_ISSUERS)))][0]
        cards = first + np.arange(n_cards)
        first += n_cards
        tries = 1 + rng.binomial(1, 0.3, n_cards)
        which = np.repeat(np.arange(n_cards), tries)
        # In card-number order: the script walks the numbers.
        ts = start + np.sort(rng.random(len(which))) * window
        m = len(which)
        amount = np.where(rng.random(m) < 0.5, 1.0, np.round(rng.uniform(0.5, 2.0, m), 2))
        merchant = rng.choice(world.ecom)
        parts.append(_Rows.make(ts, cards[which], np.full(m, merchant), amount,
                                _CODE["bin_enumeration"], cnp={
                                    "customer_id": None,  # guest checkout
                                    "device_id": f"dev_enum{b}",
                                    "ip": [f"2001:db8:ff02:{b % 0x10000:x}::{h:x}"
                                           for h in rng.integers(1, 6, m)],
                                    "email": [f"enum{b}.{j}@example.net" for j in which],
                                    "card_bin": issuer,
                                    "shipping_country": None,  # nothing shipped
                                    "three_ds": "none",
                                    "entry_mode": "ecommerce"}))
    return _Rows.concat(parts) if parts else _no_rows()


def _synthetic_identity(cfg: SimulationConfig, world: _World,
                        ident: _Ident) -> tuple[_Rows, _Rows]:
    """New customers (new e-mail, device, card) who pay normally for weeks, then bust out
    with large amounts: (the build-up, legit as it was paid; the bust-out, fraud)."""
    rng = _family_rng(cfg, "synthetic_identity")
    e = _episodes(rng, cfg.synthetic_identities_per_day, cfg.days)
    first = cfg.cards + _NEW_CARDS["synthetic_identity"]
    cards = first + np.arange(e)
    # The build-up takes up to three quarters of the run (three to six weeks when it is
    # long enough), then the bust-out lasts one or two days.
    build = np.minimum(rng.uniform(21, 42, e), 0.75 * cfg.days) * DAY
    t_bust = world.t0 + build + rng.uniform(0, max(world.span - build.max() - 2 * DAY, 0), e)
    t_bust = np.minimum(t_bust, world.t0 + world.span - 2 * DAY)
    born = t_bust - build
    home = rng.choice(np.flatnonzero(np.array([c[4] for c in _COUNTRIES]) > 0), e)
    issuers = np.array([b[1] for b in _ISSUERS])
    issuer = [_ISSUERS[int(rng.choice(np.flatnonzero(issuers == world.country_code[h])))][0]
              for h in home]

    def details(ep: np.ndarray) -> dict[str, object]:
        return {"customer_id": [f"cust_syn{i}" for i in ep],
                "device_id": [f"dev_syn{i}" for i in ep],
                "ip": [f"2001:db8:ff03:{i % 0x10000:x}::1" for i in ep],
                "email": [f"syn{i}@example.org" for i in ep],
                "card_bin": np.array(issuer, dtype=object)[ep],
                "shipping_country": world.country_code[home[ep]],
                "three_ds": np.where(rng.random(len(ep)) < 0.8, "authenticated", "attempted"),
                "entry_mode": "ecommerce"}

    k = 1 + rng.poisson(build / DAY * 0.6)
    ep = np.repeat(np.arange(e), k)
    ts = born[ep] + rng.random(len(ep)) * build[ep]
    amount = np.round(rng.lognormal(np.log(35.0), 0.5, len(ep)), 2)
    normal = _Rows.make(ts, cards[ep], world.popular_ecom(rng, len(ep)),
                        _cap(rng, world, amount), LEGIT, _NORMAL, cnp=details(ep))
    kb = 3 + rng.poisson(3.0, e)
    bp = np.repeat(np.arange(e), kb)
    b_ts = t_bust[bp] + rng.random(len(bp)) * rng.uniform(1, 2, e)[bp] * DAY
    dear = world.ecom[np.isin(world.term_mcc[world.ecom], (*_BIG_TICKET_MCCS, "5999"))]
    b_amount = _cap(rng, world, rng.uniform(400, 2500, len(bp)))
    bust = _Rows.make(b_ts, cards[bp], rng.choice(dear if len(dear) else world.ecom, len(bp)),
                      b_amount, _CODE["synthetic_identity"], cnp=details(bp))
    return normal, bust


def _friendly_fraud(cfg: SimulationConfig, world: _World, legit: _Rows) -> None:
    """Genuine online payments the card's owner later disputes: relabelled as fraud, with
    nothing else about them changed (label noise from the card's own device and IP)."""
    rng = _family_rng(cfg, "friendly_fraud")
    can = np.flatnonzero((legit.pattern == LEGIT) & (world.term_channel[legit.term] == "ecom")
                         & np.isin(legit.kind, (_NORMAL, _BIG)) & (legit.amount > 0))
    n = max(1, int(rng.binomial(len(can), cfg.friendly_fraud_share))) if len(can) else 0
    legit.pattern[rng.choice(can, n, replace=False)] = _CODE["friendly_fraud"]


def _no_rows() -> _Rows:
    return _Rows.make(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), LEGIT, cnp={})


def _cnp_columns(cfg: SimulationConfig, world: _World, ident: _Ident,
                 rows: _Rows) -> dict[str, pd.Series]:
    """The card-not-present details of every row: a family's own where it set them, else
    the card's usual ones. Card-present payments have no device, IP, e-mail or shipping
    country."""
    rng = np.random.default_rng([cfg.seed, 13])
    n = len(rows.ts)
    at = rows.cnp_at if rows.cnp_at is not None else np.full(n, -1, dtype=np.int64)
    family_rows = np.flatnonzero(at >= 0)
    online = world.term_channel[rows.term] == "ecom"
    own = rows.card < cfg.cards  # the population's cards, as opposed to made-up ones
    card = np.where(own, rows.card, 0)
    cust = ident.card_customer[card]
    code = {name: _CODE[name] for name in PATTERNS + ECOM_PATTERNS}
    fraudster = online & np.isin(rows.pattern, [code[f] for f in _FRAUDSTER_ONLINE])
    friendly = rows.pattern == code["friendly_fraud"]

    # The usual details, drawn for every row (vectorised), used where the family left them.
    second = (ident.cust_ndev[cust] == 2) & (rng.random(n) < 0.3) & ~friendly
    device = np.array([f"dev_{i:06d}" for i in range(int(ident.cust_dev0[-1]) + 2)],
                      dtype=object)[ident.cust_dev0[cust] + second]
    device[rng.random(n) < 0.10] = None  # a blocked fingerprinting script, an old app
    device[friendly] = np.array([f"dev_{i:06d}" for i in ident.cust_dev0[cust[friendly]]],
                                dtype=object)
    slot = np.minimum((rng.random(n) ** 1.8 * ident.cust_nip[cust]).astype(np.int64),
                      ident.cust_nip[cust] - 1)
    slot[friendly] = 0
    ip = np.array(ident.ip_table, dtype=object)[cust * 3 + slot]
    email = np.array([f"u{c}@example.com" for c in range(len(ident.cust_dev0))],
                     dtype=object)[cust]
    bill = world.country_code[world.card_country[card]]
    travel = _travel_weight()
    ship = np.where(rng.random(n) < 0.92, bill,
                    world.country_code[rng.choice(len(travel), n, p=travel / travel.sum())])
    # The card-present families' online fraud: the fraudster's device and network.
    device[fraudster] = [f"dev_fraud{rows.pattern[i]}_{rows.card[i]}"
                         for i in np.flatnonzero(fraudster)]
    ip[fraudster] = [f"2001:db8:ff{rows.pattern[i]:02x}:{rows.card[i] % 0x10000:x}::7"
                     for i in np.flatnonzero(fraudster)]
    subscription = rows.kind == _SUBSCRIPTION
    three_ds = np.array(_THREE_DS, dtype=object)[rng.choice(4, n, p=_ONLINE_3DS)]
    # Fraudsters pick merchants that do not enforce 3-D Secure, or it is only attempted.
    three_ds[fraudster] = np.where(rng.random(int(fraudster.sum())) < 0.7, "none", "attempted")
    three_ds[subscription] = "none"  # merchant-initiated: no shopper to authenticate
    entry = np.where(subscription | (rng.random(n) < 0.12), "card_on_file",
                     "ecommerce").astype(object)
    pos_entry = np.array(_POS_ENTRY, dtype=object)[rng.choice(3, n, p=_POS_ENTRY_P)]
    pos_entry[world.term_channel[rows.term] == "atm"] = "chip"
    usual = {
        "customer_id": np.array([_customer_name(c) for c in range(len(ident.cust_dev0))],
                                dtype=object)[cust],
        "device_id": device, "ip": ip, "email": email,
        "card_bin": np.array([b[0] for b in _ISSUERS], dtype=object)[ident.card_bin[card]],
        "shipping_country": ship,
        "three_ds": np.where(online, three_ds, _object_column(None, n)),
        "entry_mode": np.where(online, entry, pos_entry),
    }
    out: dict[str, np.ndarray] = {}
    for f in _CNP:
        out[f] = np.asarray(usual[f], dtype=object).copy()
        if rows.cnp is not None and len(family_rows):
            mine = rows.cnp[f][at[family_rows]]
            own_value = mine != _USUAL
            out[f][family_rows[own_value]] = mine[own_value]
        if f in ("device_id", "ip", "email", "shipping_country"):
            out[f][~online] = None  # nobody types an e-mail at a till
    issuer_country = {b[0]: b[1] for b in _ISSUERS}
    billing = pd.Series(out["card_bin"]).map(issuer_country).to_numpy(dtype=object)
    merchant = np.array([f"merch_{i:04d}" for i in range(len(world.term_mcc))],
                        dtype=object)[ident.term_merchant[rows.term]]
    columns = {**out, "billing_country": billing, "merchant_id": merchant}
    return {f: _strings(columns[f]) for f in PAYMENT_DETAIL_ORDER}


# The details in the order of ``model.schemas.PAYMENT_DETAILS`` (not imported: the
# simulator does not move with the schemas, the test checks the two agree).
PAYMENT_DETAIL_ORDER = ("customer_id", "device_id", "ip", "email", "card_bin",
                        "billing_country", "shipping_country", "merchant_id", "three_ds",
                        "entry_mode")


def _strings(values: np.ndarray) -> pd.Series:
    """An object array of strings and None as a string column, through its distinct values
    (as the other string columns: no conversion per row)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = pd.Series([*uniques.tolist(), None])
    return table.take(np.where(codes < 0, len(uniques), codes)).reset_index(drop=True)


# ---- labels and output --------------------------------------------------------------------
def _label_delays(rng: np.random.Generator, source: np.ndarray) -> np.ndarray:
    """Seconds from payment to label, by source."""
    n = len(source)
    chargeback = rng.lognormal(np.log(11.0), 0.6, n)
    bad = (chargeback < 1) | (chargeback > 60)
    chargeback[bad] = rng.uniform(1, 60, int(bad.sum()))
    analyst = np.clip(rng.lognormal(np.log(1.0), 0.8, n), 1 / 24, 10)
    customer = np.clip(rng.lognormal(np.log(2.0), 0.7, n), 2 / 24, 20)
    return np.choose(source, [chargeback, analyst, customer]) * DAY


def simulate(
    config: SimulationConfig, progress: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """One row per payment, in timestamp order, in the history-import format."""
    world = _build_world(config)
    chunks = []
    for lo in range(0, config.cards, _CARD_CHUNK):
        hi = min(lo + _CARD_CHUNK, config.cards)
        chunks.append(_legit_chunk(config, world, lo, hi))
        if progress is not None:
            progress(hi - lo)
    legit = _Rows.concat(chunks)
    del chunks

    hit = _episode_cards(config)
    parts = []
    if len(hit["stolen_card"]):
        stolen, gone_from, gone_to = _stolen_card(config, world, hit["stolen_card"])
        since = np.full(config.cards, np.inf)
        until = np.full(config.cards, -np.inf)
        since[hit["stolen_card"]] = gone_from
        until[hit["stolen_card"]] = gone_to
        # Merchant-initiated subscriptions still go through; the owner pays nothing.
        gone = (legit.ts >= since[legit.card]) & (legit.ts < until[legit.card])
        legit = legit.take(~gone | (legit.kind == _SUBSCRIPTION))
        parts.append(stolen)
    if "compromised_terminal" in config.patterns:
        _compromise_terminals(config, world, legit)
    for name, make in (("card_testing", _card_testing), ("account_takeover", _account_takeover),
                       ("hard_limit", _hard_limit), ("unusual_hours", _unusual_hours)):
        if len(hit[name]):
            parts.append(make(config, world, hit[name]))
    ecom = config.preset == "ecom"
    # Everything of the ecom preset comes after the card-present families and draws from
    # streams of its own: the "pos" run never reaches it.
    ident = _build_ident(config, world) if ecom else None
    if ident is not None:
        families = set(config.ecom_patterns)
        if "friendly_fraud" in families and config.friendly_fraud_share > 0:
            _friendly_fraud(config, world, legit)
        if "fraud_ring" in families:
            parts.append(_fraud_ring(config, world, ident))
        if "account_hijack" in families and config.hijack_rate > 0:
            parts.append(_account_hijack(config, world, ident))
        if "bin_enumeration" in families:
            parts.append(_bin_enumeration(config, world, ident))
        if "synthetic_identity" in families:
            parts.extend(_synthetic_identity(config, world, ident))
    rows = _Rows.concat([legit, *parts])
    del legit, parts

    # Millisecond timestamps: exact through JSON, Parquet and float seconds alike.
    ts_ms = np.round(rows.ts * 1000).astype(np.int64)
    t0_ms = round(world.t0 * 1000)
    inside = (ts_ms >= t0_ms) & (ts_ms < t0_ms + config.days * 86_400_000)
    rows = rows.take(inside)
    ts_ms = ts_ms[inside]
    order = np.argsort(ts_ms, kind="stable")
    rows = rows.take(order)
    ts_ms = ts_ms[order]
    n = len(ts_ms)

    rng = np.random.default_rng([config.seed, 3])
    is_fraud = rows.pattern != LEGIT
    source = np.full(n, 1, dtype=np.int64)  # analyst
    for name, mix in _SOURCE_MIX.items():
        mine = np.flatnonzero(rows.pattern == _CODE[name])
        source[mine] = rng.choice(3, len(mine), p=mix)
    if ecom:
        for name, mix in _ECOM_SOURCE_MIX.items():
            mine = np.flatnonzero(rows.pattern == _CODE[name])
            source[mine] = rng.choice(3, len(mine), p=mix)
    if config.label_delay_days is not None:
        labelled = np.ones(n, dtype=bool)
        delay_ms = np.full(n, round(config.label_delay_days * 86_400_000), dtype=np.int64)
    else:
        labelled = is_fraud.copy()
        if config.legit_verdict_rate > 0:
            # Analysts clear what was alerted: mostly the legit look-alikes of fraud.
            weight = np.where(np.isin(rows.kind, (_NORMAL, _SUBSCRIPTION, _VERIFY)), 1.0, 8.0)
            p = config.legit_verdict_rate * weight / weight[~is_fraud].mean()
            labelled |= ~is_fraud & (rng.random(n) < p)
        delay_ms = np.round(_label_delays(rng, source) * 1000).astype(np.int64)

    # String columns are taken from small tables of distinct values: converting millions
    # of Python strings to pandas' string dtype would cost seconds and hundreds of MB.
    def column(table: Sequence[str | None], codes: np.ndarray) -> pd.Series:
        return pd.Series(list(table)).take(codes).reset_index(drop=True)

    n_terms = len(world.term_mcc)
    if ecom:
        # Made-up cards are numbered far above the population's: only the used names.
        used, card_codes = np.unique(rows.card, return_inverse=True)
        card_names = [f"card_{i:05d}" for i in used]
    else:
        card_codes = rows.card
        card_names = [f"card_{i:05d}" for i in range(int(rows.card.max()) + 1 if n else 0)]
    frame = pd.DataFrame(
        {
            "payment_id": _payment_ids(config.id_prefix or f"sim{config.seed}", n),
            "timestamp": pd.Series(pd.to_datetime(ts_ms, unit="ms", utc=True)),
            "card_id": column(card_names, card_codes),
            "terminal_id": column([f"term_{i:04d}" for i in range(n_terms)], rows.term),
            "amount": rows.amount,
            "currency": column(["EUR"], np.zeros(n, dtype=np.int64)),
            "country": column(world.country_code.tolist(), world.term_country[rows.term]),
            "channel": column(world.term_channel.tolist(), rows.term),
            "merchant_category": column(world.term_mcc.tolist(), rows.term),
            "is_fraud": is_fraud,
            "label_reported_at": pd.Series(
                pd.to_datetime(ts_ms + delay_ms, unit="ms", utc=True)).where(labelled),
            "label_source": column([*LABEL_SOURCES, None], np.where(labelled, source, 3)),
            "fraud_pattern": column([None, *PATTERNS, *ECOM_PATTERNS],
                                    rows.pattern.astype(np.int64)),
        }
    )
    if ident is not None:
        for name, values in _cnp_columns(config, world, ident, rows).items():
            frame[name] = values
    return frame


def _payment_ids(prefix: str, n: int) -> pd.Series:
    """f"{prefix}_{i:07d}" for i in range(n), built in Arrow when pandas stores strings there."""
    dtype = pd.Series(["x"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n)), pa.string()), 7, "0")
        return pd.Series(pd.array(pc.binary_join_element_wise(f"{prefix}_", digits, ""),
                                  dtype=dtype))
    return pd.Series([f"{prefix}_{i:07d}" for i in range(n)])


def write_traffic(traffic: pd.DataFrame, out: Path) -> None:
    """The simulated history to a ``.csv`` or ``.parquet`` file (by its suffix), in the
    history-import format."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        traffic.to_csv(out, index=False)
    else:
        traffic.to_parquet(out, index=False)
