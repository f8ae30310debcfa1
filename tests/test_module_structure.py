"""toylab's modules form no import cycle, and each imports on its own in a fresh interpreter.

The hook machinery (toylab.hooks) is the bottom layer: it imports nothing from toylab.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "toylab"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """toylab modules that ``name`` imports anywhere in its body (also inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module that t names (a "from x import name" may name a function)
            while t and t not in MODULES:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found




def test_the_toylab_import_graph_has_no_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # a package's __init__ importing its own submodules is not a cycle edge back up
    for name in graph:
        graph[name] = {d for d in graph[name] if not (name.startswith(d + ".") and d in MODULES
                                                      and MODULES[d].name == "__init__.py"
                                                      and d == "toylab")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_hooks_is_the_bottom_layer():
    assert _imports("toylab.hooks", MODULES["toylab.hooks"]) == set()
    assert "toylab.hooks" in _imports("toylab.causal.attribution", MODULES["toylab.causal.attribution"])


@pytest.mark.parametrize("name", ["toylab.hooks", "toylab.causal.attribution", "toylab.model"])
def test_the_bottom_modules_import_alone_in_a_fresh_interpreter(name):
    code = f"import {name}"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"`{code}` failed in a fresh interpreter:\n{run.stderr[-2000:]}"


def test_every_module_imports_first_with_no_toylab_module_loaded():
    """One child interpreter; before each import every toylab module is dropped from
    sys.modules, so each module is the first toylab import (as in a fresh interpreter,
    without paying torch's import once per module)."""
    code = ("import sys, importlib, traceback\n"
            f"names = {sorted(MODULES)!r}\n"
            "bad = []\n"
            "for name in names:\n"
            "    for m in [m for m in sys.modules if m == 'toylab' or m.startswith('toylab.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception:\n"
            "        bad.append(name + ':\\n' + traceback.format_exc(limit=3))\n"
            "print('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"modules that fail when imported first:\n{run.stdout[-3000:]}{run.stderr[-2000:]}"


def test_cache_helpers_say_where_they_come_from_without_attribution():
    code = ("import torch, sys\n"
            "from toylab.model import AttnOnlyTransformer, ModelConfig\n"
            "assert 'toylab.causal.attribution' not in sys.modules\n"
            "m = AttnOnlyTransformer(ModelConfig(d_vocab=8, n_ctx=4, d_model=8, n_layers=1))\n"
            "_, cache = m.run_with_cache(torch.zeros(1, 4, dtype=torch.long))\n"
            "try:\n    cache.decompose_resid()\nexcept AttributeError as e:\n    print(e)\n"
            "import toylab.causal.attribution\n"
            "print(cache.decompose_resid()[1])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    first, second = run.stdout.strip().splitlines()
    assert "added by toylab.causal.attribution" in first and "import toylab.causal.attribution" in first
    assert second.startswith("['embed'") and second.endswith("'0_attn_out']")


# The layers of the package, bottom first: a module may import from its own layer and the
# layers before it, never from a later one. The folders are the book's Parts.
LAYERS = [
    ["toylab", "toylab.hooks", "toylab.factored", "toylab.files", "toylab.plot"],
    ["toylab.blocks"],
    ["toylab.model"],
    ["toylab.data"],
    ["toylab.circuits"],
    ["toylab.causal"],
    ["toylab.neurons"],
    ["toylab.training"],
    ["toylab.features"],
    ["toylab.discovery"],
    ["toylab.interop"],
    ["toylab.suite"],
    ["toylab.course"],
    ["toylab.cli"],
]
TOP_LEVEL_LIMIT = 8
LINE_LIMIT = 400


def _layer(name: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and p.count(".") > depth and (p != "toylab" or name == p):
                best, depth = i, p.count(".")
    assert best is not None, f"{name} belongs to no layer of LAYERS: add it to the layer of its Part"
    return best


def test_imports_go_down_the_layers_only():
    upward = []
    for name, path in MODULES.items():
        for dep in _imports(name, path):
            if _layer(dep) > _layer(name):
                upward.append(f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_at_most_eight_modules_sit_directly_in_toylab():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= TOP_LEVEL_LIMIT, f"{len(top)} modules directly in toylab/ (at most {TOP_LEVEL_LIMIT}): {top}"


def test_no_module_is_over_400_lines_unless_its_docstring_says_why():
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        n = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > LINE_LIMIT and "longer than the lab's usual 400 lines on purpose" not in doc:
            long.append(f"{name}: {n} lines")
    assert not long, "modules over 400 lines without a reason in their docstring: " + ", ".join(long)
