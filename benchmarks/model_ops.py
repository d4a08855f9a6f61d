"""A simulated month through the live stack, with a fraud wave from mid-month: does the model
keep itself current?

The stack is its own (a temporary home, free ports): Kafka, Redis, the stream worker, the
API and ``fraudstream retrain-worker`` with the *events* clock (its "now" is the newest
payment in the history, so the month retrains on its own calendar). The first model is
trained on 45 days of history without card testing. The month is sent day by day through
the API, each label posted once the simulated clock passes its report time; from mid-month
a card-testing wave (a fraud family the first model never saw) runs at ``--wave-boost``
times the usual rate. At each day's end the driver waits until the stream has recorded the
day and the retrain worker has ticked at that clock (the worker's own decisions: when to
run, shadow, compare, promote).

The "stack whose model never changed" is the first model scoring the same payments on the
same features (the history keeps the exact vector each answer used; features do not depend
on the model), with its own thresholds.

Writes ``docs/model-ops.md`` and ``docs/model-ops.png``.

    python benchmarks/model_ops.py                 # 1,500 cards, 30 days, about 15 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from fraudstream_dev import launcher as services
from fraudstream_dev import testenv
from model.config import Settings
from model.registry import Registry
from model.scorer import Scorer
from stores.history import FEATURE_PREFIX, HistoryStore
from training.evaluate import EvalConfig, EvalSet, evaluate
from training.simulator import SimulationConfig, simulate

from common import ROOT
from common import short_machine as machine

DOCS = ROOT / "docs"
DAY = 86_400.0
WAVE = "card_testing"


def build_traffic(args: argparse.Namespace, start: datetime) -> pd.DataFrame:
    cfg = SimulationConfig(days=args.history_days + args.month_days, cards=args.cards,
                           terminals=args.cards // 8, start=start, seed=args.seed,
                           id_prefix=f"mo{args.seed}",
                           card_testing_rate=0.0003 * args.wave_boost)
    frame = simulate(cfg)
    wave_start = start + timedelta(days=args.history_days + args.wave_day)
    # The wave: card testing only from mid-month, at wave_boost times the usual rate.
    early = (frame["fraud_pattern"] == WAVE) & (frame["timestamp"] < wave_start)
    return frame[~early].reset_index(drop=True)


def env_for(home: Path, args: argparse.Namespace) -> dict[str, str]:
    return {
        **testenv.isolated_env(home, "fraudstream-modelops"),
        "FRAUDSTREAM_RETRAIN_CLOCK": "events",
        "FRAUDSTREAM_RETRAIN_EVERY_HOURS": str(args.every_days * 24),
        "FRAUDSTREAM_RETRAIN_MIN_NEW_LABELS": str(args.min_new_labels),
        "FRAUDSTREAM_RETRAIN_CHECK_SECONDS": "1",
        "FRAUDSTREAM_RETRAIN_TEST_DAYS": str(args.test_days),
        "FRAUDSTREAM_RETRAIN_BASELINES": "false",
        "FRAUDSTREAM_MATURITY_DAYS": str(args.maturity_days),
        "FRAUDSTREAM_SHADOW_DAYS": str(args.shadow_days),
        "FRAUDSTREAM_MAX_SHADOW_DAYS": str(args.shadow_days * 2),
        "FRAUDSTREAM_MIN_SHADOW_FRAUD": "10",
        "FRAUDSTREAM_MODEL_POLL_SECONDS": "1",
    }


def cli(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "ops.cli", *argv], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


async def send_day(client: httpx.AsyncClient, events: pd.DataFrame, rate: float,
                   answers: dict[str, dict[str, Any]]) -> int:
    """Payments and labels in time order, open loop at ``rate``; returns errors."""
    limit = asyncio.Semaphore(32)
    errors = 0

    async def post(path: str, body: dict[str, Any], pid: str | None) -> None:
        nonlocal errors
        async with limit:
            for attempt in range(5):
                try:
                    resp = await client.post(path, json=body)
                except httpx.HTTPError:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if resp.status_code < 300:
                    if pid is not None:
                        answers[pid] = resp.json()
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
            errors += 1

    tasks = []
    t0 = time.perf_counter()
    ev: Any  # a row's named tuple: pandas' stubs type its fields as any scalar
    for i, ev in enumerate(events.itertuples(index=False)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if ev.kind == "payment":
            body = {"payment_id": ev.payment_id, "timestamp": ev.at.isoformat(),
                    "card_id": ev.card_id, "terminal_id": ev.terminal_id,
                    "amount": float(ev.amount), "currency": ev.currency,
                    "country": ev.country, "channel": ev.channel,
                    "merchant_category": ev.merchant_category}
            tasks.append(asyncio.create_task(post("/v1/payments/score", body,
                                                  ev.payment_id)))
        else:
            tasks.append(asyncio.create_task(post("/v1/labels", {
                "payment_id": ev.payment_id, "is_fraud": True, "source": ev.label_source,
                "reported_at": ev.at.isoformat()}, None)))
    await asyncio.gather(*tasks)
    return errors


def events_of(month: pd.DataFrame, labels: pd.DataFrame, lo: pd.Timestamp,
              hi: pd.Timestamp) -> pd.DataFrame:
    pay = month[(month["timestamp"] >= lo) & (month["timestamp"] < hi)].assign(
        kind="payment", at=lambda d: d["timestamp"])
    lab = labels[(labels["label_reported_at"] >= lo) & (labels["label_reported_at"] < hi)]
    lab = lab.assign(kind="label", at=lambda d: d["label_reported_at"])
    cols = ["kind", "at", "payment_id", "card_id", "terminal_id", "amount", "currency",
            "country", "channel", "merchant_category", "label_source"]
    both = pd.concat([pay[cols], lab[cols]], ignore_index=True)
    # labels first at equal times: as the replay does
    return both.sort_values(["at", "kind"], ascending=[True, False], kind="stable")


def wait_day(settings: Settings, registry: Registry, sent: int, day_end: float,
             timeout: float = 900.0) -> dict[str, Any]:
    """Until the history holds every payment sent, then until the retrain worker has
    ticked (and run, if it was due) at a clock that has seen them."""
    store = HistoryStore(settings.history_dir)
    deadline = time.monotonic() + timeout
    recorded_at = None
    while time.monotonic() < deadline:
        if recorded_at is None:
            n = int(store.query("SELECT count(DISTINCT payment_id) AS n FROM payments_raw "
                                "WHERE source = 'api'")["n"].iloc[0])
            if n >= sent:
                recorded_at = time.time()
        else:
            status = registry.worker_status() or {}
            if status.get("at", 0) > recorded_at and \
                    status.get("clock", 0) >= day_end - DAY / 2:
                return status
        time.sleep(0.5)
    raise RuntimeError(f"day not settled within {timeout:g}s (recorded: {recorded_at}); "
                       f"worker status {registry.worker_status()}")


def alert_metrics(frame: pd.DataFrame, scores: np.ndarray, decisions: np.ndarray,
                  k: int) -> dict[str, float]:
    y = frame["is_fraud"].to_numpy(dtype=int)
    alerted = decisions != "approve"
    wave = (frame["fraud_pattern"] == WAVE).to_numpy()
    test = EvalSet(frame.assign(day=frame["timestamp"].dt.floor("D")), y,
                   np.full(len(y), np.nan))
    m = evaluate(test, scores, EvalConfig(k=k, bootstrap=0))
    return {
        "payments": len(y), "fraud": int(y.sum()), "alerts": int(alerted.sum()),
        "alert_precision": float(y[alerted].mean()) if alerted.any() else float("nan"),
        "alert_recall": float(alerted[y == 1].mean()) if y.any() else float("nan"),
        "wave_recall": float(alerted[wave].mean()) if wave.any() else float("nan"),
        "average_precision": m["average_precision"], "auc_roc": m["auc_roc"],
        "card_precision_at_k": m["card_precision_at_k"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--render", type=Path, help="only write the docs from a saved JSON")
    ap.add_argument("--cards", type=int, default=1500)
    ap.add_argument("--history-days", type=int, default=45)
    ap.add_argument("--month-days", type=int, default=30)
    ap.add_argument("--wave-day", type=int, default=15, help="day of the month it starts")
    ap.add_argument("--wave-boost", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=400.0, help="events per second")
    ap.add_argument("--every-days", type=float, default=3.0, help="retraining schedule")
    ap.add_argument("--min-new-labels", type=int, default=100_000)
    ap.add_argument("--test-days", type=float, default=3.0)
    ap.add_argument("--maturity-days", type=float, default=1.0)
    ap.add_argument("--shadow-days", type=float, default=1.5)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--write-docs", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    if args.render:
        write_docs(json.loads(args.render.read_text()))
        return

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=args.history_days + args.month_days)
    month_start = pd.Timestamp(start + timedelta(days=args.history_days))
    wave_start = month_start + pd.Timedelta(days=args.wave_day)
    end = pd.Timestamp(today)
    wave_mid = wave_start + (end - wave_start) / 2

    home = Path(tempfile.mkdtemp(prefix="fraudstream-modelops-"))
    os.environ.update(env_for(home, args))
    settings = Settings()
    registry = Registry(settings.models_dir)
    t_start = time.perf_counter()

    print(f"simulating {args.cards} cards x {args.history_days + args.month_days} days", flush=True)
    traffic = build_traffic(args, start)
    history = traffic[traffic["timestamp"] < month_start]
    month = traffic[traffic["timestamp"] >= month_start].reset_index(drop=True)
    path = home / "history.parquet"
    history.to_parquet(path, index=False)
    print(f"history {len(history):,} payments ({int(history['is_fraud'].sum())} fraud); month "
          f"{len(month):,} ({int(month['is_fraud'].sum())} fraud, "
          f"{int((month['fraud_pattern'] == WAVE).sum())} in the wave)", flush=True)

    from model.api_keys import API_LABEL_SOURCES, create_key

    assert settings.api_keys_file is not None
    # the simulated back office reports the book's analyst verdicts too
    key, _ = create_key(settings.api_keys_file, "gateway", {"score", "labels"},
                        label_sources=set(API_LABEL_SOURCES))
    try:
        services.start_redis(settings)
        services.start_kafka(settings)
        cli("history", "import", str(path))
        print("training the first model (force, on the history only)", flush=True)
        cli("train", "--force", "--no-baselines", "--maturity-days", str(args.maturity_days))
        first = registry.current_version()
        assert first is not None
        cli("history", "backfill-online")
        services.start_stream(settings)
        services.start_api(settings)
        services.start_retrain(settings)
        # The history's own labels were imported with it (those reported by now); the
        # month's are posted as the clock passes them.
        labels = month[month["label_reported_at"].notna()]
        answers: dict[str, dict[str, Any]] = {}
        timeline = []
        sent = 0
        for day in range(args.month_days):
            lo = month_start + pd.Timedelta(days=day)
            hi = lo + pd.Timedelta(days=1)
            events = events_of(month, labels, lo, hi)

            async def go(events: pd.DataFrame = events) -> int:
                async with httpx.AsyncClient(base_url=settings.api_url, timeout=10.0,
                                             headers={"X-API-Key": key}) as client:
                    return await send_day(client, events, args.rate, answers)

            errors = asyncio.run(go())
            sent += int((events["kind"] == "payment").sum())
            status = wait_day(settings, registry, sent, hi.timestamp())
            champion, challenger = registry.current_version(), registry.challenger_version()
            timeline.append({"day": day, "date": lo.date().isoformat(), "sent": sent,
                             "errors": errors, "champion": champion,
                             "challenger": challenger, "worker": status.get("status", "")})
            print(f"  day {day:2d} {lo.date()}  {sent:7,} payments  champion {champion}"
                  f"{'  challenger ' + challenger if challenger else ''}  | "
                  f"{status.get('status', '')[:110]}", flush=True)
    finally:
        services.stop_all(settings)

    result = analyse(settings, registry, month, first, wave_start, wave_mid, end, args)
    result.update(timeline=timeline, runs=registry.runs(), promotions=registry.promotions(),
                  first_model=first, elapsed_s=time.perf_counter() - t_start,
                  machine=machine(), args=vars(args), home=str(home),
                  dates={"month_start": str(month_start), "wave_start": str(wave_start),
                         "wave_mid": str(wave_mid), "end": str(end)})
    print(json.dumps({k: v for k, v in result.items()
                      if k in ("periods", "promotions", "elapsed_s")}, indent=1, default=str))
    if args.write_docs:
        write_docs(result)


def analyse(settings: Settings, registry: Registry, month: pd.DataFrame, first: str,
            wave_start: pd.Timestamp, wave_mid: pd.Timestamp, end: pd.Timestamp,
            args: argparse.Namespace) -> dict[str, Any]:
    store = HistoryStore(settings.history_dir)
    rows = store.query("SELECT * FROM payments WHERE source = 'api'")
    rows = rows.merge(month[["payment_id", "is_fraud", "fraud_pattern", "timestamp"]],
                      on="payment_id")
    rows = rows[rows["score"].notna()].sort_values("timestamp").reset_index(drop=True)
    frozen = Scorer.from_version(registry.get(first))
    frozen_scores = frozen.probabilities(
        rows[[FEATURE_PREFIX + f for f in frozen.feature_names]].to_numpy(dtype=float))
    frozen_decisions = np.array([frozen.thresholds.decide(s) for s in frozen_scores])
    periods = {"before the wave": (rows["timestamp"] < wave_start),
               "wave, first half": (rows["timestamp"] >= wave_start)
               & (rows["timestamp"] < wave_mid),
               "wave, second half": (rows["timestamp"] >= wave_mid)}
    out: dict[str, Any] = {"periods": {}}
    for name, mask in periods.items():
        m = mask.to_numpy()
        sub = rows[m].reset_index(drop=True)
        out["periods"][name] = {
            "live stack": alert_metrics(sub, sub["score"].to_numpy(dtype=float),
                                        sub["decision"].to_numpy(), args.k),
            "model never changed": alert_metrics(sub, frozen_scores[m], frozen_decisions[m],
                                                 args.k),
        }
    rows["frozen_alert"] = frozen_decisions != "approve"
    rows["live_alert"] = rows["decision"].to_numpy() != "approve"
    # pandas-stubs' apply has no include_groups: it reads it as an argument for the lambda
    daily = rows.assign(  # type: ignore[call-overload]
        day=rows["timestamp"].dt.floor("D")).groupby("day").apply(
        lambda d: pd.Series({
            "fraud": int(d["is_fraud"].sum()),
            "wave": int((d["fraud_pattern"] == WAVE).sum()),
            "live_caught": int((d["live_alert"] & d["is_fraud"]).sum()),
            "frozen_caught": int((d["frozen_alert"] & d["is_fraud"]).sum()),
            "live_alerts": int(d["live_alert"].sum()),
            "frozen_alerts": int(d["frozen_alert"].sum())}), include_groups=False)
    out["daily"] = daily.reset_index().assign(day=lambda d: d["day"].astype(str)).to_dict(
        "records")
    return out


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.3f}"
    if isinstance(v, int | np.integer):
        return f"{v:,}"
    return str(v)


def write_docs(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    daily = pd.DataFrame(result["daily"])
    daily["day"] = pd.to_datetime(daily["day"])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    a1.bar(daily["day"], daily["fraud"] - daily["wave"], color="#95a5a6", label="other fraud")
    a1.bar(daily["day"], daily["wave"], bottom=daily["fraud"] - daily["wave"],
           color="#e67e22", label="card-testing wave")
    a1.set_ylabel("fraud payments per day")
    a1.legend(loc="upper left")
    a2.plot(daily["day"], daily["live_caught"] / daily["fraud"].clip(lower=1), "o-",
            color="#2c7fb8", label="live stack (retrains by itself)")
    a2.plot(daily["day"], daily["frozen_caught"] / daily["fraud"].clip(lower=1), "s--",
            color="#c0392b", label="model never changed")
    a2.set_ylabel("share of fraud alerted (review or decline)")
    a2.set_ylim(0, 1)
    for ax in (a1, a2):
        for p in result["promotions"][1:]:
            at = pd.Timestamp(_clock_of(result, p["version"]), unit="s")
            ax.axvline(at, color="#27ae60", linestyle=":")
        ax.axvline(pd.Timestamp(result["dates"]["wave_start"]).tz_localize(None),
                   color="black", linewidth=0.8)
    a2.legend(loc="lower left")
    fig.suptitle("A simulated month with a card-testing wave from mid-month "
                 "(green: promotions by the retrain worker)")
    fig.tight_layout()
    fig.savefig(DOCS / "model-ops.png", dpi=100)
    plt.close(fig)

    lines = [
        "# Model operations: a simulated month through the live stack",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `python benchmarks/model_ops.py` on "
        f"{result['machine']}, in {result['elapsed_s'] / 60:.0f} minutes. Settings: "
        + ", ".join(f"`--{k.replace('_', '-')} {v}`" for k, v in result["args"].items()
                    if k != "write_docs") + ".",
        "",
        "The stack (Kafka, Redis, the stream worker, the API, the retrain worker on the "
        "*events* clock) is brought up in a temporary home. The first model is trained on "
        f"{result['args']['history_days']} days of history in which no card testing "
        "happens. The month is then sent through the API day by day, every label posted "
        "when the simulated clock passes its report time; from day "
        f"{result['args']['wave_day']} a card-testing wave runs at "
        f"{result['args']['wave_boost']:g}x the usual rate. At each day's end the driver "
        "waits until the stream has recorded the day and the retrain worker has ticked at "
        "that clock; the worker alone decides when to retrain, what enters the shadow and "
        "what is promoted.",
        "",
        "*Model never changed*: the first model on the same payments and the same feature "
        "vectors (the history keeps the exact vector of every answer), with its own "
        "thresholds. Ground truth is the simulator's, whether or not a label came.",
        "",
        "## What the retrain worker did",
        "",
        "| run | kind | clock | status | version | decision |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['run'][:15]} | {r.get('kind')} | {str(r.get('clock_iso'))[:16]} | "
                     f"{r.get('status')} | {r.get('version') or ''} | "
                     f"{(r.get('decision') or r.get('error') or '').replace('|', '/')} |")
    lines += ["", "Champion changes:", ""]
    for p in result["promotions"]:
        lines.append(f"- {p['at'][:19]}: **{p['version']}** (was {p['previous']}, by "
                     f"{p['by']}): {p['why']}")
    lines += ["", "## Alerts against the truth", "",
              f"Alerts are review or decline decisions; AP and card precision@{result['args']['k']}"
              " per day rank by score.", "",
              "| period | stack | payments | fraud | alerts | alert precision | alert recall | "
              "wave recall | AP | AUC | card P@k |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for period, both in result["periods"].items():
        for stack, m in both.items():
            lines.append(f"| {period} | {stack} | " + " | ".join(fmt(m[c]) for c in (
                "payments", "fraud", "alerts", "alert_precision", "alert_recall",
                "wave_recall", "average_precision", "auc_roc", "card_precision_at_k")) + " |")
    second = result["periods"].get("wave, second half", {})
    live, frozen = second.get("live stack"), second.get("model never changed")
    if live and frozen:
        lines += ["", f"On the wave's second half the live stack's alerts were "
                  f"{live['alert_precision']:.0%} fraud against {frozen['alert_precision']:.0%}"
                  f" for the model that never changed, and caught {live['alert_recall']:.0%} "
                  f"of the fraud against {frozen['alert_recall']:.0%} (average precision "
                  f"{live['average_precision']:.3f} against {frozen['average_precision']:.3f})."]
    lines += [
        "",
        "Reading the runs: the gate compares each candidate with the champion on a test "
        "window the champion may have been fitted on (the first model was refitted up to "
        "the history's end), which favours the champion; `train` warns of it, and it is "
        "why the early gains are negative. The candidate that passed was the first whose "
        "training window reached into the wave. Its shadow comparison waited for matured "
        "payments with enough fraud among them (`FRAUDSTREAM_MIN_SHADOW_FRAUD`, here 10) "
        "before it promoted.",
        "",
        "Reproduce: `python benchmarks/model_ops.py` (about 20 minutes); "
        "`--no-write-docs` to look without touching this page. The raw numbers are in "
        "[model-ops.json](model-ops.json).",
    ]
    lines += ["", "![the month](model-ops.png)", ""]
    (DOCS / "model-ops.md").write_text("\n".join(lines))
    (DOCS / "model-ops.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {DOCS / 'model-ops.md'}")


def _clock_of(result: dict[str, Any], version: str) -> float:
    """When (simulated) a version was promoted: the clock of the worker run that did it."""
    for r in result["runs"]:
        if r.get("kind") == "shadow" and r.get("version") == version and \
                str(r.get("decision", "")).startswith("promoted"):
            return float(r["clock"])
    return float("nan")


if __name__ == "__main__":
    main()
