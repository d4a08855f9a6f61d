"""Settings shared by every process, read from ``FRAUDSTREAM_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAUDSTREAM_", env_file=None, extra="ignore")

    # Where everything local lives: history, registry, Kafka and Redis data, logs, pids.
    home: Path = Path("var")
    data_dir: Path | None = None
    registry_dir: Path | None = None

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_partitions: int = Field(default=2, ge=1)
    # Copies of each topic, and how many must hold a write before it is acknowledged (the
    # API's producer waits for acks=all). Unset: three and two from three brokers up (one
    # broker may die without losing or refusing a write), else one and one. The brokers
    # are those ``kafka_bootstrap`` lists (comma-separated); started locally, one each.
    kafka_replication_factor: int | None = Field(default=None, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_pool_size: int = Field(default=32, ge=1)
    # ``redis_url`` names any node of a Redis Cluster; keys are laid out for it (see
    # ``stores.online_features``). Started locally, the cluster has this many primaries.
    redis_cluster: bool = False
    redis_cluster_nodes: int = Field(default=3, ge=3)

    # How long the API's producer waits to fill a batch (ms): throughput against delay.
    # How long the API's producer gathers scored payments into one request. Nothing waits
    # on it (the answer has gone, the spool holds the event), and each request costs the
    # broker and the stream worker CPU: 50 ms took the broker from 2.1 to 0.4 ms of CPU
    # per payment at 200/s, against 5 ms.
    kafka_linger_ms: int = Field(default=50, ge=0)
    # CPU niceness of the processes off the scoring path (Kafka broker, stream worker) when
    # this project starts them: under contention the API and Redis are served first.
    background_nice: int = Field(default=10, ge=0, le=19)

    topic_scored: str = "fraudstream.payments.scored"
    topic_labels: str = "fraudstream.labels"
    topic_dead_letters: str = "fraudstream.dead-letters"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = "http://127.0.0.1:8000"
    # API processes behind the one port (uvicorn workers), each with its own hot reload,
    # rules and lists; /metrics adds them up (prometheus multiprocess mode).
    api_workers: int = Field(default=1, ge=1)
    # How often the API checks the registry for a newly promoted model.
    model_poll_seconds: float = Field(default=2.0, gt=0)

    # Authentication: API keys (see `fraudstream keys create`), stored as sha256 in this file.
    auth_enabled: bool = True
    api_keys_file: Path | None = None
    signature_tolerance_seconds: float = Field(default=300.0, gt=0)
    # How often each API process re-reads the key file (created, revoked, rotated keys).
    keys_poll_seconds: float = Field(default=2.0, gt=0)
    # /metrics without a key (else a key with the ``metrics`` scope), and the OpenAPI pages
    # (/docs, /redoc, /openapi.json) at all: both closed to anonymous callers by default.
    metrics_public: bool = False
    docs_public: bool = False
    # Each key's requests a second, across the API processes, and its burst, unless the key
    # sets its own (``fraudstream keys limit``); 0 turns the default limit off.
    rate_limit_per_second: float = Field(default=2000.0, ge=0, allow_inf_nan=False)
    rate_limit_burst: int = Field(default=4000, ge=1)
    # The answer always comes within the caller's X-Deadline-Ms, or this by default.
    default_deadline_ms: int = Field(default=250, gt=0)
    # Admission control (``api.admission``): while a queue stands in an API process, a
    # payment that waited more than this share of its deadline is answered degraded at once.
    # Off (0) by default: on this design it did not keep the deadline at twice the rate one
    # process sustains (docs/benchmarks-overload.md). A payment past its features' share of
    # the deadline is answered at once either way.
    shed_queue_share: float = Field(default=0.0, ge=0, le=0.6, allow_inf_nan=False)
    rules_poll_seconds: float = Field(default=0.5, gt=0)
    spool_dir: Path | None = None
    # The most the API's spool holds on disk (scored payments and labels, each), and how
    # many scored payments it keeps in memory when Kafka and the spool both refuse them.
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    spool_memory_events: int = Field(default=50_000, ge=0)
    # The key of the pseudonyms that replace a payment's e-mail and IP address at the edge
    # (``model.pseudonym``: HMAC-SHA256). Every process that scores or imports payments
    # must use the same one, or the same e-mail gets another token. Unset: the key in
    # ``pii_key_file``, generated there (mode 0600) on first use, for a local install.
    pii_key: SecretStr | None = None  # at least 16 characters (checked by the loader)
    pii_key_file: Path | None = None

    # The team's own features (``model.catalogue_file``), added to the default catalogue;
    # unset: ``features.toml`` in the home, if there is one. Redis commands per payment
    # the whole catalogue may cost (``fraudstream features check`` estimates it).
    features_file: Path | None = None
    features_cost_budget: int = Field(default=400, ge=1)
    # The API keeps the catalogue's state and serves its features on every payment, so a
    # model trained on them can be served. Off by default until its cost is within budget:
    # measured 2026-12-02, a payment with every field costs about 3x the Redis CPU of
    # today's 25 (docs/features.md).
    features_online: bool = False

    # Event times further ahead of this server's clock are refused (clock skew allowance).
    max_future_seconds: float = Field(default=300.0, ge=0)
    # How far back a payment's or label's time may be. A gateway scoring in real time sees
    # payments seconds old; the default leaves room for a year's replay through the API
    # (``fraudstream replay``) and caps the history's day partitions a caller can open.
    # A real-time-only installation sets its own late-arrival bound (a few days).
    max_past_days: float = Field(default=400.0, gt=0, allow_inf_nan=False)

    # Answer when no model is loaded yet or a dependency fails; "review" is the safe default.
    degraded_decision: Literal["approve", "review"] = "review"
    # A card with a fraud confirmed in the last 30 days: at least this decision ("none":
    # the model and the rules decide, the confirmed fraud being one of the model's features).
    known_fraud_card_action: Literal["none", "review", "decline"] = "none"

    stream_id: str = "fraudstream"
    stream_web_port: int = 6066
    # The stream buffers history rows and writes one Parquet file per flush.
    history_flush_rows: int = Field(default=500, ge=1)
    history_flush_seconds: float = Field(default=1.0, gt=0)
    # Payments that may have labels waiting for them (labels that reached the stream
    # before their payment, or for payment_ids never scored): past it, a label for another
    # unknown payment goes to the history and the dead-letter topic, not the queue.
    max_waiting_label_payments: int = Field(default=100_000, ge=1)
    # How often the stream worker's leader copies the audit trails into the history.
    audit_copy_seconds: float = Field(default=5.0, gt=0)

    # ---- model operations ----
    # The retrain worker: a run when this many hours passed since the last one, or when
    # this many labels were reported since; a challenger in shadow at least
    # ``shadow_days`` (and at most ``max_shadow_days``) before it is promoted (or retired).
    retrain_every_hours: float = Field(default=24.0, gt=0)
    retrain_min_new_labels: int = Field(default=200, ge=1)
    retrain_check_seconds: float = Field(default=60.0, gt=0)
    retrain_clock: Literal["wall", "events"] = "wall"
    retrain_test_days: float = Field(default=7.0, gt=0)
    retrain_baselines: bool = True
    shadow_days: float = Field(default=3.0, ge=0)
    max_shadow_days: float = Field(default=14.0, gt=0)
    min_shadow_fraud: int = Field(default=20, ge=1)
    maturity_days: float | None = Field(default=None, ge=0)

    # Freshness of the inputs: past these, an answer is marked stale (and /healthz amber);
    # ``stale_action = "review"`` then sends what would have been approved to review.
    stale_stream_lag_seconds: float = Field(default=60.0, gt=0)
    stale_label_lag_days: float = Field(default=7.0, gt=0)
    stale_action: Literal["none", "review"] = "none"
    # /healthz turns amber past these: a PSI of the score or a feature against the
    # training window, and the oldest case waiting in the review queue.
    drift_psi_amber: float = Field(default=0.25, gt=0)
    review_age_amber_hours: float = Field(default=24.0, gt=0)
    # Payments the API keeps (per process) to measure drift on.
    drift_window: int = Field(default=20_000, ge=100)
    # How long an analyst's claim on a review case holds.
    review_claim_seconds: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _derive_dirs(self) -> Settings:
        if self.data_dir is None:
            self.data_dir = self.home / "history"
        if self.registry_dir is None:
            self.registry_dir = self.home / "registry"
        if self.api_keys_file is None:
            self.api_keys_file = self.home / "secrets" / "api-keys.json"
        if self.spool_dir is None:
            self.spool_dir = self.home / "spool"
        if self.pii_key_file is None:
            self.pii_key_file = self.home / "secrets" / "pii.key"
        if self.features_file is None:
            self.features_file = self.home / "features.toml"
        return self

    @property
    def kafka_brokers(self) -> list[str]:
        return [a.strip() for a in self.kafka_bootstrap.split(",") if a.strip()]

    @property
    def kafka_replication(self) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of the topics."""
        factor = self.kafka_replication_factor or min(3, len(self.kafka_brokers))
        min_isr = self.kafka_min_insync_replicas or (2 if factor >= 3 else 1)
        return factor, min_isr

    @property
    def history_dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def models_dir(self) -> Path:
        assert self.registry_dir is not None
        return self.registry_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
