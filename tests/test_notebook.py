"""The analyst notebook runs headless against a real history and registry."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from model.registry import Registry

pytestmark = pytest.mark.integration
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "fraud_overview.ipynb"


def test_fraud_overview_notebook_runs_and_draws_its_plots(stack, trained):
    current = Registry(stack.models_dir).current_version()  # other tests may promote models
    assert current is not None
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # fraud rate by day; score distribution + PR curve
    text = "".join(o.get("text", "") for o in outputs)
    assert f"model {current}" in text and "average precision" in text


def test_review_queue_notebook_shows_the_oldest_case_with_its_card_and_terminal(stack,
                                                                                  trained):
    import asyncio

    from stores import redis_client
    from stores.history import HistoryStore
    from stores.reviews import ReviewQueue

    notebook = NOTEBOOK.parent / "review_queue.ipynb"
    # Imported payments were never scored: no score, no reasons.
    recent = HistoryStore(stack.history_dir).query("""
        SELECT payment_id, ts, card_id, terminal_id, amount, currency,
               coalesce(score, 0.5) AS score, model_version,
               coalesce(degraded, false) AS degraded,
               CASE WHEN coalesce(len(reasons), 0) = 0 THEN ['test'] ELSE reasons END
                   AS reasons
        FROM payments ORDER BY ts DESC LIMIT 3""")
    rows = [r | {"ts": r["ts"].to_pydatetime(), "reasons": [str(x) for x in r["reasons"]]}
            for r in recent.to_dict("records")]

    async def enqueue():
        redis = redis_client.connect(stack)
        try:
            await ReviewQueue(redis).enqueue(rows)
        finally:
            await redis.aclose()

    asyncio.run(enqueue())  # other tests' cases may be older: the notebook may pick one
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})]  # card and terminal
    text = "".join(o.get("text", "") for o in outputs)
    assert "cases waiting" in text and "payments of card" in text
    assert "would send" in text  # no analyst key in the environment: nothing decided
