"""Every notebook in colab/ runs top to bottom on its smallest settings, in a Jupyter
kernel as a person or Colab runs it, and shows its figures inline (image/png outputs)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import REPO

# Figures each notebook draws (the inline images its executed outputs must hold), and the
# environment that picks its CI settings.
NOTEBOOKS = {
    "quickstart.ipynb": (2, {"QUICKSTART_STEPS": "30"}),  # loss curve, expert load
    "grm_spct.ipynb": (1, {"GRM_SPCT_VARIANT": "smoke"}),  # the scaling curve; every SPCT phase at toy sizes
    "grpo_reasoning.ipynb": (2, {"GRPO_NOTEBOOK_SCALE": "smoke"}),  # GRPO curve, slip analysis
}


def test_every_notebook_is_listed():
    assert sorted(n for n in os.listdir(os.path.join(REPO, "colab")) if n.endswith(".ipynb")) == sorted(NOTEBOOKS)


def inline_images(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["quickstart.ipynb", "grm_spct.ipynb", "grpo_reasoning.ipynb"])
def test_no_notebook_chooses_a_backend_that_draws_nothing_inline(name):
    source = "\n".join(c.source for c in nbformat.read(os.path.join(REPO, "colab", name), as_version=4).cells)
    assert "matplotlib.use(" not in source and "%matplotlib inline" in source


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_and_shows_its_figures_inline(name, monkeypatch):
    figures, env = NOTEBOOKS[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what a headless CI sets: the notebook still draws inline
    notebook = nbformat.read(os.path.join(REPO, "colab", name), as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(REPO, "colab")}}).execute()
    assert inline_images(notebook) == figures
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
