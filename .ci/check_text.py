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
   (``[text](chNN_name.ipynb)``, ``{doc}`chNN_name```);
4. on a name no chapter defines: a code name written in a page's prose (in
   backticks, outside fenced blocks: ``head_report``, ``p_boost``, ``fit()``; a
   name with an underscore or call parentheses and at least one lowercase letter)
   must occur in the code or the printed output of that chapter or an earlier one
   (by chapter number), or be a graded exercise of that chapter or an earlier one.
   A name no chapter's code or output shows at all must at least be a name of the
   ``toylab`` package (a library name the prose mentions in passing); used before
   any chapter shows it, or nowhere at all, it is a finding;
5. on a stale cross-reference: a code name referred to another chapter
   (``head_report`` (chapter 4), chapter 4's ``head_report``) must occur in that
   chapter; a section named in quotes (section "One token of context, or two?")
   must be a heading of the page, or of the chapter named right after it; and a
   glossary entry that points to a chapter ("... (chapter 8).") must name a term
   that chapter uses. (A reference to an idea in words, "chapter 3's second
   route", is beyond a text check: the review reads those.)

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


_IDENT = re.compile(r"[A-Za-z_]\w*")
# a code name in prose: `name` or `name()`, one backticked identifier on its own
_CODE_NAME = re.compile(r"(?<![`\w])`([A-Za-z_]\w*)(\(\))?`(?![`\w])")
_FENCED = re.compile(r"(?ms)^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$")
_NAME_XREF = re.compile(r"`([A-Za-z_]\w*)(?:\(\))?`[^`.;\n]{0,40}?\((?:see |in )?chapter (\d+)\)"
                        r"|chapter (\d+)'s `([A-Za-z_]\w*)(?:\(\))?`")
_SECTION_XREF = re.compile(r"[Ss]ection [\"“]([^\"”\n]{2,80})[\"”](?:,? (?:of|in) chapter (\d+))?")
_HEADING = re.compile(r"(?m)^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")


def _chapter_number(stem: str) -> int | None:
    m = re.match(r"ch(\d\d)", stem)
    return int(m.group(1)) if m else None


def _pages(root: Path) -> dict[str, dict]:
    """Every page of the book: its chapter number (None for intro, glossary, ...), its prose
    (``(where, markdown)`` pieces), what its code shows (code and printed text) and all its
    text. A notebook's code is its code cells and their text outputs; a markdown page's
    code is its fenced blocks."""
    pages = {}
    for path in sorted((root / "chapters").glob("*.ipynb")):
        prose, shown = [], []
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                prose.append((f"chapters/{path.name} cell {i}", source))
            elif cell["cell_type"] == "code":
                shown.append(source)
                for out in cell.get("outputs", []):
                    text = out.get("text") or out.get("data", {}).get("text/plain", "")
                    shown.append("".join(text))
        pages[path.stem] = {"prose": prose, "shown": "\n".join(shown)}
    for path in sorted((root / "chapters").glob("*.md")):
        text = path.read_text()
        pages[path.stem] = {"prose": [(f"chapters/{path.name}", text)],
                            "shown": "\n".join(m.group(0) for m in _FENCED.finditer(text))}
    for stem, page in pages.items():
        page["number"] = _chapter_number(stem)
        page["all"] = page["shown"] + "\n" + "\n".join(t for _, t in page["prose"])
        page["headings"] = {h.strip().strip("*_`").lower() for _, t in page["prose"]
                            for h in _HEADING.findall(_FENCED.sub(" ", t))}
    return pages


def _glossary_entries(text: str) -> list[tuple[list[str], str]]:
    """``(names of the term, body)`` per entry of the glossary's ``**Term (alias)**`` list."""
    entries = []
    for m in re.finditer(r"(?m)^\*\*(.+?)\*\*[ \t]*\n((?:[:  ].*\n?)*)", text):
        head = m.group(1)
        names = [n.strip() for n in head.split("(")[0].split(";")]
        if "(" in head:
            names += [a.strip() for a in head.split("(", 1)[1].rstrip(")").split(",")]
        entries.append(([n for n in names if len(n) > 1], m.group(2)))
    return entries


def name_findings(root: Path) -> list[str]:
    """Checks 4 and 5 of the module docstring: names no chapter defines, stale references."""
    pages = _pages(root)
    by_number = {p["number"]: p for p in pages.values() if p["number"] is not None}
    # the first chapter whose code or output shows a name, or that grades it as an exercise
    first: dict[str, int] = {}
    sources = [(p["number"], _IDENT.findall(p["shown"])) for p in by_number.values()]
    for path in sorted((root / "exercises").glob("ch*.py")):
        sources.append((_chapter_number(path.stem), re.findall(r"(?m)^def (\w+)", path.read_text())))
    for n, names in sources:
        for name in names:
            first[name] = min(first.get(name, n), n)
    library = {name for path in sorted((root / "toylab").rglob("*.py"))
               for name in _IDENT.findall(path.read_text())}
    found = []
    for stem, page in sorted(pages.items()):
        n = page["number"]
        for where, text in page["prose"]:
            prose = _FENCED.sub(" ", text)
            for m in _CODE_NAME.finditer(prose):
                name = m.group(1)
                if ("_" not in name and not m.group(2)) or not re.search("[a-z]", name):
                    continue
                shown_in = first.get(name)
                if shown_in is None and name not in library:
                    found.append(f"{where}: `{name}` is a name no chapter defines (no chapter's "
                                 "code or output shows it, no exercise has it, toylab has no such name)")
                elif shown_in is not None and n is not None and shown_in > n:
                    found.append(f"{where}: `{name}` is used before any chapter defines it "
                                 f"(first shown in chapter {shown_in})")
            for m in _NAME_XREF.finditer(prose):
                name, ch = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                target = by_number.get(int(ch))
                if target is None:
                    found.append(f"{where}: `{name}` is referred to chapter {ch}, which does not exist")
                elif not re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", target["all"]):
                    found.append(f"{where}: `{name}` is referred to chapter {ch}, which never "
                                 "mentions it (a stale cross-reference)")
            for m in _SECTION_XREF.finditer(prose):
                title, ch = m.group(1).strip().lower(), m.group(2)
                target = by_number.get(int(ch)) if ch else page
                if target is None or title not in target["headings"]:
                    in_ = f"chapter {ch}" if ch else "this page"
                    found.append(f"{where}: section {m.group(1)!r} is not a heading of {in_} "
                                 "(a stale cross-reference)")
    glossary = root / "chapters" / "glossary.md"
    if glossary.exists():
        for names, body in _glossary_entries(glossary.read_text()):
            for ch in sorted({int(c) for c in re.findall(r"\bchapter (\d+)\b", body)}):
                target = by_number.get(ch)
                text = target["all"].lower() if target else ""
                if not any(name.lower() in text for name in names):
                    found.append(f"chapters/glossary.md: the entry {names[0]!r} points to chapter "
                                 f"{ch}, which never uses the term (a stale cross-reference)")
    return found


def findings(root: Path) -> list[str]:
    found = name_findings(root)
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
    print("check_text: no project jargon, every toylab name exists, every page link resolves,"
          " every code name in the prose is defined, every cross-reference holds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
