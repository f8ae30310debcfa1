"""``toylab release OUT``: the students' copy of the course.

The copy holds what a student needs to read the book, do the exercises and grade them:
``chapters/`` (no build output), ``exercises/``, the ``toylab`` package with its shipped models,
the visible graded tests in ``tests/exercises/``, ``README.md``, ``DESIGN.md``, ``pyproject.toml``
and the ``Makefile``. It leaves out ``solutions/`` and every graded test marked
``@pytest.mark.hidden`` (cut out of its file with its decorators; the file must still compile
and no ``hidden`` marker may be left, or the release stops with an error). Nothing of
``.git``, caches or build folders is copied.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

COPIED = ("chapters", "exercises", "toylab", "README.md", "DESIGN.md", "pyproject.toml", "Makefile")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "_build", ".ipynb_checkpoints", "*.egg-info",
                                  ".pytest_cache")


def _is_hidden(dec: ast.expr) -> bool:
    return isinstance(dec, ast.Attribute) and dec.attr == "hidden" and isinstance(dec.value, ast.Attribute) \
        and dec.value.attr == "mark"


def strip_hidden(source: str, filename: str = "<test file>") -> tuple[str, list[str]]:
    """``source`` without its tests marked ``@pytest.mark.hidden``; also the names removed."""
    tree = ast.parse(source, filename)
    lines = source.splitlines(keepends=True)
    cut, names = [], []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(_is_hidden, node.decorator_list)):
            first = min(d.lineno for d in node.decorator_list)
            cut.append((first - 1, node.end_lineno))
            names.append(node.name)
    for start, end in reversed(cut):
        del lines[start:end]
    out = "".join(lines)
    left = [n for n in ast.walk(ast.parse(out, filename)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                           ast.ClassDef))
            and any(map(_is_hidden, n.decorator_list))]
    if left:
        raise ValueError(f"{filename}: a hidden marker is left after cutting out the hidden tests (a hidden "
                         "test that is not a top-level function?); fix the file before releasing")
    return out, names


def release(out: str | Path, root: Path | None = None) -> dict:
    """Write the students' copy into the new or empty folder ``out``; returns what was left out."""
    from toylab.course.answers import repo_root

    root = Path(root or repo_root()).resolve()
    out = Path(out).expanduser().resolve()
    if out == root or root in out.parents:
        raise ValueError(f"release folder {out} is inside the repository {root}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"release folder {out} exists and is not empty: give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=_IGNORED, symlinks=False)
        elif src.is_file():
            shutil.copy2(src, out / name)
    tests = out / "tests" / "exercises"
    tests.mkdir(parents=True)
    if (root / "tests" / "conftest.py").is_file():
        shutil.copy2(root / "tests" / "conftest.py", out / "tests" / "conftest.py")
    hidden = {}
    for src in sorted((root / "tests" / "exercises").glob("*.py")):
        text, names = strip_hidden(src.read_text(), src.name)
        (tests / src.name).write_text(text)
        if names:
            hidden[src.name] = names
    return {"out": str(out), "hidden_tests": hidden, "left_out": ["solutions/", ".git"]}
