"""``fraudstream monitor``: the API's drift and freshness metrics, read from ``/metrics`` and
``/healthz``, as tables and a plot."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from model.drift import ACT, WATCH


@dataclass
class Snapshot:
    health: dict[str, object]
    decisions: dict[str, float] = field(default_factory=dict)  # decision -> count
    psi: dict[str, float] = field(default_factory=dict)
    score_buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    label_delay: list[tuple[str, float]] = field(default_factory=list)  # (le days, cumulative)
    gauges: dict[str, float] = field(default_factory=dict)


def scrape(client: httpx.Client) -> Snapshot:
    """One reading of the API (``client`` has its base URL). Raises httpx.HTTPError if it
    does not answer."""
    health = client.get("/healthz").raise_for_status().json()
    text = client.get("/metrics").raise_for_status().text
    snap = Snapshot(health)
    decisions: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "fraudstream_decisions_total":
                decisions[labels["decision"]] += value
            elif name == "fraudstream_psi" and not math.isnan(value):
                snap.psi[labels["input"]] = value
            elif name == "fraudstream_score_bucket":
                snap.score_buckets.append((float(labels["le"]), value))
            elif name == "fraudstream_label_delay_labels":
                snap.label_delay.append((labels["le"], value))
            elif name in ("fraudstream_stream_lag_seconds", "fraudstream_label_lag_seconds",
                          "fraudstream_review_queue_size",
                          "fraudstream_review_queue_oldest_seconds"):
                snap.gauges[name.removeprefix("fraudstream_")] = value
    snap.decisions = dict(decisions)
    snap.label_delay.sort(key=lambda kv: math.inf if kv[0] == "inf" else float(kv[0]))
    return snap


def psi_reading(value: float) -> str:
    return "act" if value > ACT else "watch" if value > WATCH else "stable"


def plot(snap: Snapshot, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    items = sorted(snap.psi.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items],
            color=["#c0392b" if v > ACT else "#e67e22" if v > WATCH else "#27ae60"
                   for _, v in items])
    for x in (WATCH, ACT):
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title("PSI against the training window")
    ax.tick_params(axis="y", labelsize=7)

    ax = axes[1]
    buckets = sorted(snap.score_buckets)
    if buckets:
        edges = [0.0] + [le for le, _ in buckets if le != math.inf]
        counts = [c for _, c in buckets]
        per_bin = [counts[0]] + [b - a for a, b in itertools.pairwise(counts)]
        ax.bar(range(len(edges) - 1), per_bin[:len(edges) - 1], color="#2c7fb8")
        ax.set_xticks(range(len(edges) - 1),
                      [f"≤{e:g}" for e in edges[1:]], rotation=45, fontsize=7)
        ax.set_yscale("symlog")
    ax.set_title("scores given (this API process)")

    ax = axes[2]
    if snap.label_delay:
        total = snap.label_delay[-1][1] or 1.0
        ax.step(range(len(snap.label_delay)), [c / total for _, c in snap.label_delay],
                where="post", color="#8e44ad")
        ax.set_xticks(range(len(snap.label_delay)),
                      [f"≤{le}" for le, _ in snap.label_delay], fontsize=7)
        ax.set_ylim(0, 1.05)
    ax.set_title("labels applied within N days of the payment")
    fig.suptitle(f"fraudstream monitor: {snap.health.get('status')} "
                 f"(model {snap.health.get('model_version')})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
