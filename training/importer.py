"""``fraudstream history import``: bootstrap the history from a bank's own records.

The file (CSV, CSV.gz or Parquet) has one row per past payment. Columns, after ``--map``
renames:

| column              | required | meaning                                                   |
|---------------------|----------|-----------------------------------------------------------|
| payment_id          | yes      | unique id                                                 |
| timestamp           | yes      | ISO 8601 or epoch seconds; naive values are read as UTC   |
| card_id             | yes      | card token (a raw card number makes the import fail)      |
| terminal_id         | yes      | terminal or merchant id                                   |
| amount              | yes      | >= 0 (0: a card verification)                             |
| currency            | no       | ISO 4217, default EUR                                     |
| country, channel, merchant_category | no | as in the scoring API                          |
| is_fraud            | no       | true/false/1/0; missing means no label                    |
| label_reported_at   | no       | when the label became known; default: timestamp plus     |
|                     |          | --label-delay-days                                        |
| label_source        | no       | chargeback, analyst, customer_report; default import      |
| customer_id, device_id, merchant_id | no | identifiers, as in the scoring API (no PAN)   |
| ip, email           | no       | checked as the API checks them, stored as their pseudonyms |
|                     |          | (``model.pseudonym``, the configured key): never raw       |
| card_bin, billing_country, shipping_country, three_ds, entry_mode | no | as in the API  |

The whole file is checked before anything is written: a bad file changes nothing. It is
read in chunks (memory does not grow with the file): a first pass checks every row and
stages the converted rows in a temporary DuckDB database, which spills to disk; only then
does a second pass write the history, day by day. Payments already in the history (same
payment_id) are skipped, as are labels already recorded with the same verdict and source,
so importing a file twice adds nothing the second time.
"""

from __future__ import annotations

import csv
import gzip
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, get_args

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model.pseudonym import EMAIL_TOKEN, IP_TOKEN, email_token, ip_token
from model.schemas import (
    PAYMENT_DETAILS,
    EntryMode,
    ThreeDS,
    email_problem,
    ip_problem,
    looks_like_pan,
)
from stores.history import HistoryStore

REQUIRED = ("payment_id", "timestamp", "card_id", "terminal_id", "amount")
OPTIONAL = ("currency", "country", "channel", "merchant_category", "is_fraud",
            "label_reported_at", "label_source", *PAYMENT_DETAILS)
LABEL_SOURCES = {"chargeback", "analyst", "customer_report", "import"}
CHANNELS = {"pos", "ecom", "moto", "atm"}
THREE_DS = set(get_args(ThreeDS))
ENTRY_MODES = set(get_args(EntryMode))
# The details' formats, as ``model.schemas.Payment`` has them.
_IDENTIFIER = (r"^[A-Za-z0-9_.:\-]{1,64}$", "1 to 64 letters, digits or _ . : -")
_COUNTRY = (r"^[A-Z]{2}$", "an ISO 3166 code of two capital letters")
DETAIL_FORMATS = {"customer_id": _IDENTIFIER, "device_id": _IDENTIFIER,
                  "merchant_id": _IDENTIFIER, "card_bin": (r"^[0-9]{6,8}$", "6 to 8 digits"),
                  "billing_country": _COUNTRY, "shipping_country": _COUNTRY}
DETAIL_CHOICES = {"three_ds": THREE_DS, "entry_mode": ENTRY_MODES}
# Text columns refused when they hold a raw card number (card_id has its own message).
PAN_COLUMNS = ("payment_id", "terminal_id", "customer_id", "device_id", "merchant_id")
TRUE = {"1", "1.0", "true", "t", "yes"}
FALSE = {"0", "0.0", "false", "f", "no"}
CHUNK_ROWS = 100_000
# pandas' default missing-value markers, so a CSV reads as it did with pandas.read_csv.
NULL_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
               "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan",
               "null"]
_STAGE_MEMORY = "256MB"
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"

# The order in which problems are reported: the first failing check in this order names
# the file's fault, as when the checks ran one after another on the whole file.
_MALFORMED, _EMPTY, _DUPLICATE, _AMOUNT, _PAN, _TIMESTAMP, _CHANNEL, _IS_FRAUD, \
    _REPORTED, _EARLY, _SOURCE, _DETAIL = range(0, 120, 10)


class ImportError_(ValueError):
    """The file cannot be imported; the message names the column and rows at fault."""


# How long after a payment its label is taken to be reported, when the file says nothing.
DEFAULT_LABEL_DELAY_DAYS = 14.0


@dataclass(frozen=True)
class ImportResult:
    payments: int
    labels: int
    fraud: int
    future_labels: int
    first: pd.Timestamp | None  # of the payments written; None when none was
    last: pd.Timestamp | None
    skipped_payments: int = 0  # already in the history
    skipped_labels: int = 0


@dataclass(frozen=True)
class Progress:
    step: str  # "checking" (reading and checking every row) or "writing"
    rows: int  # rows done in this step
    total: int | None  # rows in this step as known beforehand; exact once the step ends


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Fault:
    count: int = 0
    rows: list[int] = field(default_factory=list)  # the first few, 1-based
    suffix: str = ""
    unit: str = "data row"


@dataclass
class _Problems:
    """Every check's failing rows across all chunks, so a message counts the whole file."""

    found: dict[tuple[int, str], _Fault] = field(default_factory=dict)

    def add(self, order: int, message: str, mask: np.ndarray | pd.Series, offset: int,
            suffix: str = "") -> None:
        bad = np.flatnonzero(np.asarray(mask, dtype=bool))
        if not len(bad):
            return
        fault = self.found.setdefault((order, message), _Fault(suffix=suffix))
        fault.count += len(bad)
        fault.rows.extend(int(i) + offset + 1 for i in bad[: max(5 - len(fault.rows), 0)])

    def add_rows(self, order: int, message: str, count: int, rows: list[int],
                 unit: str = "data row") -> None:
        if count:
            self.found[(order, message)] = _Fault(count, rows[:5], unit=unit)

    def raise_first(self) -> None:
        if not self.found:
            return
        (_, message), fault = min(self.found.items(), key=lambda item: item[0][0])
        shown = f", e.g. {fault.unit} {', '.join(map(str, fault.rows))}" if fault.rows else ""
        raise ImportError_(f"{message} in {fault.count} row(s){shown}{fault.suffix}")


# ---- reading ---------------------------------------------------------------------------
@dataclass
class _Source:
    renames: dict[str, str]  # file column -> import column, for the columns read
    total_rows: int | None  # CSV: counted lines, more than the rows if values span lines
    batches: Callable[[], Iterator[pa.RecordBatch]]
    malformed: list[int | None] = field(default_factory=list)  # line numbers, if known


def _opener(path: Path) -> Callable[..., IO]:
    return gzip.open if path.suffix.lower() == ".gz" else open


def _csv_header(path: Path) -> list[str]:
    try:
        with _opener(path)(path, "rt", encoding="utf-8-sig", newline="") as fh:
            return next(csv.reader(fh))
    except StopIteration:
        raise ImportError_(f"{path}: empty file") from None
    except (UnicodeDecodeError, OSError, csv.Error) as exc:
        raise ImportError_(f"{path}: not a readable UTF-8 CSV ({type(exc).__name__})") from None


def _count_rows(path: Path) -> int:
    """Data lines of a CSV: a fraction of a second per GB, for a progress bar with a total."""
    lines, last = 0, b"\n"
    with _opener(path)(path, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)


def _open(path: Path, mapping: dict[str, str]) -> _Source:
    if not path.exists():
        raise ImportError_(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ImportError_(f"{path}: not a readable Parquet file ({exc})") from None
        names = list(parquet.schema_arrow.names)
    elif suffix in (".csv", ".gz"):
        names = _csv_header(path)
    else:
        raise ImportError_(f"{path}: unknown format {suffix!r}; use .csv or .parquet")
    renamed = [mapping.get(n, n) for n in names]
    twice = sorted({n for n in renamed if renamed.count(n) > 1 and n in REQUIRED + OPTIONAL})
    if twice:
        raise ImportError_(f"column(s) {twice} appear more than once (after --map renames)")
    missing = [c for c in REQUIRED if c not in renamed]
    if missing:
        raise ImportError_(
            f"missing required column(s) {missing}; found {renamed}. "
            "Rename with --map SOURCE=TARGET"
        )
    renames = {n: r for n, r in zip(names, renamed, strict=True) if r in REQUIRED + OPTIONAL}

    if suffix == ".parquet":
        return _Source(renames, parquet.metadata.num_rows,
                       lambda: parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(renames)))

    source = _Source(renames, _count_rows(path), lambda: iter(()))

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # The row's text may hold a card number: only where it is is kept.
        source.malformed.append(row.number)
        return "skip"

    def csv_batches() -> Iterator[pa.RecordBatch]:
        try:
            reader = pacsv.open_csv(
                pa.input_stream(path, compression="gzip" if suffix == ".gz" else None),
                # One thread: the only way the reader knows the line of a malformed row,
                # and no slower for a reader that feeds a single consumer. Arrow reads
                # some 30 blocks ahead: 1 MiB blocks keep that to tens of MB.
                read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                                 invalid_row_handler=on_invalid),
                # Every column as text: types are decided by the checks, not guessed from
                # the first block (which a later block could contradict).
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    include_columns=list(renames),
                    null_values=NULL_VALUES,
                    strings_can_be_null=True,
                ),
            )
            yield from reader
        except pa.ArrowInvalid as exc:
            # Arrow's message may quote a row, so a card number: never passed on.
            text = str(exc)
            reason = "not UTF-8 text" if "UTF8" in text else text.split(":")[0]
            raise ImportError_(f"{path}: unreadable CSV ({reason})") from None

    source.batches = csv_batches
    return source


def _chunks(source: _Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file as frames of ``chunk_rows`` rows (the last one shorter), renamed."""
    pending: list[pa.RecordBatch] = []
    held = 0
    names = list(source.renames.values())

    def frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
        return pa.Table.from_batches(batches).rename_columns(names).to_pandas()

    for batch in source.batches():
        batch = batch.select(list(source.renames))
        start = 0
        while batch.num_rows - start >= chunk_rows - held:
            take = chunk_rows - held
            pending.append(batch.slice(start, take))
            start += take
            yield frame(pending)
            pending, held = [], 0
        if start < batch.num_rows:
            pending.append(batch.slice(start))
            held += batch.num_rows - start
    if held:
        yield frame(pending)


# ---- checking and converting a chunk ---------------------------------------------------
def _text(series: pd.Series) -> pd.Series:
    """As strings, missing values kept missing."""
    return series.astype("str")


def _numbers(series: pd.Series) -> pd.Series:
    """As floats; NaN where not a number (or missing)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    # Arrow parses in C (pandas.to_numeric on text costs about 1 us a value); it has no
    # "coerce", so what is not a decimal number is set aside first.
    text = pc.utf8_trim_whitespace(pa.array(_text(series), type=pa.string(), from_pandas=True))
    number = pc.match_substring_regex(text, _NUMBER)
    values = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
    return pd.Series(values.to_numpy(zero_copy_only=False), index=series.index, dtype=float)


def _timestamps(series: pd.Series) -> pd.Series:
    """UTC timestamps; NaT where unreadable (or missing)."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
        return pd.to_datetime(series, utc=True).astype("datetime64[us, UTC]")
    if pd.api.types.is_numeric_dtype(series):
        return pd.to_datetime(series, unit="s", utc=True, errors="coerce") \
            .astype("datetime64[us, UTC]")
    text = _text(series)
    out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
    number = _numbers(text)
    epoch = number.notna()
    if epoch.any():
        out[epoch] = pd.to_datetime(number[epoch], unit="s", utc=True, errors="coerce")
    rest = text.notna() & ~epoch
    if rest.any():
        # ISO 8601 is parsed in C; only what it cannot read goes through the slow,
        # lenient per-value parser the importer always accepted.
        out[rest] = pd.to_datetime(text[rest], utc=True, errors="coerce", format="ISO8601")
        retry = rest & out.isna()
        if retry.any():
            out[retry] = pd.to_datetime(text[retry], utc=True, errors="coerce", format="mixed")
    return out


def _pans(cards: pd.Series) -> np.ndarray:
    # Only values with a card number's count of digits (of any script) can hold one; the
    # exact test (the scoring API's own) runs on those few.
    maybe = cards.str.count(r"\d") >= 12
    pan = np.zeros(len(cards), dtype=bool)
    where = np.flatnonzero(maybe.to_numpy(dtype=bool, na_value=False))
    if len(where):
        pan[where] = [looks_like_pan(v) for v in cards.iloc[where]]
    return pan


def _codes(series: pd.Series) -> pd.Series:
    """As strings, a number written without its ".0" (a BIN read as a number)."""
    if pd.api.types.is_float_dtype(series):
        whole = series.notna() & (series == series.round())
        out = _text(series)
        out[whole] = series[whole].astype("int64").astype("str")
        return out
    return _text(series)


def _each_value(values: pd.Series, check: Callable[[str], str | None]) -> pd.Series:
    """``check`` of each distinct present value, spread over the rows (missing: None)."""
    verdicts = {v: check(v) for v in values.dropna().unique()}
    return values.map(verdicts)


@dataclass
class _Checker:
    label_delay_days: float
    now: pd.Timestamp
    pii_key: bytes | None = field(default=None, repr=False)
    problems: _Problems = field(default_factory=_Problems)
    future_labels: int = 0

    def chunk(self, df: pd.DataFrame, offset: int) -> tuple[pa.Table, pa.Table]:
        """Check one chunk (rows ``offset`` + 1 ... of the file); its staged payments and
        labels. Problems are recorded, not raised, so their counts cover the whole file."""
        problems = self.problems
        for i, col in enumerate(REQUIRED):
            problems.add(_EMPTY + i, f"column {col!r}: empty value", df[col].isna(), offset)
        ids = _text(df["payment_id"])
        amount = _numbers(df["amount"])
        problems.add(_AMOUNT, "column 'amount': negative or not a number",
                     df["amount"].notna() & ~(np.isfinite(amount) & (amount >= 0)), offset)
        cards = _text(df["card_id"])
        problems.add(_PAN, "column 'card_id': raw card numbers (PAN)", _pans(cards), offset,
                     suffix="; tokenise cards before import")
        details = self._details(df, offset)
        for i, col in enumerate(PAN_COLUMNS):
            if col not in df.columns:
                continue
            text = details[col] if col in details else _text(df[col])
            problems.add(_PAN + 1 + i, f"column {col!r}: raw card numbers (PAN)",
                         _pans(text), offset)
        ts = _timestamps(df["timestamp"])
        problems.add(_TIMESTAMP, "column 'timestamp': unreadable timestamp",
                     ts.isna() & df["timestamp"].notna(), offset)

        def opt(col: str, default: object = None) -> pd.Series:
            if col in df.columns:
                return _text(df[col])
            return pd.Series(default, index=df.index, dtype="str")

        channel = opt("channel")
        problems.add(_CHANNEL, f"column 'channel': not one of {sorted(CHANNELS)}",
                     channel.notna() & ~channel.isin(CHANNELS), offset)
        payments = pa.table({
            "row_no": pa.array(np.arange(offset + 1, offset + 1 + len(df), dtype=np.int64)),
            "payment_id": pa.array(ids, type=pa.string(), from_pandas=True),
            "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC"), from_pandas=True),
            "card_id": pa.array(cards, type=pa.string(), from_pandas=True),
            "terminal_id": pa.array(_text(df["terminal_id"]), type=pa.string(),
                                    from_pandas=True),
            "amount": pa.array(amount, type=pa.float64(), from_pandas=True),
            "currency": pa.array(opt("currency", "EUR").fillna("EUR"), type=pa.string(),
                                 from_pandas=True),
            "country": pa.array(opt("country"), type=pa.string(), from_pandas=True),
            "channel": pa.array(channel, type=pa.string(), from_pandas=True),
            "merchant_category": pa.array(opt("merchant_category"), type=pa.string(),
                                          from_pandas=True),
            **{name: pa.array(details.get(name, opt(name)), type=pa.string(),
                              from_pandas=True) for name in PAYMENT_DETAILS},
        })
        return payments, self._labels(df, ids, ts, opt, offset)

    def _details(self, df: pd.DataFrame, offset: int) -> dict[str, pd.Series]:
        """The card-not-present details the file has, checked as the scoring API checks
        them; e-mails and IPs replaced by their pseudonyms."""
        problems = self.problems
        out: dict[str, pd.Series] = {}
        for i, name in enumerate(PAYMENT_DETAILS):
            if name not in df.columns:
                continue
            values = _codes(df[name]) if name == "card_bin" else _text(df[name])
            order = _DETAIL + i
            if name in DETAIL_FORMATS:
                pattern, form = DETAIL_FORMATS[name]
                problems.add(order, f"column {name!r}: not {form}",
                             values.notna() & ~values.str.fullmatch(pattern).fillna(False),
                             offset)
            elif name in DETAIL_CHOICES:
                problems.add(order, f"column {name!r}: not one of {sorted(DETAIL_CHOICES[name])}",
                             values.notna() & ~values.isin(DETAIL_CHOICES[name]), offset)
            elif name in ("ip", "email"):
                values = self._pseudonymised(name, values, order, offset)
            out[name] = values
        return out

    def _pseudonymised(self, name: str, values: pd.Series, order: int,
                       offset: int) -> pd.Series:
        """An ``ip`` or ``email`` column checked, each value as its token (missing or
        invalid: missing; an invalid value fails the import anyway)."""
        check, token, form = ((ip_problem, ip_token, IP_TOKEN) if name == "ip"
                              else (email_problem, email_token, EMAIL_TOKEN))
        verdict = _each_value(values, check)
        bad = values.notna() & verdict.notna()
        # The messages say what is wrong, never the value (it may be personal data).
        for message in sorted(set(verdict[bad])):
            problems_here = bad & (verdict == message)
            self.problems.add(order, f"column {name!r}: {message}", problems_here, offset)
        good = values.where(values.notna() & verdict.isna())
        key = self.pii_key
        if key is None:
            raw = good.notna() & ~good.str.fullmatch(form.pattern).fillna(False)
            self.problems.add(order, f"column {name!r}: raw values and no pseudonym key "
                              "to replace them with (FRAUDSTREAM_PII_KEY)", raw, offset)
            return good
        return _each_value(good, lambda v: token(key, v))

    def _labels(self, df: pd.DataFrame, ids: pd.Series, ts: pd.Series,
                opt: Callable[..., pd.Series], offset: int) -> pa.Table:
        if "is_fraud" not in df.columns:
            return _LABEL_STAGE.empty_table()
        problems = self.problems
        given = df["is_fraud"].notna()
        word = _text(df["is_fraud"]).str.strip().str.lower()
        flag = given & word.isin(TRUE)
        problems.add(_IS_FRAUD, "column 'is_fraud': not true/false",
                     given & ~word.isin(TRUE | FALSE), offset)
        if "label_reported_at" in df.columns:
            reported = _timestamps(df["label_reported_at"])
            problems.add(_REPORTED, "column 'label_reported_at': unreadable timestamp",
                         reported.isna() & df["label_reported_at"].notna(), offset)
        else:
            reported = pd.Series(pd.NaT, index=df.index, dtype="datetime64[us, UTC]")
        # A non-fraud row only becomes a label when the file says when it was confirmed;
        # otherwise "no fraud reported" is what it already means.
        keep = flag | (given & reported.notna())
        reported = reported.fillna(ts + pd.to_timedelta(self.label_delay_days, unit="D"))
        # A label "reported" after now is not known yet (a simulated file has them); it is
        # left out here and can arrive later through the label endpoint.
        future = keep & (reported > self.now)
        self.future_labels += int(future.sum())
        keep &= ~future
        problems.add(_EARLY, "column 'label_reported_at': before the payment",
                     keep & (reported < ts), offset)
        source = opt("label_source", "import").fillna("import")
        problems.add(_SOURCE, f"column 'label_source': not one of {sorted(LABEL_SOURCES)}",
                     keep & ~source.isin(LABEL_SOURCES), offset)
        keep_np = keep.to_numpy(dtype=bool)
        return pa.table({
            "payment_id": pa.array(ids[keep_np], type=pa.string(), from_pandas=True),
            "is_fraud": pa.array(flag[keep_np], type=pa.bool_()),
            "source": pa.array(source[keep_np], type=pa.string(), from_pandas=True),
            "reported_at": pa.array(reported[keep_np], type=pa.timestamp("us", tz="UTC"),
                                    from_pandas=True),
        }, schema=_LABEL_STAGE)


_LABEL_STAGE = pa.schema([("payment_id", pa.string()), ("is_fraud", pa.bool_()),
                          ("source", pa.string()), ("reported_at", pa.timestamp("us", "UTC"))])


# ---- the import ------------------------------------------------------------------------
def _stage(directory: str) -> duckdb.DuckDBPyConnection:
    # In memory up to the limit, then spilled to the directory: faster to fill than a
    # database file, and as bounded.
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{_STAGE_MEMORY}'")
    spill = str(Path(directory) / "spill").replace("'", "''")
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute("SET TimeZone = 'UTC'")
    details = "".join(f", {name} VARCHAR" for name in PAYMENT_DETAILS)
    con.execute(f"""CREATE TABLE payments (row_no BIGINT, payment_id VARCHAR, ts TIMESTAMPTZ,
        card_id VARCHAR, terminal_id VARCHAR, amount DOUBLE, currency VARCHAR,
        country VARCHAR, channel VARCHAR, merchant_category VARCHAR{details})""")
    con.execute("""CREATE TABLE labels (payment_id VARCHAR, is_fraud BOOLEAN, source VARCHAR,
        reported_at TIMESTAMPTZ)""")
    return con


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    # Fetched to the end: DuckDB refuses other work on a connection with a result pending.
    return con.execute(sql).fetchall()[0]


def _duplicates(con: duckdb.DuckDBPyConnection, problems: _Problems) -> None:
    (extra,) = _one(con, "SELECT count(*) - count(DISTINCT payment_id) FROM payments "
                         "WHERE payment_id IS NOT NULL")
    if not extra:
        return
    rows = con.execute(
        "SELECT row_no FROM payments WHERE payment_id IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY payment_id ORDER BY row_no) > 1 "
        "ORDER BY row_no LIMIT 5").fetchall()
    problems.add_rows(_DUPLICATE, "column 'payment_id': duplicate ids", int(extra),
                      [r[0] for r in rows])


def _drop_known(con: duckdb.DuckDBPyConnection, store: HistoryStore) -> tuple[int, int]:
    """Leave out what the history already holds: (payments, labels) left out."""
    skipped = [0, 0]
    for i, (base, sql) in enumerate((
        (store.payments_dir,
         "DELETE FROM payments WHERE payment_id IN (SELECT payment_id FROM {src})"),
        (store.labels_dir,
         "DELETE FROM labels USING (SELECT DISTINCT payment_id, is_fraud, source FROM {src}) h "
         "WHERE labels.payment_id = h.payment_id AND labels.is_fraud = h.is_fraud "
         "AND labels.source = h.source"),
    )):
        if not any(base.glob("day=*/*.parquet")):
            continue
        glob = str(base / "day=*" / "*.parquet").replace("'", "''")
        src = f"read_parquet('{glob}', union_by_name = true)"
        (skipped[i],) = _one(con, sql.format(src=src))
    return skipped[0], skipped[1]


def import_history(
    store: HistoryStore,
    path: Path,
    mapping: dict[str, str] | None = None,
    label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS,
    *,
    chunk_rows: int = CHUNK_ROWS,
    progress: ProgressCallback | None = None,
    pii_key: bytes | None = None,
) -> ImportResult:
    """Check the whole file, then append its new payments and labels to the history.

    ``pii_key``: the pseudonyms' key (``stores.pii_key.load``), for a file with e-mails or
    IP addresses; without it, a file holding raw ones is refused (tokens pass)."""
    report = progress or (lambda _: None)
    source = _open(Path(path), mapping or {})
    checker = _Checker(label_delay_days, pd.Timestamp.now(tz="UTC"), pii_key=pii_key)
    with tempfile.TemporaryDirectory(prefix="fraudstream-import-") as tmp:
        con = _stage(tmp)
        try:
            rows = 0
            for df in _chunks(source, chunk_rows):
                payments, labels = checker.chunk(df, rows)
                con.register("chunk_payments", payments)
                con.register("chunk_labels", labels)
                con.execute("INSERT INTO payments SELECT * FROM chunk_payments")
                con.execute("INSERT INTO labels SELECT * FROM chunk_labels")
                con.unregister("chunk_payments")
                con.unregister("chunk_labels")
                rows += len(df)
                report(Progress("checking", rows, source.total_rows))
            if source.malformed:
                lines = [n for n in source.malformed if n is not None]
                checker.problems.add_rows(
                    _MALFORMED, "malformed CSV: wrong number of fields",
                    len(source.malformed), lines, unit="line")
            _duplicates(con, checker.problems)
            checker.problems.raise_first()
            report(Progress("checking", rows, rows))
            skipped_payments, skipped_labels = _drop_known(con, store)
            return _write(con, store, checker, skipped_payments, skipped_labels,
                          chunk_rows, report)
        finally:
            con.close()


def _write(con: duckdb.DuckDBPyConnection, store: HistoryStore, checker: _Checker,
           skipped_payments: int, skipped_labels: int, chunk_rows: int,
           report: ProgressCallback) -> ImportResult:
    n_payments, first, last = _one(con, "SELECT count(*), min(ts), max(ts) FROM payments")
    n_labels, fraud = _one(con, "SELECT count(*), count(*) FILTER (is_fraud) FROM labels")
    total = n_payments + n_labels
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        report(Progress("writing", done, total))

    report(Progress("writing", 0, total))
    # Sorted by day, each day's rows go to one new part file per import.
    store.append_payment_batches(
        con.sql("SELECT * EXCLUDE (row_no), 'import' AS source FROM payments ORDER BY ts")
        .to_arrow_reader(chunk_rows), advance)
    store.append_label_batches(
        con.sql("SELECT *, reported_at AS received_at FROM labels ORDER BY reported_at")
        .to_arrow_reader(chunk_rows), advance)
    return ImportResult(
        payments=n_payments,
        labels=n_labels,
        fraud=fraud,
        future_labels=checker.future_labels,
        first=pd.Timestamp(first) if first is not None else None,
        last=pd.Timestamp(last) if last is not None else None,
        skipped_payments=skipped_payments,
        skipped_labels=skipped_labels,
    )
