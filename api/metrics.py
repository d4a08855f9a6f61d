"""Prometheus metrics of the scoring service.

With several API processes (``FRAUDSTREAM_API_WORKERS``) each writes its own values under
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up: counters and histograms sum;
a gauge says how (``multiprocess_mode``): the model loaded per live process, the worst
lag of any live process, the queue as any live process read it, the PSI most recently
measured by any live process (a process that exits cleanly takes its gauges with it).
"""

import functools
import os

from prometheus_client import Counter, Gauge, Histogram

SCORE_LATENCY = Histogram(
    "fraudstream_score_seconds",
    "Time to score one payment, request parsed to response built",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DECISIONS = Counter("fraudstream_decisions_total", "Decisions given", ["decision", "degraded"])
PUBLISH_FAILURES = Counter(
    "fraudstream_publish_failures_total", "Scored-payment events Kafka did not accept"
)
MODEL_RELOADS = Counter("fraudstream_model_reloads_total", "Models loaded", ["outcome"])
MODEL_INFO = Gauge("fraudstream_model_loaded", "1 for the model version in use", ["version"],
                   multiprocess_mode="liveall")
SPOOLED = Counter("fraudstream_spooled_total", "Scored payments written to the local spool")
HELD_IN_MEMORY = Gauge("fraudstream_held_in_memory",
                       "Scored payments neither Kafka nor the spool took, held in memory",
                       multiprocess_mode="livesum")
EVENTS_LOST = Counter("fraudstream_events_lost_total",
                      "Answered payments lost: Kafka failed after taking them, the spool "
                      "refused them and the memory's room was spent")
REPLAYS = Counter("fraudstream_replays_total", "Retried payment_ids answered from the record")
OVERLOAD_SHED = Counter("fraudstream_overload_shed_total",
                        "Payments answered degraded at once, without the features: shed by "
                        "admission control, or past their features' share of the deadline")
QUEUE_DELAY = Histogram(
    "fraudstream_queue_delay_seconds",
    "Time a payment waited in the API, first byte to scoring (what admission control sheds on)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

# ---- drift, freshness and the review queue (api.monitor) ----
SCORES = Histogram(
    "fraudstream_score", "Model scores given (champion)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
)
PSI = Gauge("fraudstream_psi", "Population stability index against the model's training "
            "window, over this process's recent payments", ["input"],
            multiprocess_mode="livemostrecent")
STREAM_LAG = Gauge("fraudstream_stream_lag_seconds",
                   "How far the stream worker is behind the payments this API scored",
                   multiprocess_mode="livemax")
LABEL_LAG = Gauge("fraudstream_label_lag_seconds", "Newest payment minus newest label applied "
                  "to the features (event time)", multiprocess_mode="livemax")
LABEL_DELAY = Gauge("fraudstream_label_delay_labels", "Labels applied that arrived within "
                    "`le` days of their payment (cumulative)", ["le"], multiprocess_mode="livemax")
REVIEW_QUEUE_SIZE = Gauge("fraudstream_review_queue_size", "Review cases not decided yet",
                          multiprocess_mode="livemax")
REVIEW_QUEUE_AGE = Gauge("fraudstream_review_queue_oldest_seconds",
                         "How long the oldest open review case has waited",
                         multiprocess_mode="livemax")
REVIEW_VERDICTS = Counter("fraudstream_review_verdicts_total", "Analysts' verdicts given",
                          ["verdict"])
STALE_ANSWERS = Counter("fraudstream_stale_answers_total",
                        "Answers given while the inputs were stale")


def forget(gauge: Gauge, *labels: str) -> None:
    """A labelled series that no longer means anything (a feature the new model lacks, a
    PSI not measured against the new model yet): removed, or in multiprocess mode (where
    prometheus_client cannot remove one) set to NaN, the newest value winning."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        gauge.labels(*labels).set(float("nan"))
    else:
        gauge.remove(*labels)


@functools.cache
def decided(decision: str, degraded: bool) -> Counter:
    """The decisions counter of one (decision, degraded): looked up once, not per payment
    (``labels`` formats and hashes its values under a lock on every call)."""
    return DECISIONS.labels(decision, str(degraded).lower())

# ---- limits (api.throttle) ----
RATE_LIMITED = Counter("fraudstream_rate_limited_total",
                       "Requests refused (429) by their key's rate limit", ["key"])
RATE_LIMIT_FALLBACK = Counter(
    "fraudstream_rate_limit_local_total",
    "Leases taken from this process's own bucket because Redis did not answer")
