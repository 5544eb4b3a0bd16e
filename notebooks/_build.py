"""Write the teaching notebooks from their sources and execute them, so that the saved .ipynb files carry outputs.

Each notebook is defined in ``notebooks/_sources/NN_name.py`` as a list ``CELLS`` of ``("markdown", text)`` and
``("code", text)`` pairs (plain Python strings, dedented here, so that diffs stay readable). This script turns every
source into ``notebooks/NN_name.ipynb``, runs it top to bottom with nbclient (working directory: ``notebooks/``) and
saves it with its outputs and figures.

    python notebooks/_build.py                 # every notebook
    python notebooks/_build.py 03 05           # only the notebooks whose name starts with 03 or 05
    python notebooks/_build.py --no-execute    # write the notebooks without outputs

The tests (``tests/test_notebooks.py``) execute the saved notebooks again; edit the sources, not the .ipynb files.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "_sources"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def load_cells(path: Path) -> list[tuple[str, str]]:
    """The ``CELLS`` list of one source file: (kind, text) pairs, kind "markdown" or "code"."""
    spec = importlib.util.spec_from_file_location(f"_nb_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cells = [(kind, textwrap.dedent(text).strip("\n")) for kind, text in module.CELLS]
    unknown = {kind for kind, _ in cells} - {"markdown", "code"}
    if unknown:
        raise ValueError(f"{path.name}: unknown cell kinds {unknown}")
    return cells


def make_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """An nbformat v4 notebook with the python3 kernel and the given cells (no outputs)."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in cells:
        nb.cells.append(new_markdown_cell(text) if kind == "markdown" else new_code_cell(text))
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small between builds
        cell["id"] = f"cell-{i:02d}"
    return nb


def kernel_manager(kernel_dir: Path):
    """A kernel manager whose kernel runs *this* interpreter (the one vdmlab is installed in), whatever kernels
    ``jupyter kernelspec list`` knows: the spec is written to ``kernel_dir``."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    write_kernel_spec(kernel_dir / "vdmlab-python")
    return KernelManager(kernel_name="vdmlab-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))


def execute(nb: nbformat.NotebookNode, timeout: int = 600, cwd: Path = HERE) -> float:
    """Run ``nb`` in place in a fresh kernel with ``cwd`` (``notebooks/``) as working directory; returns seconds.

    Raises nbclient's ``CellExecutionError`` on the first cell that fails.
    """
    from nbclient import NotebookClient

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vdmlab-kernel-") as kernel_dir:
        client = NotebookClient(nb, km=kernel_manager(Path(kernel_dir)), timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    nb.metadata["kernelspec"] = dict(KERNEL)  # the temporary kernel's name is not kept in the saved file
    return time.time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="build only the notebooks whose name starts with one of these")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    sources = sorted(p for p in SOURCES.glob("[0-9][0-9]_*.py"))
    if args.prefixes:
        sources = [p for p in sources if any(p.stem.startswith(prefix) for prefix in args.prefixes)]
    if not sources:
        sys.exit(f"no notebook source matches {args.prefixes} in {SOURCES}")
    for path in sources:
        nb = make_notebook(load_cells(path))
        target = HERE / f"{path.stem}.ipynb"
        if not args.no_execute:
            seconds = execute(nb)
            print(f"{target.name}: executed in {seconds:.1f} s")
        nbformat.validate(nb)
        nbformat.write(nb, target)
        print(f"{target.name}: {target.stat().st_size / 1024:.0f} KiB written")


if __name__ == "__main__":
    main()
