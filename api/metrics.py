"""Prometheus metrics of the scoring service."""

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
MODEL_INFO = Gauge("fraudstream_model_loaded", "1 for the model version in use", ["version"])
SPOOLED = Counter("fraudstream_spooled_total", "Scored payments written to the local spool")
REPLAYS = Counter("fraudstream_replays_total", "Retried payment_ids answered from the record")
