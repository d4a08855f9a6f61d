"""The history store: append-only Parquet datasets partitioned by day, read with DuckDB.

Layout under the data directory::

    payments/day=YYYY-MM-DD/part-*.parquet   scored (or imported) payments + feature vectors
    labels/day=YYYY-MM-DD/part-*.parquet     fraud labels, partitioned by the day reported

Files are written whole under a temporary name and renamed, so a reader never sees a
half-written file. Writers may repeat a row after a crash (at-least-once delivery); the
``payments`` and ``labels`` views drop such repeats, so each payment is read exactly once.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.features import FEATURE_NAMES
from model.labels import fraud_spells_sql, latest_label_sql
from model.schemas import PAYMENT_DETAILS, Label, ScoredPayment

FEATURE_PREFIX = "f_"
_TS = pa.timestamp("us", tz="UTC")
# PAYMENT_DETAILS (``model.schemas``): one string column each (``ip`` and ``email`` hold
# their pseudonyms, never the raw values); files written before they existed read null.

PAYMENT_SCHEMA = pa.schema(
    [
        ("payment_id", pa.string()),
        ("ts", _TS),
        ("card_id", pa.string()),
        ("terminal_id", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("merchant_category", pa.string()),
        *((name, pa.string()) for name in PAYMENT_DETAILS),
        ("score", pa.float64()),
        ("decision", pa.string()),
        ("model_version", pa.string()),
        ("degraded", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("scored_at", _TS),
        ("source", pa.string()),
        # The challenger's score on the same features, while one runs in shadow.
        ("shadow_score", pa.float64()),
        ("shadow_version", pa.string()),
        *((FEATURE_PREFIX + f, pa.float64()) for f in FEATURE_NAMES),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        ("payment_id", pa.string()),
        ("is_fraud", pa.bool_()),
        ("source", pa.string()),
        ("reported_at", _TS),
        ("received_at", _TS),
        ("analyst", pa.string()),
        ("note", pa.string()),
    ]
)

# The audit trails' append-only copy (``stores.audit_archive``): one row per stream entry.
AUDIT_SCHEMA = pa.schema(
    [
        ("trail", pa.string()),
        ("entry_id", pa.string()),
        ("logged_at", _TS),
        ("action", pa.string()),
        ("actor", pa.string()),
        ("entry", pa.string()),
    ]
)


def _day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def _day_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """UTC day of each timestamp as numpy days since the epoch (for grouping a batch)."""
    micros: np.ndarray = column.cast(_TS).cast(pa.int64()).to_numpy()
    return (micros // 86_400_000_000).astype("datetime64[D]")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, others cast."""
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names
        else pa.nulls(table.num_rows, type=f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def new_part_name() -> str:
    """A part file name no other writer will use (time first: parts list in write order)."""
    return f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"


def _part_paths(directory: Path, name: str | None = None) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    name = name or new_part_name()
    return directory / f".{name}.tmp", directory / name


def _fsync_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


class _PartWriter:
    """One part file written in pieces under a temporary name, renamed when finished."""

    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self.tmp, self.final = _part_paths(directory)
        self._writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def finish(self) -> None:
        self._writer.close()
        _fsync_rename(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class HistoryStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def payments_dir(self) -> Path:
        return self.root / "payments"

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    # ---- writing -------------------------------------------------------------------
    # With a ``part`` name, each day's rows go to ``day=.../<part>``, so that whoever
    # promised the rows to that part can tell afterwards whether they were written
    # (``holds_payment``, ``holds_label``): the stream's exactly-once records.
    def append_payments(self, rows: Iterable[Mapping[str, Any]], part: str | None = None) -> int:
        return self._append(self.payments_dir, PAYMENT_SCHEMA, rows, "ts", part)

    def append_labels(self, rows: Iterable[Mapping[str, Any]], part: str | None = None) -> int:
        return self._append(self.labels_dir, LABEL_SCHEMA, rows, "reported_at", part)

    def append_audit(self, rows: Iterable[Mapping[str, Any]]) -> int:
        return self._append(self.audit_dir, AUDIT_SCHEMA, rows, "logged_at")

    def holds_payment(self, row: Mapping[str, Any], part: str) -> bool:
        """Is ``row`` (a payment row) in the history, given the part it was promised to?"""
        return (self.payments_dir / f"day={_day(row['ts'])}" / part).exists()

    def holds_label(self, row: Mapping[str, Any], part: str) -> bool:
        return (self.labels_dir / f"day={_day(row['reported_at'])}" / part).exists()

    def _append(
        self, base: Path, schema: pa.Schema, rows: Iterable[Mapping[str, Any]], day_of: str,
        part: str | None = None,
    ) -> int:
        by_day: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            by_day[_day(row[day_of])].append(row)
        written = 0
        for day, day_rows in by_day.items():
            # Column by column: no dict per row (the stream worker writes every payment).
            table = pa.Table.from_pydict(
                {name: [r.get(name) for r in day_rows] for name in schema.names}, schema=schema
            )
            self._write_table(base / f"day={day}", table, part)
            written += len(day_rows)
        return written

    def append_payment_frame(self, frame: pd.DataFrame) -> int:
        """Bulk append (history import): ``frame`` holds PAYMENT_SCHEMA columns, any subset."""
        return self._append_frame(self.payments_dir, PAYMENT_SCHEMA, frame, "ts")

    def append_label_frame(self, frame: pd.DataFrame) -> int:
        return self._append_frame(self.labels_dir, LABEL_SCHEMA, frame, "reported_at")

    def _append_frame(
        self, base: Path, schema: pa.Schema, frame: pd.DataFrame, day_of: str
    ) -> int:
        if frame.empty:
            return 0
        days = pd.to_datetime(frame[day_of], utc=True).dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            arrays = [
                pa.array(part[f.name], type=f.type, from_pandas=True)
                if f.name in part.columns
                else pa.nulls(len(part), type=f.type)
                for f in schema
            ]
            self._write_table(base / f"day={day}", pa.Table.from_arrays(arrays, schema=schema))
        return len(frame)

    def append_payment_batches(
        self, batches: Iterable[pa.RecordBatch], progress: Callable[[int], None] | None = None
    ) -> int:
        """Bulk append from a stream of batches (PAYMENT_SCHEMA columns, any subset).

        Memory stays at one batch whatever the stream's length. Sorted by ``ts``, each day
        gets one part file; unsorted input is written correctly, in more parts.
        """
        return self._append_batches(self.payments_dir, PAYMENT_SCHEMA, batches, "ts", progress)

    def append_label_batches(
        self, batches: Iterable[pa.RecordBatch], progress: Callable[[int], None] | None = None
    ) -> int:
        return self._append_batches(
            self.labels_dir, LABEL_SCHEMA, batches, "reported_at", progress
        )

    def _append_batches(
        self,
        base: Path,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        day_of: str,
        progress: Callable[[int], None] | None,
    ) -> int:
        open_days: dict[str, _PartWriter] = {}
        written = 0
        try:
            for batch in batches:
                table = _conform(pa.Table.from_batches([batch]), schema)
                days = _day_numbers(table.column(day_of))
                present = {str(d): d for d in np.unique(days).astype("datetime64[D]")}
                # A day absent from this batch is finished (renamed into place) at once, so
                # sorted input keeps one file open and unsorted input a bounded number.
                for day in [d for d in open_days if d not in present]:
                    open_days.pop(day).finish()
                for day, number in present.items():
                    part = table if len(present) == 1 else table.filter(days == number)
                    if day not in open_days:
                        open_days[day] = _PartWriter(base / f"day={day}", schema)
                    open_days[day].write(part)
                written += table.num_rows
                if progress is not None:
                    progress(table.num_rows)
            while open_days:
                open_days.popitem()[1].finish()
        except BaseException:
            for writer in open_days.values():
                writer.abort()
            raise
        return written

    @staticmethod
    def _write_table(directory: Path, table: pa.Table, part: str | None = None) -> None:
        tmp, final = _part_paths(directory, part)
        pq.write_table(table, tmp)
        _fsync_rename(tmp, final)

    # ---- reading -------------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the history's views.

        - ``payments``: one row per payment_id, its last API scoring (repeats from
          redelivery dropped; a retry scored anew replaces the scoring it follows)
        - ``labels``: every distinct label event
        - ``label_state``: each labelled payment's deciding label (``model.labels``)
        - ``fraud_spells``: when each payment was known as fraud (``model.labels``)
        - ``audit``: every entry of the audit trails, once (``stores.audit_archive``)
        - ``payments_raw`` / ``labels_raw`` / ``audit_raw``: the files as written
        """
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for name, base, schema in (
            ("payments_raw", self.payments_dir, PAYMENT_SCHEMA),
            ("labels_raw", self.labels_dir, LABEL_SCHEMA),
            ("audit_raw", self.audit_dir, AUDIT_SCHEMA),
        ):
            # Unioned by name with the empty schema: files written before a column was
            # added read it as null, and every view sees the schema's columns.
            con.register(f"{name}_empty", schema.empty_table())
            if any(base.glob("day=*/*.parquet")):
                glob = str(base / "day=*" / "*.parquet")
                con.execute(
                    f"CREATE VIEW {name} AS SELECT * FROM {name}_empty UNION ALL BY NAME "
                    f"SELECT * EXCLUDE (day) FROM read_parquet("
                    f"'{glob}', hive_partitioning = true, union_by_name = true)"
                )
            else:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_empty")
        # An API-scored row wins over an imported one. Of two API scorings (a retry
        # scored anew after its API process died: ``stream.recording``) the last, which
        # the gateway acted on; of imported rows, the first.
        con.execute(
            "CREATE VIEW payments AS SELECT * FROM payments_raw QUALIFY row_number() OVER ("
            "PARTITION BY payment_id ORDER BY (source = 'api') DESC, "
            "CASE WHEN source = 'api' THEN -epoch_us(scored_at) ELSE epoch_us(scored_at) END "
            "NULLS LAST) = 1"
        )
        con.execute(
            "CREATE VIEW labels AS SELECT payment_id, is_fraud, source, reported_at, "
            "min(received_at) AS received_at, any_value(analyst) AS analyst, "
            "any_value(note) AS note FROM labels_raw "
            "GROUP BY payment_id, is_fraud, source, reported_at"
        )
        con.execute(
            "CREATE VIEW audit AS SELECT * FROM audit_raw QUALIFY row_number() OVER ("
            "PARTITION BY trail, entry_id) = 1"
        )
        con.execute(f"CREATE VIEW label_state AS {latest_label_sql('labels')}")
        con.execute(f"CREATE VIEW fraud_spells AS {fraud_spells_sql('labels')}")
        return con

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        con = self.connect()
        try:
            return con.execute(sql, params or []).df()
        finally:
            con.close()

    def payment_ids(self) -> set[str]:
        return set(self.query("SELECT payment_id FROM payments")["payment_id"])

    def daily_stats(self) -> pd.DataFrame:
        """Per day: payments, those scored by the API, fraud (by each payment's latest
        label) and declined."""
        return self.query(
            "SELECT strftime(p.ts, '%Y-%m-%d') AS day, count(*) AS payments, "
            "count(*) FILTER (WHERE p.source = 'api') AS scored, "
            "count(l.payment_id) AS fraud_now, "
            "count(*) FILTER (WHERE p.decision = 'decline') AS declined "
            "FROM payments p LEFT JOIN (SELECT payment_id FROM label_state WHERE is_fraud) l "
            "USING (payment_id) GROUP BY day ORDER BY day"
        )


def scored_row(event: ScoredPayment) -> dict[str, Any]:
    """The history row of a scored payment: the payment, outcome and exact features."""
    p = event.payment
    row: dict[str, Any] = {
        "payment_id": p.payment_id,
        "ts": p.timestamp,
        "card_id": p.card_id,
        "terminal_id": p.terminal_id,
        "amount": p.amount,
        "currency": p.currency,
        "country": p.country,
        "channel": p.channel,
        "merchant_category": p.merchant_category,
        **{name: getattr(p, name) for name in PAYMENT_DETAILS},
        "score": event.score,
        "decision": event.decision,
        "model_version": event.model_version,
        "degraded": event.degraded,
        "reasons": event.reasons,
        "scored_at": event.scored_at,
        "source": "api",
    }
    for name, value in event.features.items():
        row[FEATURE_PREFIX + name] = value
    return row


def label_row(label: Label, received_at: datetime) -> dict[str, Any]:
    return {
        "payment_id": label.payment_id,
        "is_fraud": label.is_fraud,
        "source": label.source,
        "reported_at": label.reported_at,
        "received_at": received_at,
        "analyst": label.analyst,
        "note": label.note,
    }
