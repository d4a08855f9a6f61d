"""``fraudstream history import``: bootstrap the history from a bank's own records.

The file (CSV or Parquet) has one row per past payment. Columns, after ``--map`` renames:

| column              | required | meaning                                                   |
|---------------------|----------|-----------------------------------------------------------|
| payment_id          | yes      | unique id                                                 |
| timestamp           | yes      | ISO 8601 or epoch seconds; naive values are read as UTC   |
| card_id             | yes      | card token (a raw card number makes the import fail)      |
| terminal_id         | yes      | terminal or merchant id                                   |
| amount              | yes      | > 0                                                       |
| currency            | no       | ISO 4217, default EUR                                     |
| country, channel, merchant_category | no | as in the scoring API                          |
| is_fraud            | no       | true/false/1/0; missing means no label                    |
| label_reported_at   | no       | when the label became known; default: timestamp plus     |
|                     |          | --label-delay-days                                        |
| label_source        | no       | chargeback, analyst, customer_report; default import      |

The whole file is checked before anything is written: a bad file changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.history import HistoryStore
from model.schemas import looks_like_pan

REQUIRED = ("payment_id", "timestamp", "card_id", "terminal_id", "amount")
OPTIONAL = ("currency", "country", "channel", "merchant_category", "is_fraud",
            "label_reported_at", "label_source")
LABEL_SOURCES = {"chargeback", "analyst", "customer_report", "import"}
CHANNELS = {"pos", "ecom", "moto", "atm"}


class ImportError_(ValueError):
    """The file cannot be imported; the message names the column and rows at fault."""


@dataclass(frozen=True)
class ImportResult:
    payments: int
    labels: int
    fraud: int
    future_labels: int
    first: pd.Timestamp
    last: pd.Timestamp


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ImportError_(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".gz"):
        return pd.read_csv(path, dtype={"card_id": str, "terminal_id": str,
                                        "payment_id": str, "merchant_category": str})
    raise ImportError_(f"{path}: unknown format {suffix!r}; use .csv or .parquet")


def _rows(mask: pd.Series) -> str:
    bad = np.flatnonzero(mask.to_numpy())
    shown = ", ".join(str(i + 1) for i in bad[:5])
    return f"{len(bad)} row(s), e.g. data row {shown}"


def _timestamps(series: pd.Series, column: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series):
        parsed = pd.to_datetime(series, unit="s", utc=True, errors="coerce")
    else:
        parsed = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & series.notna()
    if bad.any():
        raise ImportError_(f"column {column!r}: unreadable timestamp in {_rows(bad)}")
    return parsed


def prepare(raw: pd.DataFrame, mapping: dict[str, str] | None = None,
            label_delay_days: float = 14.0) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Validate and convert: (payments, labels, labels left out as reported in the future)."""
    df = raw.rename(columns=mapping or {})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ImportError_(
            f"missing required column(s) {missing}; found {list(df.columns)}. "
            "Rename with --map SOURCE=TARGET"
        )
    for col in REQUIRED:
        if df[col].isna().any():
            raise ImportError_(f"column {col!r}: empty value in {_rows(df[col].isna())}")
    ids = df["payment_id"].astype(str)
    dup = ids.duplicated()
    if dup.any():
        raise ImportError_(f"column 'payment_id': duplicate ids in {_rows(dup)}")
    amount = pd.to_numeric(df["amount"], errors="coerce")
    if (amount.isna() | (amount <= 0)).any():
        raise ImportError_(f"column 'amount': not a positive number in "
                           f"{_rows(amount.isna() | (amount <= 0))}")
    cards = df["card_id"].astype(str)
    pan = cards.map(looks_like_pan)
    if pan.any():
        raise ImportError_(f"column 'card_id': raw card numbers (PAN) in {_rows(pan)}; "
                           "tokenise cards before import")
    ts = _timestamps(df["timestamp"], "timestamp")
    channel = df["channel"] if "channel" in df.columns else pd.Series(None, index=df.index)
    bad_channel = channel.notna() & ~channel.isin(CHANNELS)
    if bad_channel.any():
        raise ImportError_(f"column 'channel': not one of {sorted(CHANNELS)} in "
                           f"{_rows(bad_channel)}")

    def opt(col: str, default: object = None) -> pd.Series:
        return df[col] if col in df.columns else pd.Series(default, index=df.index)

    payments = pd.DataFrame(
        {
            "payment_id": ids,
            "ts": ts,
            "card_id": cards,
            "terminal_id": df["terminal_id"].astype(str),
            "amount": amount.astype(float),
            "currency": opt("currency", "EUR").fillna("EUR").astype(str),
            "country": opt("country"),
            "channel": channel,
            "merchant_category": opt("merchant_category"),
            "source": "import",
        }
    )

    labels = pd.DataFrame(columns=["payment_id", "is_fraud", "source", "reported_at",
                                   "received_at"])
    future = pd.Series(False, index=df.index)
    if "is_fraud" in df.columns:
        flag = df["is_fraud"].map(
            lambda v: None if pd.isna(v) else str(v).strip().lower() in {"1", "true", "t", "yes"}
        )
        unknown = df["is_fraud"].notna() & ~df["is_fraud"].astype(str).str.strip().str.lower()\
            .isin({"1", "0", "true", "false", "t", "f", "yes", "no", "1.0", "0.0"})
        if unknown.any():
            raise ImportError_(f"column 'is_fraud': not true/false in {_rows(unknown)}")
        flag = flag.map(lambda v: v is True)
        reported = (
            _timestamps(df["label_reported_at"], "label_reported_at")
            if "label_reported_at" in df.columns
            else pd.Series(pd.NaT, index=df.index, dtype="datetime64[us, UTC]")
        )
        # A non-fraud row only becomes a label when the file says when it was confirmed;
        # otherwise "no fraud reported" is what it already means.
        keep = flag | (df["is_fraud"].notna() & reported.notna())
        reported = reported.fillna(ts + pd.to_timedelta(label_delay_days, unit="D"))
        # A label "reported" after now is not known yet (a simulated file has them); it is
        # left out here and can arrive later through the label endpoint.
        future = keep & (reported > pd.Timestamp.now(tz="UTC"))
        keep &= ~future
        early = keep & (reported < ts)
        if early.any():
            raise ImportError_(f"column 'label_reported_at': before the payment in {_rows(early)}")
        source = opt("label_source", "import").fillna("import").astype(str)
        bad_source = keep & ~source.isin(LABEL_SOURCES)
        if bad_source.any():
            raise ImportError_(f"column 'label_source': not one of {sorted(LABEL_SOURCES)} "
                               f"in {_rows(bad_source)}")
        labels = pd.DataFrame(
            {
                "payment_id": ids[keep],
                "is_fraud": flag[keep].astype(bool),
                "source": source[keep],
                "reported_at": reported[keep],
                "received_at": reported[keep],
            }
        )
    return payments, labels, int(future.sum())


def import_history(store: HistoryStore, path: Path, mapping: dict[str, str] | None = None,
                   label_delay_days: float = 14.0) -> ImportResult:
    payments, labels, future = prepare(read_table(path), mapping, label_delay_days)
    store.append_payment_frame(payments)
    store.append_label_frame(labels)
    return ImportResult(
        payments=len(payments),
        labels=len(labels),
        fraud=int(labels["is_fraud"].sum()) if len(labels) else 0,
        future_labels=future,
        first=payments["ts"].min(),
        last=payments["ts"].max(),
    )
