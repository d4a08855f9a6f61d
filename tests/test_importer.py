import gzip

import pandas as pd
import pytest
from typer.testing import CliRunner

from ops.cli import app
from stores.history import HistoryStore
from training.importer import ImportError_, import_history

GOOD = """tx,ts,card,terminal_id,amount,is_fraud,label_reported_at,label_source
p1,2026-10-01T10:00:00Z,c1,t1,12.5,0,,
p2,2026-10-01T11:00:00Z,c1,t2,99.0,1,2026-10-09T08:00:00Z,chargeback
p3,2026-10-02T09:30:00Z,c2,t1,5.0,true,,
"""


DETAIL_HEAD = "payment_id,timestamp,card_id,terminal_id,amount,customer_id,ip,email,card_bin," \
    "three_ds,entry_mode\n"
KEY = b"an-import-key-of-32-bytes-......"


def write(tmp_path, text, name="h.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_import_csv_with_column_mapping(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    mapping = {"tx": "payment_id", "ts": "timestamp", "card": "card_id"}
    result = import_history(store, write(tmp_path, GOOD), mapping, label_delay_days=3)
    assert (result.payments, result.labels, result.fraud) == (3, 2, 2)
    pays = store.query("SELECT payment_id, card_id, amount, source FROM payments ORDER BY 1")
    assert list(pays["payment_id"]) == ["p1", "p2", "p3"]
    assert set(pays["source"]) == {"import"}
    labels = store.query("SELECT payment_id, source, reported_at FROM labels ORDER BY 1")
    assert list(labels["source"]) == ["chargeback", "import"]
    # p3 had no reported_at: payment time + the label delay given
    assert labels.loc[1, "reported_at"] == pd.Timestamp("2026-10-05T09:30:00Z")


def test_labels_reported_after_now_are_left_out(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    text = ("payment_id,timestamp,card_id,terminal_id,amount,is_fraud,label_reported_at\n"
            "p1,2026-10-01T10:00:00Z,c1,t1,12.5,1,2026-10-03T10:00:00Z\n"
            "p2,2026-10-01T11:00:00Z,c1,t2,99.0,1,2999-01-01T00:00:00Z\n")
    result = import_history(store, write(tmp_path, text))
    assert (result.payments, result.labels, result.future_labels) == (2, 1, 1)
    assert list(store.query("SELECT payment_id FROM labels")["payment_id"]) == ["p1"]


def test_reimport_adds_nothing_and_says_what_it_skipped(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    mapping = {"tx": "payment_id", "ts": "timestamp", "card": "card_id"}
    path = write(tmp_path, GOOD)
    import_history(store, path, mapping)
    again = import_history(store, path, mapping)
    assert (again.payments, again.labels) == (0, 0)
    assert (again.skipped_payments, again.skipped_labels) == (3, 2)
    assert len(store.query("SELECT * FROM payments_raw")) == 3
    assert len(store.query("SELECT * FROM labels_raw")) == 2
    # A later file: one new payment, and a new verdict on a payment already imported.
    later = write(tmp_path, GOOD.replace("p3,2026-10-02T09:30:00Z,c2,t1,5.0,true,,",
                                         "p3,2026-10-02T09:30:00Z,c2,t1,5.0,true,,\n"
                                         "p4,2026-10-03T09:30:00Z,c2,t1,7.0,0,,")
                  .replace("p1,2026-10-01T10:00:00Z,c1,t1,12.5,0,,",
                           "p1,2026-10-01T10:00:00Z,c1,t1,12.5,1,2026-10-20T00:00:00Z,analyst"),
                  "later.csv")
    result = import_history(store, later, mapping)
    assert (result.payments, result.skipped_payments) == (1, 3)
    assert (result.labels, result.skipped_labels) == (1, 2)
    assert sorted(store.query("SELECT payment_id FROM payments_raw")["payment_id"]) == [
        "p1", "p2", "p3", "p4"]
    labels = store.query("SELECT payment_id, source FROM labels ORDER BY 1, 2")
    assert labels.values.tolist() == [["p1", "analyst"], ["p2", "chargeback"], ["p3", "import"]]


@pytest.mark.parametrize(("text", "message"), [
    ("payment_id,timestamp,card_id,amount\np1,2026-10-01,c1,3\n", "terminal_id"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c1,t1,-3\n", "amount"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c1,t1,1e400\n", "amount"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c1,t1,\n", "empty value"),
    ("payment_id,timestamp,card_id,terminal_id,amount,channel\np1,2026-10-01,c,t,3,web\n",
     "channel"),
    ("payment_id,timestamp,card_id,terminal_id,amount,is_fraud,label_reported_at\n"
     "p1,2026-10-02,c,t,3,1,2026-10-01\n", "before the payment"),
    ("payment_id,timestamp,card_id,terminal_id,amount,is_fraud,label_source\n"
     "p1,2026-10-01,c,t,3,1,rumour\n", "label_source"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c,t,3,4\n", "malformed"),
    ("tx,payment_id,timestamp,card_id,terminal_id,amount\nx,p1,2026-10-01,c,t,3\n",
     "more than once"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,yesterday,c1,t1,3\n", "timestamp"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,4111111111111111,t1,3\n",
     "PAN"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c,t,3\np1,2026-10-01,c,t,4\n",
     "duplicate"),
    ("payment_id,timestamp,card_id,terminal_id,amount,is_fraud\np1,2026-10-01,c,t,3,maybe\n",
     "is_fraud"),
    # the card-not-present details, checked as the scoring API checks them
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,203.0.113,,,,\n", "column 'ip': ip must be an IPv4"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,,jane@localhost,,,\n", "column 'email'"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,,,41111,,\n", "column 'card_bin': not 6 to 8 digits"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,,,,maybe,\n", "column 'three_ds'"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,,,,,tap\n", "column 'entry_mode'"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,cust 1,,,,,\n", "column 'customer_id': not 1 to 64"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,4111111111111111,,,,,\n",
     "column 'customer_id': raw card numbers"),
    (DETAIL_HEAD + "p1,2026-10-01,c,t,3,,,4111111111111111@example.com,,,\n",
     "column 'email': email looks like a raw card number"),
    (DETAIL_HEAD + "4111.1111.1111.1111,2026-10-01,c,t,3,,,,,,\n",
     "column 'payment_id': raw card numbers"),
    (DETAIL_HEAD + "p1,2026-10-01,4111_1111_1111_1111,t,3,,,,,,\n",
     "column 'card_id': raw card numbers"),
    ("payment_id,timestamp,card_id,terminal_id,amount,merchant_id,shipping_country\n"
     "p1,2026-10-01,c,t,3,m1,be\n", "column 'shipping_country': not an ISO 3166"),
])
def test_bad_files_are_refused_naming_the_problem_and_write_nothing(tmp_path, text, message):
    store = HistoryStore(tmp_path / "hist")
    with pytest.raises(ImportError_, match=message):
        import_history(store, write(tmp_path, text), {"tx": "payment_id"}, pii_key=KEY)
    assert not (tmp_path / "hist").exists()


def test_cli_import_reports_errors_and_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path / "home"))
    from model.config import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    bad = write(tmp_path, "payment_id,timestamp\np1,2026-10-01\n", "bad.csv")
    result = runner.invoke(app, ["history", "import", str(bad)])
    assert result.exit_code == 2
    assert "missing required column" in result.output and "nothing was imported" in result.output
    good = write(tmp_path, GOOD)
    result = runner.invoke(app, ["history", "import", str(good), "--map", "tx=payment_id",
                                 "--map", "ts=timestamp", "--map", "card=card_id"])
    assert result.exit_code == 0, result.output
    assert "imported 3 payments" in result.output
    result = runner.invoke(app, ["history", "import", str(good), "--map", "tx"])
    assert result.exit_code == 2 and "SOURCE=TARGET" in result.output
    get_settings.cache_clear()


HEAD = "payment_id,timestamp,card_id,terminal_id,amount,is_fraud,label_reported_at\n"


def rows(n, start="2026-10-01", **override):
    """``n`` valid data lines, one payment an hour; ``override`` {row number: line}."""
    t0 = pd.Timestamp(start, tz="UTC")
    lines = [f"p{i},{(t0 + pd.Timedelta(hours=i)).isoformat()},c{i % 3},t{i % 2},{i + 1}.5,,"
             for i in range(1, n + 1)]
    for row, line in override.items():
        lines[int(row.removeprefix("r")) - 1] = line
    return HEAD + "\n".join(lines) + "\n"


def test_zero_amounts_are_card_verifications_and_are_kept(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    text = HEAD + "p1,2026-10-01T10:00:00Z,c1,t1,0,,\np2,2026-10-01T11:00:00Z,c1,t1,0.00,,\n"
    result = import_history(store, write(tmp_path, text))
    assert result.payments == 2
    assert store.query("SELECT amount FROM payments")["amount"].tolist() == [0.0, 0.0]


def test_negative_amounts_are_refused_naming_every_row_count_and_the_first_rows(tmp_path):
    text = rows(12, r3="p3,2026-10-01T03:00:00Z,c,t,-1,,", r7="p7,2026-10-01T07:00:00Z,c,t,-0.5,,",
                r11="p11,2026-10-01T11:00:00Z,c,t,ten,,")
    with pytest.raises(ImportError_) as err:
        import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, text), chunk_rows=4)
    assert str(err.value) == ("column 'amount': negative or not a number in 3 row(s), "
                              "e.g. data row 3, 7, 11")
    assert not (tmp_path / "hist").exists()


def test_a_bad_row_in_a_late_chunk_writes_nothing(tmp_path):
    text = rows(20, r19="p19,not-a-time,c1,t1,3,,")
    store = HistoryStore(tmp_path / "hist")
    seen = []
    with pytest.raises(ImportError_, match=r"'timestamp': unreadable timestamp in 1 row\(s\), "
                                           r"e\.g\. data row 19$"):
        import_history(store, write(tmp_path, text), chunk_rows=3, progress=seen.append)
    assert [p.rows for p in seen if p.step == "checking"][-1] == 20  # all chunks were read
    assert not any(p.step == "writing" for p in seen)
    assert not (tmp_path / "hist").exists()


def test_duplicate_ids_in_different_chunks_are_refused(tmp_path):
    text = rows(9, r8="p2,2026-10-01T08:00:00Z,c1,t1,3,,")
    with pytest.raises(ImportError_, match=r"duplicate ids in 1 row\(s\), e\.g\. data row 8$"):
        import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, text), chunk_rows=2)
    assert not (tmp_path / "hist").exists()


def test_card_numbers_are_refused_and_never_echoed(tmp_path, monkeypatch):
    pan = "4111 1111 1111 1111"
    text = rows(6, r5=f"p5,2026-10-01T05:00:00Z,{pan},t1,3,,")
    with pytest.raises(ImportError_, match=r"PAN\) in 1 row\(s\), e\.g\. data row 5;") as err:
        import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, text), chunk_rows=2)
    assert "1111" not in str(err.value)
    # A PAN in a row with a wrong number of fields is not quoted either.
    malformed = rows(3, r2=f"p2,2026-10-01T02:00:00Z,{pan},t1,3,,,extra")
    with pytest.raises(ImportError_, match="malformed CSV") as err:
        import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, malformed, "m.csv"))
    assert "1111" not in str(err.value) and "line 3" in str(err.value)
    # Not through the command either; an ordinary numeric token is no PAN.
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path / "home"))
    from model.config import get_settings

    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["history", "import", str(tmp_path / "h.csv")])
    get_settings.cache_clear()
    assert out.exit_code == 2 and "PAN" in out.output and "1111" not in out.output
    assert not (tmp_path / "home" / "history").exists()
    token = rows(2, r1="p1,2026-10-01T01:00:00Z,4111111111111112,t1,3,,")
    result = import_history(HistoryStore(tmp_path / "h2"), write(tmp_path, token, "t.csv"))
    assert result.payments == 2


def test_progress_reaches_the_row_count_in_both_steps(tmp_path):
    text = rows(7, r2="p2,2026-10-01T02:00:00Z,c1,t1,3,1,2026-10-05T00:00:00Z")
    seen = []
    result = import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, text),
                            chunk_rows=3, progress=seen.append)
    checking = [(p.rows, p.total) for p in seen if p.step == "checking"]
    assert checking[0] == (3, 7) and checking[-1] == (7, 7)
    assert [r for r, _ in checking] == sorted(r for r, _ in checking)
    writing = [(p.rows, p.total) for p in seen if p.step == "writing"]
    assert writing[0] == (0, 8) and writing[-1] == (8, 8)  # 7 payments and 1 label
    assert (result.payments, result.labels) == (7, 1)


def test_large_files_write_one_file_per_day_and_labels_by_reported_day(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    text = rows(60, r30="p30,2026-10-02T06:00:00Z,c1,t1,3,1,2026-10-09T08:00:00Z",
                r50="p50,2026-10-03T02:00:00Z,c1,t1,3,true,")
    result = import_history(store, write(tmp_path, text), label_delay_days=2, chunk_rows=7)
    assert (result.payments, result.labels, result.fraud) == (60, 2, 2)
    days = sorted(d.name for d in store.payments_dir.iterdir())
    assert days == ["day=2026-10-01", "day=2026-10-02", "day=2026-10-03"]
    assert all(len(list((store.payments_dir / d).glob("*.parquet"))) == 1 for d in days)
    assert not list(store.root.rglob(".*.tmp"))  # every file renamed into place
    assert sorted(d.name for d in store.labels_dir.iterdir()) == ["day=2026-10-05",
                                                                 "day=2026-10-09"]
    per_day = store.query("SELECT day, count(*) AS n FROM read_parquet("
                          f"'{store.payments_dir}/day=*/*.parquet', hive_partitioning = true) "
                          "GROUP BY day ORDER BY day")
    assert per_day["n"].tolist() == [23, 24, 13]
    assert result.first == pd.Timestamp("2026-10-01T01:00:00Z")
    assert result.last == pd.Timestamp("2026-10-03T12:00:00Z")


def test_parquet_with_typed_columns_epoch_times_and_float_labels(tmp_path):
    # pandas writes an is_fraud of 1/0 with gaps as floats: 1.0 is fraud (the importer
    # once read it as "not fraud").
    frame = pd.DataFrame({
        "payment_id": ["a", "b", "c"],
        "timestamp": [1790000000, 1790003600, 1790007200],
        "card_id": ["c1", "c1", "c2"], "terminal_id": ["t1", "t2", "t1"],
        "amount": [0.0, 12.0, 3.5],
        "is_fraud": [1.0, None, 0.0],
        "label_reported_at": pd.to_datetime(["2026-09-30", None, "2026-09-29"], utc=True),
    })
    path = tmp_path / "h.parquet"
    frame.to_parquet(path)
    store = HistoryStore(tmp_path / "hist")
    result = import_history(store, path, chunk_rows=2)
    assert (result.payments, result.labels, result.fraud) == (3, 2, 1)
    labels = store.query("SELECT payment_id, is_fraud FROM labels ORDER BY 1")
    assert labels.values.tolist() == [["a", True], ["c", False]]
    ts = store.query("SELECT ts FROM payments ORDER BY payment_id")["ts"]
    assert ts.iloc[0] == pd.Timestamp(1790000000, unit="s", tz="UTC")


def test_gzipped_csv_and_a_header_only_file(tmp_path):
    path = tmp_path / "h.csv.gz"
    path.write_bytes(gzip.compress(rows(5).encode()))
    seen = []
    result = import_history(HistoryStore(tmp_path / "hist"), path, chunk_rows=2,
                            progress=seen.append)
    assert result.payments == 5 and seen[-1].rows == seen[-1].total == 5
    empty = import_history(HistoryStore(tmp_path / "h2"), write(tmp_path, HEAD, "e.csv"))
    assert (empty.payments, empty.first) == (0, None)


def test_cli_shows_what_a_reimport_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path / "home"))
    from model.config import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    path = write(tmp_path, rows(4))
    first = runner.invoke(app, ["history", "import", str(path)])
    again = runner.invoke(app, ["history", "import", str(path)])
    get_settings.cache_clear()
    assert first.exit_code == 0 and "imported 4 payments (2026-10-01 to 2026-10-01)" in first.output
    assert again.exit_code == 0, again.output
    assert "imported 0 payments and 0 labels" in again.output
    assert "skipped 4 payments and 0 labels already in the history" in again.output


# ---- the card-not-present details: e-mails and IPs stored as their pseudonyms ----------
DETAILS = (DETAIL_HEAD
           + "p1,2026-10-01T10:00:00Z,c1,t1,12.5,cu1,203.0.113.7, Jane@Example.com ,411111,"
             "authenticated,ecommerce\n"
           + "p2,2026-10-01T11:00:00Z,c1,t2,99.0,,2001:db8::1,jane@example.com,,,\n"
           + "p3,2026-10-02T09:30:00Z,c2,t1,5.0,cu2,,,012345,none,chip\n")


def nulls_as_none(frame):
    return frame.astype(object).where(frame.notna(), None)


def test_raw_emails_and_ips_are_imported_as_their_tokens_only(tmp_path):
    from model.pseudonym import email_token, ip_token

    store = HistoryStore(tmp_path / "hist")
    result = import_history(store, write(tmp_path, DETAILS), pii_key=KEY, chunk_rows=2)
    assert result.payments == 3
    got = nulls_as_none(store.query("SELECT payment_id, customer_id, ip, email, card_bin, "
                                    "three_ds, entry_mode FROM payments ORDER BY 1"))
    assert got.to_dict("records") == [
        {"payment_id": "p1", "customer_id": "cu1", "ip": ip_token(KEY, "203.0.113.7"),
         "email": email_token(KEY, "jane@example.com"), "card_bin": "411111",
         "three_ds": "authenticated", "entry_mode": "ecommerce"},
        {"payment_id": "p2", "customer_id": None, "ip": ip_token(KEY, "2001:db8::1"),
         "email": email_token(KEY, "jane@example.com"), "card_bin": None, "three_ds": None,
         "entry_mode": None},
        {"payment_id": "p3", "customer_id": "cu2", "ip": None, "email": None,
         "card_bin": "012345", "three_ds": "none", "entry_mode": "chip"},
    ]
    files = b"".join(p.read_bytes() for p in store.root.rglob("*.parquet")).lower()
    text = store.query("SELECT * FROM payments_raw").astype(str).to_csv().lower()
    for raw in ("jane@example.com", "203.0.113.7", "2001:db8::1"):
        assert raw.encode() not in files and raw not in text, raw
    # Another key, other tokens; a file of tokens imports as it is, with no key at all.
    other = import_history(HistoryStore(tmp_path / "h2"), write(tmp_path, DETAILS, "o.csv"),
                           pii_key=b"another-key-of-the-same-size-...")
    assert other.payments == 3
    theirs = HistoryStore(tmp_path / "h2").query("SELECT email FROM payments WHERE "
                                                 "payment_id = 'p1'")["email"][0]
    assert theirs != got["email"][0]
    tokens = got.assign(timestamp="2026-10-01T10:00:00Z", card_id="c", terminal_id="t",
                        amount=1.0)
    tokens.to_parquet(tmp_path / "tokens.parquet")
    again = HistoryStore(tmp_path / "h3")
    import_history(again, tmp_path / "tokens.parquet")
    same = nulls_as_none(again.query("SELECT ip, email FROM payments ORDER BY payment_id"))
    assert same.values.tolist() == got[["ip", "email"]].values.tolist()


def test_raw_emails_or_ips_without_a_key_are_refused(tmp_path):
    with pytest.raises(ImportError_, match="column 'ip': raw values and no pseudonym key") \
            as err:
        import_history(HistoryStore(tmp_path / "hist"), write(tmp_path, DETAILS))
    assert "203.0.113" not in str(err.value) and "jane" not in str(err.value)
    assert not (tmp_path / "hist").exists()


def test_cli_import_pseudonymises_with_the_homes_key(tmp_path, monkeypatch):
    from model.pseudonym import email_token
    from stores import pii_key

    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path / "home"))
    from model.config import Settings, get_settings

    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["history", "import", str(write(tmp_path, DETAILS))])
    get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    key = pii_key.load(Settings())  # generated by the import, in the home's secrets
    assert (tmp_path / "home" / "secrets" / "pii.key").exists()
    emails = HistoryStore(tmp_path / "home" / "history").query(
        "SELECT DISTINCT email FROM payments WHERE email IS NOT NULL")["email"].tolist()
    assert emails == [email_token(key, "jane@example.com")]


def test_a_history_and_files_without_the_details_still_import_and_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stores.history import PAYMENT_DETAILS, PAYMENT_SCHEMA
    from training.backtest import load_file

    store = HistoryStore(tmp_path / "hist")
    # a part file as written before the details existed
    old = pa.schema([f for f in PAYMENT_SCHEMA if f.name not in PAYMENT_DETAILS])
    day = store.payments_dir / "day=2026-09-30"
    day.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{
        "payment_id": "old1", "ts": pd.Timestamp("2026-09-30T10:00:00Z"), "card_id": "c1",
        "terminal_id": "t1", "amount": 3.0, "currency": "EUR", "source": "import"}],
        schema=old), day / "part-old.parquet")
    plain = rows(2).replace("\np1,", "\nq1,").replace("\np2,", "\nq2,")  # no details
    assert import_history(store, write(tmp_path, plain), pii_key=KEY).payments == 2
    assert import_history(store, write(tmp_path, DETAILS, "d.csv"), pii_key=KEY).payments == 3
    got = store.query(f"SELECT payment_id, {', '.join(PAYMENT_DETAILS)} FROM payments "
                      "ORDER BY payment_id")
    assert got["payment_id"].tolist() == ["old1", "p1", "p2", "p3", "q1", "q2"]
    by_id = got.set_index("payment_id")
    assert by_id.loc[["old1", "q1", "q2"]].isna().all().all()
    assert by_id.loc["p3", "entry_mode"] == "chip"
    # and a brought file (backtest --file, replay) carries its details, tokens only
    payments, _ = load_file(write(tmp_path, DETAILS, "b.csv"), pii_key=KEY)
    assert set(PAYMENT_DETAILS) <= set(payments.columns)
    assert payments.set_index("payment_id").loc["p1", "email"].startswith("em_")


def test_a_bin_written_as_a_number_keeps_its_digits(tmp_path):
    frame = pd.DataFrame({"payment_id": ["a", "b"], "timestamp": [1790000000, 1790003600],
                          "card_id": ["c1", "c2"], "terminal_id": ["t1", "t1"],
                          "amount": [1.0, 2.0], "card_bin": [411111.0, None]})
    frame.to_parquet(tmp_path / "b.parquet")
    store = HistoryStore(tmp_path / "hist")
    import_history(store, tmp_path / "b.parquet")
    bins = nulls_as_none(store.query("SELECT card_bin FROM payments ORDER BY payment_id"))
    assert bins["card_bin"].tolist() == ["411111", None]
