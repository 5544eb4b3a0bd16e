"""The teaching notebooks in notebooks/: every one runs top to bottom and renders its figures.

The slow tests execute each saved notebook with nbclient in a fresh kernel of *this* interpreter (so the kernel sees
the installed vdmlab, whatever ``jupyter kernelspec list`` says), with ``notebooks/`` as working directory, and check
that no cell fails and that at least one PNG figure is produced. The fast tests check the saved files themselves:
outputs and figures present, no errors, small enough to commit, and in step with their sources in
``notebooks/_sources`` (rebuild with ``python notebooks/_build.py``).
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_forward_process", "02_parameterizations", "03_weightings", "04_invariance_and_variance", "05_hole_problem",
            "06_weighting_comparison"]
CELL_TIMEOUT_S = 300
MAX_BYTES = 1_000_000


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    """Every output of every code cell."""
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def png_count(nb: nbformat.NotebookNode) -> int:
    """Number of PNG images among the outputs."""
    return sum("image/png" in out.get("data", {}) for out in outputs(nb))


def errors(nb: nbformat.NotebookNode) -> list[str]:
    """``ename: evalue`` of every error output."""
    return [f"{out['ename']}: {out['evalue']}" for out in outputs(nb) if out.get("output_type") == "error"]


def kernel_manager(kernel_dir: Path):
    """A kernel manager for a kernel spec, written to ``kernel_dir``, that runs the interpreter running the tests."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    write_kernel_spec(kernel_dir / "vdmlab-test-python")
    return KernelManager(kernel_name="vdmlab-test-python",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))


def test_every_notebook_of_the_issue_is_present():
    assert set(EXPECTED) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_notebook_has_rendered_figures_and_no_errors(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), f"{path.name} was saved without running every cell"
    assert not errors(nb), f"{path.name} was saved with errors: {errors(nb)}"
    assert png_count(nb) >= 1, f"{path.name} has no rendered figure"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes; keep figures small (dpi ~80)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_notebook_matches_its_source(path):
    source = NOTEBOOK_DIR / "_sources" / f"{path.stem}.py"
    spec = importlib.util.spec_from_file_location(f"_nb_source_{path.stem}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = [(kind, textwrap.dedent(text).strip("\n")) for kind, text in module.CELLS]
    saved = [(cell.cell_type, cell.source) for cell in nbformat.read(path, as_version=4).cells]
    assert saved == expected, f"{path.name} is out of date: run python notebooks/_build.py {path.stem[:2]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_top_to_bottom(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start from a blank notebook: every figure below is produced by this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, km=kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failing cell
    assert not errors(nb)
    assert png_count(nb) >= 1, f"{path.name} produced no PNG figure"
