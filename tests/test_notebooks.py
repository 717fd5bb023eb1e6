"""Every notebook in colab/ runs top to bottom on its tiny settings and leaves its plots."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = {"quickstart.ipynb": ["loss.png", "expert_load.png"], "grm_spct.ipynb": ["grm_scaling.png"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_and_leaves_its_figures(name):
    for figure in NOTEBOOKS[name]:
        if os.path.exists(os.path.join("colab", figure)):
            os.remove(os.path.join("colab", figure))
    notebook = nbformat.read(os.path.join("colab", name), as_version=4)
    os.environ["QUICKSTART_STEPS"] = "30"
    os.environ["GRM_SPCT_VARIANT"] = "smoke"  # every SPCT phase on toy sizes (~1-2 min)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": "colab"}}).execute()
    for figure in NOTEBOOKS[name]:
        assert os.path.getsize(os.path.join("colab", figure)) > 1000, figure
