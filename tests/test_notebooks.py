"""Every notebook in notebooks/ runs top to bottom without an error.

The notebooks read their number of SVI steps from ``JAXGUIDES_NB_STEPS``;
here it is small (100 unless set), so the test checks that the code runs, not
that the fits converge. Executed copies stay in memory: nothing is written
back into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: strip the outputs before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("JAXGUIDES_NB_STEPS", os.environ.get("JAXGUIDES_NB_STEPS", "100"))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no figures rendered: faster, and no display needed
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
