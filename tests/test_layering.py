"""The package layering, checked on every run: imports point down only, and there is no cycle.

    errors <- format <- container <- stream <- model <- pipeline <- top level

(see docs/ARCHITECTURE.md). Every import in wstream/ counts, including those inside functions
(a lazy import is still a dependency). A module may import its own layer or any layer below,
never one above; among modules, import edges form no cycle. A new module is placed by its
folder; a new top-level module must be added to TOP_LEVEL below (a decision, not an accident).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import wstream

ROOT = Path(wstream.__file__).parent
LAYERS = ("errors", "format", "container", "stream", "model", "pipeline", "top")
RANK = {name: i for i, name in enumerate(LAYERS)}
BOTTOM = {"wstream.errors", "wstream._version"}  # the error family and the version string
TOP_LEVEL = {
    "wstream",
    "wstream.pack",
    "wstream.pack_folds",
    "wstream.unpack",
    "wstream.run",
    "wstream.ask",
    "wstream.cli",
    "wstream.demo",
    "wstream.synthetic",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> str:
    if module in BOTTOM:
        return "errors"
    if module in TOP_LEVEL:
        return "top"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in RANK and parts[1] not in ("errors", "top"):
        return parts[1]
    raise AssertionError(
        f"{module}: not in any layer; put it in a layer's folder, or add it to TOP_LEVEL"
    )


def _resolve(module: str, target: str, names: list[str]) -> list[str]:
    """The wstream modules an import statement in ``module`` loads."""
    if not target.startswith("wstream"):
        return []
    found = [target] if target in MODULES else []
    # `from wstream.format import spec` imports the submodule wstream.format.spec.
    found += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    if not found:
        raise AssertionError(f"{module}: imports {target!r}, which is not a wstream module")
    if target in MODULES and len(found) > 1 and all(f"{target}.{n}" in MODULES for n in names):
        found.remove(target)  # only submodules named: the package's own code is not what is used
    return found


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.update(_resolve(module, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.update(_resolve(module, base, [a.name for a in node.names]))
    out.discard(module)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)
    assert {layer_of(m) for m in MODULES} >= {"errors", "format", "container", "stream", "model"}


def test_no_upward_import() -> None:
    upward = [
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if RANK[layer_of(t)] > RANK[layer_of(m)]
    ]
    assert upward == []


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle() is None


def test_the_checker_sees_an_upward_import_and_a_cycle() -> None:
    # The checks can fail: an edge from the reader up to the loader is both (the old cycle).
    GRAPH["wstream.container.reader"].add("wstream.stream.loader")
    try:
        with pytest.raises(AssertionError):
            test_no_upward_import()
        assert _cycle() is not None
    finally:
        GRAPH["wstream.container.reader"].discard("wstream.stream.loader")


@pytest.mark.parametrize("layer", ["format", "container", "stream", "model"])
def test_importing_a_layer_loads_nothing_above_it(layer: str) -> None:
    """At run time too (dynamic imports included): import every module of the layer in a fresh
    interpreter and list the wstream modules that got loaded."""
    mods = [m for m in MODULES if layer_of(m) == layer]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in mods)
        + ("print('\\n'.join(m for m in sys.modules if m.startswith('wstream')))")
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = [m for m in done.stdout.split() if m in MODULES and m != "wstream"]
    above = [m for m in loaded if RANK[layer_of(m)] > RANK[layer]]
    assert above == []
