#!/usr/bin/env python3
"""Check the text a student reads: no project jargon, no stale toylab names.

    python .ci/check_text.py [ROOT]

Reads (without executing anything) the book's pages (``chapters/*.md`` and the
markdown and code cells of ``chapters/*.ipynb``), the exercise stubs
(``exercises/*.py``) and the README, and fails

1. on project jargon in student text: the words of the lab's own work tracking
   (``issue 10``, ``issue 11 §3``, "acceptance", "TODO", "FIXME", "XXX") — a student
   reads a chapter, not the project's tickets;
2. on a dotted ``toylab.`` name that does not exist: every ``toylab.a.b`` or
   ``toylab.a.b.name`` written in that text must be an importable module, or an
   attribute of one (a renamed or moved function leaves a stale name behind);
3. on a link to a page of the book that is not in ``chapters/``
   (``[text](chNN_name.ipynb)``, ``{doc}`chNN_name```).

Exit status 0 when the text is clean, 1 with one line per finding otherwise.
``make book`` runs it before building; ``tests/test_chapters.py`` runs it too.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

JARGON = re.compile(r"\b(issues? \d+|acceptance|TODO|FIXME|XXX)\b", re.IGNORECASE)
TOYLAB_NAME = re.compile(r"(?<![\w./-])toylab(?:\.[A-Za-z_]\w*)+")
PAGE_LINK = re.compile(r"\]\(((?:ch\d\d|intro|glossary|bibliography|hooks_cheatsheet|run_it_yourself)"
                       r"[\w-]*)(?:\.(?:ipynb|md))?(?:#[\w-]*)?\)"
                       r"|\{doc\}`(?:[^<`]*<)?([\w-]+)>?`")


def student_texts(root: Path) -> list[tuple[str, str]]:
    """``(where, text)`` for every piece of student-facing text under ``root``."""
    out = []
    chapters = root / "chapters"
    for path in sorted(chapters.glob("*.md")):
        out.append((f"chapters/{path.name}", path.read_text()))
    for path in sorted(chapters.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] in ("markdown", "code"):
                out.append((f"chapters/{path.name} cell {i}", "".join(cell["source"])))
    for path in sorted((root / "exercises").glob("*.py")):
        out.append((f"exercises/{path.name}", path.read_text()))
    out.append(("README.md", (root / "README.md").read_text()))
    return out


def resolves(name: str) -> bool:
    """Whether ``toylab.a.b.c`` is a module or an attribute reachable from one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def findings(root: Path) -> list[str]:
    found = []
    pages = {p.stem for p in (root / "chapters").glob("*.ipynb")} | {p.stem for p in (root / "chapters").glob("*.md")}
    checked: dict[str, bool] = {}
    for where, text in student_texts(root):
        if not where.startswith("README"):
            for m in JARGON.finditer(text):
                found.append(f"{where}: project jargon {m.group(0)!r} in student text")
        for m in TOYLAB_NAME.finditer(text):
            name = m.group(0).rstrip(".")
            if name not in checked:
                checked[name] = resolves(name)
            if not checked[name]:
                found.append(f"{where}: {name} does not exist (renamed or moved?)")
        if where.startswith("chapters/"):
            for m in PAGE_LINK.finditer(text):
                page = m.group(1) or m.group(2)
                if page not in pages:
                    found.append(f"{where}: link to page {page!r}, which chapters/ does not have")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    found = findings(root)
    for line in found:
        print(line)
    if found:
        print(f"check_text: {len(found)} finding(s) in the student text", file=sys.stderr)
        return 1
    print("check_text: no project jargon, every toylab name exists, every page link resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
