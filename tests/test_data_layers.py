"""The data layer imports in one direction: every module of vdmlab.data imports first, on its own, in a fresh
interpreter, and the imports between its modules (module level or inside functions) form no cycle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import vdmlab.data

DATA = Path(vdmlab.data.__file__).parent
MODULES = sorted(p.stem for p in DATA.glob("*.py") if p.stem != "__init__")


def data_imports(path: Path) -> set[str]:
    """The vdmlab.data modules a file imports anywhere (top level or in a function body)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vdmlab.data"):
            if node.module == "vdmlab.data":  # from vdmlab.data import base, ...
                found |= {alias.name for alias in node.names if alias.name in MODULES}
            else:
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("vdmlab.data.")}
    return found


def test_the_imports_between_data_modules_form_no_cycle():
    graph = {name: data_imports(DATA / f"{name}.py") - {name} for name in MODULES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"the data modules import each other in a cycle: {error.args[1]}") from error
    assert set(order) == set(MODULES)
    assert graph["datasets"] == graph["samplers"] == set()  # the bottom of the layer
    assert graph["device"] == {"datasets", "samplers"} and "device" in graph["base"]


ISOLATED_IMPORTS = """
import importlib, sys, types
from pathlib import Path
import vdmlab
data = Path(vdmlab.__file__).parent / "data"
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "vdmlab.data" or k.startswith("vdmlab.data.")]:
        del sys.modules[key]
    package = types.ModuleType("vdmlab.data")  # the package without its __init__, which imports every module
    package.__path__ = [str(data)]
    sys.modules["vdmlab.data"] = package
    importlib.import_module(f"vdmlab.data.{name}")  # a cycle fails here: a partially initialised module
    print("imported", name, "first")
"""


def test_every_data_module_imports_first_on_its_own_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DATA.parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *MODULES], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [f"imported {name} first" for name in MODULES]
