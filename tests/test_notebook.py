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
