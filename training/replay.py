"""``fraudstream replay``: send a file's payments through the live API, with their labels
posted as they would have been reported, and count how many answers differ from the
backtest of the same payments.

This is the check that the one definition of every feature holds end to end: the API's
features come from Redis, the backtest's from the history, and the same model must give
the same decision. The file's payments must not be in the history yet, and the online
store must hold the history before them (``fraudstream history backfill-online``).

With ``exact`` (the default) the clock stops whenever labels fall due: they are posted,
and no later payment is sent before Redis shows them. Without it, labels race the payments
scored right after them, as they would in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from model.config import Settings
from model.registry import Registry
from model.schemas import PAYMENT_DETAILS
from stores import pii_key, redis_client
from stores.history import HistoryStore
from stores.online_features import card_fraud_known_key
from stores.redis_client import RedisClient
from training.backtest import BacktestConfig, BacktestError, backtest, load_file
from training.importer import DEFAULT_LABEL_DELAY_DAYS, ImportError_
from training.traffic import TrafficReport, send_traffic

SETTLE_TIMEOUT = 30.0
REPLAY_DEADLINE_MS = 10_000  # within the client's own 10 s timeout


class ReplayError(RuntimeError):
    pass


def traffic_frame(payments: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The payments (epoch ``ts``) with their latest fraud label, as the traffic sender
    takes them, in timestamp order."""
    fraud = labels[labels["is_fraud"].astype(bool)].sort_values("reported_at")
    first = fraud.groupby("payment_id").head(1).set_index("payment_id")["reported_at"]
    reported = payments["payment_id"].map(first)
    frame = pd.DataFrame({
        "payment_id": payments["payment_id"],
        "timestamp": _exact_time(payments["ts"]),
        "card_id": payments["card_id"],
        "terminal_id": payments["terminal_id"],
        "amount": payments["amount"],
        "currency": payments.get("currency", "EUR"),
        "is_fraud": reported.notna(),
        "label_reported_at": _exact_time(reported),
        # numpy's stubs take no None here; numpy makes an object array, None where unlabelled
        "label_source": np.where(reported.notna(), "chargeback", None),  # type: ignore[call-overload]
    })
    for optional in ("country", "channel", "merchant_category", *PAYMENT_DETAILS):
        if optional in payments.columns:
            frame[optional] = payments[optional]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _exact_time(epoch: pd.Series) -> pd.Series:
    # The history keeps microseconds; float seconds -> nanoseconds would land a hair off.
    micros = (epoch * 1e6).round().astype("Int64")
    return pd.to_datetime(micros, unit="us", utc=True)


def settle_in(redis: RedisClient) -> Callable[[list[pd.Series]], Awaitable[None]]:
    """Waits until every fraud label given is in the features in Redis. The card's step of a
    label is applied after the terminal's (``stores.online_features``): the card's is awaited."""

    async def settle(labels: list[pd.Series]) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        waiting = [(card_fraud_known_key(lb["card_id"]), lb["payment_id"])
                   for lb in labels if lb["is_fraud"]]
        while waiting:
            found = await redis.commands([("ZSCORE", key, pid) for key, pid in waiting])
            waiting = [w for w, score in zip(waiting, found, strict=True) if score is None]
            if waiting and time.monotonic() > deadline:
                raise ReplayError(f"{len(waiting)} labels did not reach the features within "
                                  f"{SETTLE_TIMEOUT:g}s: is the stream worker running?")
            if waiting:
                await asyncio.sleep(0.02)

    return settle


@dataclass(frozen=True)
class Agreement:
    payments: int
    answered: int
    same_decision: int
    different_decision: int
    max_score_difference: float
    differences: pd.DataFrame  # payment_id, decision (api), decision (backtest), scores


def compare(report: TrafficReport, decisions: pd.DataFrame, version: str) -> Agreement:
    """The live answers against the backtest's decisions of model ``version``."""
    live = pd.DataFrame([
        {"payment_id": pid, "api_decision": a["decision"], "api_score": a["score"],
         "api_model": a["model_version"]}
        for pid, a in report.answers.items()])
    if live.empty:
        raise ReplayError("the API answered no payment")
    joined = decisions[["payment_id", f"score:{version}", f"decision:{version}"]].rename(
        columns={f"score:{version}": "backtest_score",
                 f"decision:{version}": "backtest_decision"}).merge(live, on="payment_id")
    other_model = joined["api_model"] != version
    if other_model.any():
        raise ReplayError(f"{int(other_model.sum())} answers came from another model than "
                          f"{version}: was a model promoted during the replay?")
    differ = joined["api_decision"] != joined["backtest_decision"]
    gap = (joined["api_score"].astype(float) - joined["backtest_score"]).abs()
    return Agreement(len(decisions), len(joined), int((~differ).sum()), int(differ.sum()),
                     float(gap.max()) if len(gap) else float("nan"), joined[differ])


async def replay(api_url: str, api_key: str | None, frame: pd.DataFrame, rate: float,
                 redis: RedisClient | None, progress: Callable[[int], None] | None = None
                 ) -> TrafficReport:
    # A replay asks what the live API decides, not how fast: a long deadline, so that a
    # busy machine never answers it degraded (admission control sheds on a share of it).
    headers = {"X-Deadline-Ms": str(REPLAY_DEADLINE_MS)}
    if api_key:
        headers["X-API-Key"] = api_key
    return await send_traffic(
        api_url, frame, rate, headers=headers,
        progress=progress, keep_answers=True,
        settle=settle_in(redis) if redis is not None else None, card_order=redis is not None)


@dataclass(frozen=True)
class ReplayConfig:
    file: Path  # payments (and labels) not yet in the history
    mapping: dict[str, str] = field(default_factory=dict)  # source column -> ours
    label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS  # when the file gives none
    rate: float = 400.0  # payments per second
    exact: bool = True  # labels due are in the features before later payments are sent
    api_key: str | None = None  # scopes score, labels; None: ``replay_file``'s default_key


@dataclass(frozen=True)
class ReplayResult:
    version: str  # the model compared
    report: TrafficReport
    agreement: Agreement
    differences_file: Path | None  # the differing payments (CSV), if any differ


# (step, total or None, payments done since the last call)
ReplayProgress = Callable[[str, int | None, int], None]


def replay_file(settings: Settings, cfg: ReplayConfig,
                progress: ReplayProgress | None = None,
                default_key: Callable[[], str | None] = lambda: None) -> ReplayResult:
    """Backtest the file's payments with the current model, send them through the live API
    (labels as reported), compare every decision and keep the differing ones under
    ``<home>/replays``. ``ReplayError`` if any of it cannot be done. Without
    ``cfg.api_key``, the key is asked of ``default_key`` once the file is checked."""
    report_step = progress or (lambda step, total, n: None)
    registry = Registry(settings.models_dir)
    version = registry.current_version()
    if version is None:
        raise ReplayError("no current model: train or promote one first")
    try:
        # The API pseudonymises with the same key: it takes the file's tokens as they are.
        key = pii_key.load(settings)
        payments, labels = load_file(cfg.file, cfg.mapping, cfg.label_delay_days,
                                     pii_key=key)
        report_step("backtest of the same payments…", None, 0)
        bt = backtest(HistoryStore(settings.history_dir), registry, BacktestConfig(
            file=cfg.file, mapping=cfg.mapping, label_delay_days=cfg.label_delay_days,
            pii_key=key, versions=(version,), bootstrap=0))
    except (BacktestError, ImportError_, pii_key.PiiKeyError) as exc:
        raise ReplayError(f"{cfg.file}: {exc}") from exc
    frame = traffic_frame(payments, labels)
    api_key = cfg.api_key or default_key()
    step = f"replaying to {settings.api_url} at {cfg.rate:g}/s"
    report_step(step, len(frame), 0)

    async def go() -> TrafficReport:
        redis = redis_client.connect(settings) if cfg.exact else None
        try:
            return await replay(settings.api_url, api_key, frame, cfg.rate, redis,
                                progress=lambda n: report_step(step, len(frame), n))
        finally:
            if redis is not None:
                await redis.aclose()

    report = asyncio.run(go())
    agreement = compare(report, bt.decisions, version)
    out = None
    if agreement.different_decision:
        out = settings.home / "replays" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-differences.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        agreement.differences.to_csv(out, index=False)
    return ReplayResult(version, report, agreement, out)
