"""The notebooks in notebooks/: each .py (jupytext py:percent, the source of truth) is paired
with an .ipynb committed without outputs and with the same cells, and each runs top to bottom
in a fresh kernel (from notebooks/, as Jupyter starts it). layers_tour runs in the default
tier; the others, which train or time things, under -m slow."""
import os
import pathlib

import jupytext
import nbclient
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("layers_tour", "scan_forms", "train_mqar", "decoding")
TIMEOUT_S = 600  # per cell


def test_each_notebook_is_paired_and_committed_without_outputs():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == sorted(NAMES)
  for name in NAMES:
    text = jupytext.read(NOTEBOOKS / f"{name}.py")
    ipynb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert [(c.cell_type, c.source) for c in ipynb.cells] == \
        [(c.cell_type, c.source) for c in text.cells], f"{name}.ipynb is out of step with .py"
    for cell in ipynb.cells:
      assert not cell.get("outputs") and cell.get("execution_count") is None, \
          f"{name}.ipynb is committed with outputs"


def execute(name: str, **env):
  """Runs notebooks/<name>.py in a fresh python3 kernel (environment variables `env` added,
  a non-interactive matplotlib backend); returns the executed notebook."""
  notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
  client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  return client.execute(env={**os.environ, "MPLBACKEND": "Agg", **env})


def _outputs(notebook) -> str:
  return "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


def test_layers_tour_runs():
  # XLA optimisations off: half the compile time of its 13 mixers, and it times nothing
  notebook = execute("layers_tour", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  assert "step-by-step == whole sequence" in _outputs(notebook)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != "layers_tour"])
def test_notebook_runs(name):
  assert "notebook done" in _outputs(execute(name))
