import pandas as pd
import pytest
from typer.testing import CliRunner

from model.history import HistoryStore
from ops.cli import app
from training.importer import ImportError_, import_history

GOOD = """tx,ts,card,terminal_id,amount,is_fraud,label_reported_at,label_source
p1,2026-10-01T10:00:00Z,c1,t1,12.5,0,,
p2,2026-10-01T11:00:00Z,c1,t2,99.0,1,2026-10-09T08:00:00Z,chargeback
p3,2026-10-02T09:30:00Z,c2,t1,5.0,true,,
"""


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


def test_reimport_does_not_duplicate_in_the_views(tmp_path):
    store = HistoryStore(tmp_path / "hist")
    mapping = {"tx": "payment_id", "ts": "timestamp", "card": "card_id"}
    path = write(tmp_path, GOOD)
    import_history(store, path, mapping)
    import_history(store, path, mapping)
    assert len(store.query("SELECT * FROM payments_raw")) == 6
    assert len(store.query("SELECT * FROM payments")) == 3
    assert len(store.query("SELECT * FROM labels")) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("payment_id,timestamp,card_id,amount\np1,2026-10-01,c1,3\n", "terminal_id"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c1,t1,-3\n", "amount"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,yesterday,c1,t1,3\n", "timestamp"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,4111111111111111,t1,3\n",
     "PAN"),
    ("payment_id,timestamp,card_id,terminal_id,amount\np1,2026-10-01,c,t,3\np1,2026-10-01,c,t,4\n",
     "duplicate"),
    ("payment_id,timestamp,card_id,terminal_id,amount,is_fraud\np1,2026-10-01,c,t,3,maybe\n",
     "is_fraud"),
])
def test_bad_files_are_refused_naming_the_problem_and_write_nothing(tmp_path, text, message):
    store = HistoryStore(tmp_path / "hist")
    with pytest.raises(ImportError_, match=message):
        import_history(store, write(tmp_path, text))
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
