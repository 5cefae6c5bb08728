"""The project uses only the public API of the standard library and its dependencies (issue 24): no private module,
attribute or function (a name starting with one underscore), no monkeypatching of another package's module.

Every file of ``qsfl/``, ``tuning/``, ``reports/`` and ``qsfl_cli.py`` is read with ``ast``; names bound by an
import of another package are "foreign", and the checks below apply to them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN = {"qsfl", "tuning", "reports", "qsfl_cli"}
SOURCES = sorted([*(ROOT / "qsfl").rglob("*.py"), *(ROOT / "tuning").rglob("*.py"), *(ROOT / "reports").rglob("*.py"),
                  ROOT / "qsfl_cli.py"])

#: modules of the standard library that its documentation does not present as an API (multiprocessing's machinery)
PRIVATE_MODULES = {f"multiprocessing.{m}" for m in (
    "forkserver", "resource_tracker", "resource_sharer", "util", "spawn", "popen_fork", "popen_forkserver",
    "popen_spawn_posix", "popen_spawn_win32", "synchronize", "reduction", "heap")}
#: documented public names that start with an underscore
PUBLIC_UNDERSCORED = {"os._exit", "sys._getframe"}
#: the one exception, with its reason: PyTorch documents ``TorchDispatchMode`` (``__torch_dispatch__``, "Extending
#: PyTorch") only under this module and offers no other path (qsfl/engine/batched.py: _dry_run_bytes)
ALLOWED_IMPORTS = {("torch.utils._python_dispatch", "TorchDispatchMode")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def violations(source: str) -> list[str]:
    """The private-API uses of one module's source, as ``line: what``."""
    tree = ast.parse(source)
    foreign: dict[str, str] = {}   # local name -> the dotted foreign object it is bound to
    found: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{getattr(node, 'lineno', '?')}: {what}")

    def check_module(node: ast.AST, module: str) -> None:
        if module.split(".")[0] in OWN or module == "__future__":
            return
        if module in PRIVATE_MODULES or any(_private(p) for p in module.split(".")):
            bad(node, f"private module {module}")

    for node in ast.walk(tree):   # imports first (lazy ones inside functions too)
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(node, alias.name)
                if alias.name.split(".")[0] not in OWN:
                    foreign[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OWN or node.module == "__future__":
                continue
            for alias in node.names:
                if (node.module, alias.name) in ALLOWED_IMPORTS:
                    continue
                check_module(node, node.module)
                full = f"{node.module}.{alias.name}"
                if _private(alias.name) or full in PRIVATE_MODULES:
                    bad(node, f"private name {full}")
                foreign[alias.asname or alias.name] = full
    handles = set(foreign)   # + names bound to a module looked up by name (importlib / sys.modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Call, ast.Subscript)):
            target = node.value.func if isinstance(node.value, ast.Call) else node.value.value
            if _dotted(target) in ("importlib.import_module", "sys.modules.get", "sys.modules", "__import__"):
                handles |= {t.id for t in node.targets if isinstance(t, ast.Name)}

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            dotted = _dotted(node)
            if dotted is not None and dotted.split(".")[0] in foreign:
                full = ".".join([foreign[dotted.split(".")[0]], *dotted.split(".")[1:]])
                if full not in PUBLIC_UNDERSCORED:
                    bad(node, f"private attribute {full}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id in ("getattr", "setattr", "delattr", "hasattr") and len(node.args) >= 2:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                    bad(node, f"{node.func.id}(..., {name.value!r})")
                owner = node.args[0]
                if node.func.id in ("setattr", "delattr") and isinstance(owner, ast.Name) and owner.id in handles:
                    bad(node, f"{node.func.id} on the foreign module {owner.id}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                base = target
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in handles:
                    bad(node, f"assignment into the foreign module or object {_dotted(target)}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_api_of_the_standard_library_or_a_dependency(path):
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("source", [
    "import multiprocessing.forkserver",
    "from multiprocessing import resource_tracker",
    "from multiprocessing.util import Finalize",
    "import atexit\natexit._run_exitfuncs()",
    "import atexit\nrun = getattr(atexit, '_run_exitfuncs', None)",
    "import multiprocessing.forkserver as fs\nfs._forkserver._forkserver_pid",
    "import argparse\ndef f(sub: argparse._SubParsersAction): pass",
    "import torch\ntorch._foreach_copy_(a, b)",
    "from torch.utils import _pytree",
    "import importlib, random\nmodule = importlib.import_module('distributed.scheduler')\nmodule.random = random.Random()",
    "import dask\nsetattr(dask, 'config', None)",
    "import distributed.utils\ndistributed.utils.mp_context = None",
])
def test_the_check_finds_each_kind_of_private_use(source):
    assert violations(source), source


def test_the_check_leaves_public_and_own_code_alone():
    source = ("import os, signal\nimport multiprocessing as mp\nfrom tuning import workers\n"
              "class A:\n    def f(self):\n        self._x = 1\n        workers._SETUP_DONE.clear()\n"
              "ctx = mp.get_context('forkserver')\nctx.set_forkserver_preload(['torch'])\nos._exit(0)\n"
              "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n")
    assert violations(source) == []
