"""examples/dpo_vs_rlhf.ipynb runs top to bottom (nbclient) against a miniature comparison.

The notebook reads where its world, output and settings are from the environment, so here it
reuses the quick comparison the compare tests ran (`quick` fixture) instead of training again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "dpo_vs_rlhf.ipynb"


def test_notebook_executes_and_shows_each_claim(quick, tiny_world, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out, _, config = quick
    monkeypatch.setenv("PREFLAB_WORLD", str(tiny_world))
    monkeypatch.setenv("PREFLAB_COMPARE_DIR", str(out))
    monkeypatch.setenv("PREFLAB_COMPARE_CONFIG", str(config))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(out.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                     for o in outputs)
    for phrase in ("the article", "measured", "choose:", "P, one model's weights"):
        assert phrase in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # memory, hacking, frontier at least
    assert sum(cell.cell_type == "markdown" and cell.source.startswith("##")
               for cell in nb.cells) >= 8  # claim by claim
