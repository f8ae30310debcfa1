"""The chapters say what their cells show: code lines fit the page, quoted numbers are printed.

Runs over every chapter notebook ``chapters/ch*.ipynb`` as stored (with its outputs);
nothing is executed, so the whole file takes well under a second per chapter.

1. Every line of every code cell, and every line a code cell prints as text (a
   stream, or a ``text/plain`` result that is not shown as HTML or an image), is at
   most 76 characters: a code block of the built book shows about 76 at its default
   width, and longer lines scroll sideways. ``WIDE_OUTPUT`` lists the chapters
   excused from the output half, each with the reason (none today).
3. Heads are named one way, ``L1H0`` (layer 1, head 0), as the library prints
   them: no ``head 1.0`` or ``0.0 -> 1.1`` in prose, code or outputs.
2. Every number quoted in a markdown cell appears in the same notebook, at the same
   precision, either in an output (the ``text/plain`` data or a stream of a code
   cell) or in the source of a code cell (a parameter the reader sees being set,
   e.g. a learning rate). "Same precision" means the digits as written: prose
   ``0.95`` needs ``0.95`` in an output, not ``0.951`` or ``0.9500``.

What counts as a quoted number (the class this test can check):

- a decimal, ``4.84``, ``0.21``, also when it is followed by ``x``/``×`` (``1.2x``)
  or preceded by a sign (the sign is ignored: the digits must match);
- a percentage, ``58%``; it is matched by ``58%`` or by the same share written as
  a fraction with as many digits as the percentage has (``0.58``), since cells
  print shares as fractions and prose reads them as percentages.

What it cannot check, and leaves alone:

- integers (``8 positions``, ``127 tokens``, ``chapter 4``, a year): most are
  counts fixed by the construction, section references or sizes, and telling a
  measured count from a structural one would need a reader;
- numbers inside fenced code blocks in markdown (shell commands, snippets);
- numbers written out as words, or ranges written as ``0.14–0.26`` (each end is
  checked as a number of its own);
- numbers in figures (images cannot be read back; a figure's numbers must also
  be printed by a cell for the prose to quote them).

``ALLOWED`` lists, per notebook, the few numbers that are derivations or
definitions rather than results, each with the reason. Keep it short: a number
that a cell can print should be printed.

4. Every chapter has its learning aids: "What you will learn" and "What you need"
   before its first code cell, a closing ``## Summary`` (only ``## Exercises`` may
   follow), at least two "Predict, then run" tip admonitions each right before a
   code cell, and the ``hide-input`` tag on every cell that draws a figure.
   ``KNOWN_GAPS`` lists the gaps a chapter may still have, by kind, with the reason.
5. ``.ci/check_text.py`` finds nothing in the student text (jargon, stale names,
   dead links, names no chapter defines, stale cross-references); each check has
   a catch test here.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("ch*.ipynb"))
MAX_LINE = 76

# Chapters whose printed text may be wider than MAX_LINE, with the reason. Keep it
# empty: a wide print can almost always be split over two lines or narrowed.
WIDE_OUTPUT: dict[str, str] = {}

# number in prose: optional sign, digits, '.', digits (a decimal), or digits followed by '%'
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(\d+\.\d+|\d+(?:\.\d+)?%)(?![\d])")

# Numbers quoted in markdown that no cell prints, with the reason they may stay.
ALLOWED: dict[str, dict[str, str]] = {
    "ch00_transformer_from_scratch": {},
    "ch01_zero_layers": {},
    "ch02_one_layer": {},
    "ch03_two_layers": {
        # sqrt(2/pi) = 0.798: the mean of |cos| relative to its rms for rank one, a
        # textbook fact quoted in the derivation (the cell shows it numerically:
        # mean 0.0991 against rms 0.1242 at d_head = 1)
        "0.8": "derivation: sqrt(2/pi) for rank-one heads",
    },
    "ch04_induction_heads": {},
    "ch05_interventions": {
        # "of order 1/14 ≈ 0.07": arithmetic on the number of scored predictions (14),
        # the size one single-position patch can have, not a measured result
        "0.07": "arithmetic: 1/14",
    },
}


def _texts(nb):
    """(markdown cells, output texts, code sources) of a notebook."""
    md, out, code = [], [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            md.append((i, cell.source))
        elif cell.cell_type == "code":
            code.append(cell.source)
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream":
                    out.append(o.get("text", ""))
                elif "data" in o and "text/plain" in o["data"]:
                    out.append(o["data"]["text/plain"])
    return md, "\n".join(out), "\n".join(code)


def _strip_fences(markdown: str) -> str:
    return re.sub(r"```.*?```", " ", markdown, flags=re.S)


def quoted_numbers(markdown: str) -> list[str]:
    """The numbers this test checks in one markdown cell, as written (signs dropped)."""
    return [m.group(1) for m in _NUMBER.finditer(_strip_fences(markdown))]


def _shown(number: str, haystack: str) -> bool:
    """Whether ``number`` occurs in ``haystack`` as a number of the same precision."""
    candidates = [number]
    if number.endswith("%"):
        digits = number[:-1]
        if "." not in digits:
            candidates.append(f"{int(digits) / 100:.{max(2, len(digits))}f}")
    for c in candidates:
        if re.search(r"(?<![\d.])" + re.escape(c) + r"(?![\d])", haystack):
            return True
    return False


def unshown_numbers(nb, allowed: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """``(markdown cell index, number)`` for every quoted number no cell shows."""
    allowed = allowed or {}
    md, outputs, code = _texts(nb)
    missing = []
    for i, source in md:
        for number in quoted_numbers(source):
            if number in allowed:
                continue
            if not (_shown(number, outputs) or _shown(number, code)):
                missing.append((i, number))
    return missing


def test_the_number_check_catches_what_it_should():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("lr = 3e-3\nx = 0.25", outputs=[nbformat.v4.new_output(
            "stream", name="stdout", text="loss 0.951, share 0.58, ratio 1.2x\n")]),
        nbformat.v4.new_markdown_cell(
            "Loss 0.95 (no: printed 0.951), share 58% (yes), ratio 1.2x (yes),"
            " x = 0.25 (set in code), 0.9510 (no), 12% (no).\n```\nrun 9.99\n```"),
    ])
    assert unshown_numbers(nb) == [(1, "0.95"), (1, "0.9510"), (1, "12%")]
    assert unshown_numbers(nb, {"0.95": "why", "0.9510": "why", "12%": "why"}) == []
    assert quoted_numbers("head 1.1 scores −0.24 and +0.03") == ["1.1", "0.24", "0.03"]


def _printed_text(cell) -> str:
    """What a code cell prints that the book shows as text: its streams, run
    together as the page shows them, and the ``text/plain`` of results that carry
    no HTML or image (the page shows those instead), each on lines of its own."""
    printed = ""
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            printed += o.get("text", "")
        elif "data" in o and "text/plain" in o["data"]:
            if not any(k in o["data"] for k in ("text/html", "image/png", "image/svg+xml")):
                sep = "\n" if printed and not printed.endswith("\n") else ""
                printed += sep + o["data"]["text/plain"] + "\n"
    return printed


def long_lines(nb, max_line: int = MAX_LINE) -> dict[str, list[tuple[int, int, int, str]]]:
    """``{"code": [...], "output": [...]}``, each entry ``(cell index, line number,
    length, the line's first 40 characters)`` for a line longer than ``max_line``:
    lines of code cells, and lines of their printed text outputs. Lines are
    numbered from 1 within the cell's source, or within the cell's printed text
    (all its text outputs joined, as the page shows them)."""
    found: dict[str, list[tuple[int, int, int, str]]] = {"code": [], "output": []}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        printed = _printed_text(cell)
        for kind, text in (("code", cell.source), ("output", printed)):
            for n, line in enumerate(text.splitlines()):
                if len(line) > max_line:
                    found[kind].append((i, n + 1, len(line), line[:40]))
    return found


def _describe(name: str, kind: str, items) -> str:
    where = "; ".join(f"cell {i} line {n} ({length} characters: {start!r}...)"
                      for i, n, length, start in items)
    return (f"{name}: {len(items)} {kind} lines longer than {MAX_LINE} characters "
            f"(cells numbered from 0): {where}")


def test_the_line_check_catches_what_it_should():
    wide = "x" * (MAX_LINE + 1)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(wide),
        nbformat.v4.new_code_cell("a = 1\n" + wide, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="short\n"),
            nbformat.v4.new_output("stream", name="stdout", text=wide + "\n"),
            nbformat.v4.new_output("execute_result", data={"text/plain": "ok\n" + wide},
                                   execution_count=1),
            nbformat.v4.new_output("display_data", data={"text/plain": wide,
                                                         "text/html": "<b>wide</b>"}),
            nbformat.v4.new_output("display_data", data={"text/plain": wide,
                                                         "image/png": "iVBOR"}),
        ]),
        nbformat.v4.new_code_cell("y" * MAX_LINE, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="z" * MAX_LINE)]),
    ])
    found = long_lines(nb)
    assert found["code"] == [(1, 2, MAX_LINE + 1, "x" * 40)]
    # the two streams join into "short\n<wide>\n", then the result "ok\n<wide>"
    assert found["output"] == [(1, 2, MAX_LINE + 1, "x" * 40), (1, 4, MAX_LINE + 1, "x" * 40)]
    message = _describe("chNN_x.ipynb", "code", found["code"])
    assert "chNN_x.ipynb" in message and "cell 1 line 2" in message
    stale = sorted(set(WIDE_OUTPUT) - {p.stem for p in NOTEBOOKS})
    assert not stale, f"WIDE_OUTPUT names chapters that do not exist: {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_code_lines_fit_the_page(path):
    found = long_lines(nbformat.read(path, as_version=4))["code"]
    assert not found, (
        _describe(path.name, "code", found)
        + ". Break the line (parenthesised continuation, a shorter local name, an f-string"
        " split in two), or move plotting boilerplate into a library helper.")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_printed_output_fits_the_page(path):
    if path.stem in WIDE_OUTPUT:
        pytest.skip(f"{path.stem}: {WIDE_OUTPUT[path.stem]}")
    found = long_lines(nbformat.read(path, as_version=4))["output"]
    assert not found, (
        _describe(path.name, "printed output", found)
        + ". Change the print: two lines instead of one, narrower table columns, a long"
        " list or repr wrapped with textwrap.fill; then re-execute the chapter.")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_numbers_in_the_prose_are_printed_by_a_cell(path):
    nb = nbformat.read(path, as_version=4)
    allowed = ALLOWED.get(path.stem, {})
    quoted = {n for _, source in _texts(nb)[0] for n in quoted_numbers(source)}
    stale = sorted(set(allowed) - quoted)
    assert not stale, f"{path.name}: ALLOWED lists {stale}, which the prose no longer quotes"
    missing = unshown_numbers(nb, allowed)
    assert not missing, (
        f"{path.name}: numbers quoted in markdown that no output or code cell shows at the "
        "same precision (markdown cell index, number): " + ", ".join(map(str, missing))
        + ". Print the number in a cell, quote it as printed, or remove the claim.")


# the older L.H style: "head 1.0", "heads 0.0 and 0.1", "0.0 -> 1.1", "0.0→1.0", "1.0's"
_OLD_HEAD = re.compile(r"\bheads?\s+\d\.\d\b(?!\d)|(?<![\d.])\d\.\d\s*(?:->|→)\s*\d\.\d(?![\d.])"
                       r"|(?<![\d.])\d\.\d's\b|\bheads? \d\.\{")


def old_head_names(text: str) -> list[str]:
    return [m.group(0) for m in _OLD_HEAD.finditer(text)]


def test_the_head_name_check_catches_the_old_style():
    assert old_head_names("head 1.0 reads 0.0 -> 1.1; 0.1's pattern; heads 0.{h}") == [
        "head 1.0", "0.0 -> 1.1", "0.1's", "heads 0.{"]
    assert old_head_names("head L1H0 reads L0H0 -> L1H1 with score 1.0; loss 0.5 -> 0.25") == []


@pytest.mark.parametrize("path", NOTEBOOKS + sorted(CHAPTERS.glob("*.md")),
                         ids=[p.stem for p in NOTEBOOKS] + [p.name for p in sorted(CHAPTERS.glob("*.md"))])
def test_heads_are_named_one_way(path):
    if path.suffix == ".md":
        texts = [path.read_text()]
    else:
        md, outputs, code = _texts(nbformat.read(path, as_version=4))
        texts = [source for _, source in md] + [outputs, code]
    found = sorted({name for t in texts for name in old_head_names(t)})
    assert not found, f"{path.name}: heads named in the old L.H style {found}; write L1H0 (toylab.model.head_name)"


def _check_text():
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_text", CHAPTERS.parent / ".ci" / "check_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_student_text_has_no_jargon_no_stale_names_and_no_dead_page_links():
    found = _check_text().findings(CHAPTERS.parent)
    assert not found, "\n".join(found)


def test_the_text_check_catches_what_it_should(tmp_path):
    ct = _check_text()
    (tmp_path / "chapters").mkdir()
    (tmp_path / "exercises").mkdir()
    (tmp_path / "README.md").write_text("issue 12 is fine in the README\n")
    (tmp_path / "chapters" / "ch01_x.md").write_text(
        "As issue 10 asks, this meets the acceptance bar. See `toylab.circuits.weights.OV` and "
        "`toylab.scores.induction_score`, [chapter 2](ch02_missing.ipynb) and [chapter 1](ch01_x.md).\n")
    found = ct.findings(tmp_path)
    assert any("'issue 10'" in f for f in found) and any("'acceptance'" in f for f in found)
    assert any("toylab.scores.induction_score does not exist" in f for f in found)
    assert not any("toylab.circuits.weights.OV" in f for f in found)
    assert any("'ch02_missing'" in f for f in found) and not any("'ch01_x'" in f for f in found)
    assert not any("README" in f for f in found)


# --- learning aids -------------------------------------------------------------------
#
# Every chapter opens with "What you will learn" and "What you need" (before its first
# code cell), ends with a Summary section (only an Exercises section may follow it), has
# at least two "Predict, then run" tip admonitions, each closing its markdown cell right
# before the code cell that answers it, and tags every cell that draws a figure (an
# image/png output) with ``hide-input`` so that the figure's code folds away.

MIN_PREDICT = 2
_PREDICT = re.compile(r"```+\{admonition\}[ \t]*Predict, then run[ \t]*\n:class:[ \t]*tip\b")
_HEADING = re.compile(r"^(#{1,2})[ \t]+(.+?)[ \t]*#*[ \t]*$")

# Gaps a chapter is known to have, by kind ("opening", "summary", "predict", "hide-input"),
# with the reason they may stay for now. Keep it empty where possible; an entry whose gap
# is gone must be removed (the test says so).
KNOWN_GAPS: dict[str, dict[str, str]] = {}


def _outside_fences(markdown: str) -> list[str]:
    """The lines of ``markdown`` that are not inside a fenced block."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _section_headings(markdown: str) -> list[str]:
    """Level-1 and level-2 headings of a markdown cell, outside fenced blocks."""
    return [m.group(2) for line in _outside_fences(markdown)
            if (m := _HEADING.match(line))]


def learning_aid_gaps(nb) -> list[tuple[str, str]]:
    """``(kind, what is missing)`` for every learning aid the notebook lacks; kinds are
    "opening", "summary", "predict" and "hide-input". Cells are numbered from 0."""
    cells, gaps = nb.cells, []
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    opening = "\n".join(c.source for c in cells[:first_code] if c.cell_type == "markdown")
    for phrase in ("What you will learn", "What you need"):
        if phrase not in opening:
            gaps.append(("opening", f"no {phrase!r} before the first code cell"))
    headings = [h for c in cells if c.cell_type == "markdown"
                for h in _section_headings(c.source)]
    content = [h for h in headings if not h.lower().startswith("exercises")]
    if not content or not content[-1].lower().startswith("summary"):
        last = repr(content[-1]) if content else "none"
        gaps.append(("summary", "does not end with a '## Summary' section (only '## Exercises'"
                                f" may follow it); its last section heading is {last}"))
    placed, misplaced = 0, []
    for i, c in enumerate(cells):
        if c.cell_type != "markdown" or not _PREDICT.search(c.source):
            continue
        closes_cell = c.source.rstrip().endswith("```")
        before_code = i + 1 < len(cells) and cells[i + 1].cell_type == "code"
        if closes_cell and before_code:
            placed += 1
        else:
            misplaced.append(i)
    if placed < MIN_PREDICT:
        where = (f"; cells {misplaced} hold one that does not close its cell right before a"
                 " code cell" if misplaced else "")
        gaps.append(("predict", f"{placed} 'Predict, then run' tip admonitions placed right"
                                f" before a code cell, fewer than {MIN_PREDICT}{where}"))
    for i, c in enumerate(cells):
        if c.cell_type != "code":
            continue
        draws = any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
        if draws and "hide-input" not in c.get("metadata", {}).get("tags", []):
            gaps.append(("hide-input", f"cell {i} draws a figure but has no 'hide-input' tag"))
    return gaps


def _chapter_with_every_aid():
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    tip = "```{admonition} Predict, then run\n:class: tip\nBefore running the next cell: ...?\n```"
    plot = nbformat.v4.new_code_cell("plt.plot(x)", outputs=[png])
    plot.metadata["tags"] = ["hide-input"]
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\n**What you will learn**\n\n- a\n\n"
                                      "**What you need**\n\n- b"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("## A section\n\nSome prose."),
        nbformat.v4.new_markdown_cell(tip),
        nbformat.v4.new_code_cell("print(x)"),
        nbformat.v4.new_markdown_cell("Prose, then a prompt.\n\n" + tip),
        plot,
        nbformat.v4.new_markdown_cell("## Summary\n\n- what we saw\n\n```python\n# not a heading\n```"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n| exercise |\n|---|"),
    ])


def test_the_learning_aid_check_catches_each_missing_piece():
    kinds = lambda nb: sorted({kind for kind, _ in learning_aid_gaps(nb)})
    assert learning_aid_gaps(_chapter_with_every_aid()) == []

    nb = _chapter_with_every_aid()               # no "What you need"
    nb.cells[0].source = "# Title\n\n**What you will learn**\n\n- a"
    assert kinds(nb) == ["opening"]
    nb = _chapter_with_every_aid()               # the opening comes after code
    nb.cells[0], nb.cells[1] = nb.cells[1], nb.cells[0]
    assert kinds(nb) == ["opening"]

    nb = _chapter_with_every_aid()               # no Summary
    nb.cells[7].source = "## Wrapping up\n\n- what we saw"
    assert kinds(nb) == ["summary"]
    nb = _chapter_with_every_aid()               # a section after the Summary
    nb.cells.append(nbformat.v4.new_markdown_cell("## Appendix"))
    assert kinds(nb) == ["summary"]

    nb = _chapter_with_every_aid()               # one prompt only
    del nb.cells[3]
    assert kinds(nb) == ["predict"]
    nb = _chapter_with_every_aid()               # a prompt followed by prose, not code
    nb.cells[5].source += "\n\nMore prose after the prompt."
    assert kinds(nb) == ["predict"]
    nb = _chapter_with_every_aid()               # a prompt before a markdown cell
    nb.cells.insert(4, nbformat.v4.new_markdown_cell("An aside."))
    gaps = learning_aid_gaps(nb)
    assert [k for k, _ in gaps] == ["predict"] and "cells [3]" in gaps[0][1]
    nb = _chapter_with_every_aid()               # a note, not a tip
    nb.cells[3].source = nb.cells[3].source.replace(":class: tip", ":class: note")
    assert kinds(nb) == ["predict"]

    nb = _chapter_with_every_aid()               # a figure whose code does not fold
    nb.cells[6].metadata["tags"] = []
    gaps = learning_aid_gaps(nb)
    assert gaps == [("hide-input", "cell 6 draws a figure but has no 'hide-input' tag")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_has_its_learning_aids(path):
    gaps = learning_aid_gaps(nbformat.read(path, as_version=4))
    known = KNOWN_GAPS.get(path.stem, {})
    stale = sorted(set(known) - {kind for kind, _ in gaps})
    assert not stale, (f"{path.name}: KNOWN_GAPS lists {stale}, which the chapter no longer"
                       " lacks; remove the entry")
    new = [what for kind, what in gaps if kind not in known]
    assert not new, (f"{path.name}: learning aids missing: " + "; ".join(new)
                     + ". Every chapter opens with 'What you will learn' and 'What you need',"
                     " ends with '## Summary', has at least two 'Predict, then run' tip"
                     " admonitions each right before the code cell that answers it, and"
                     " tags its plotting cells 'hide-input'.")


def test_known_learning_aid_gaps_name_real_chapters_and_kinds():
    stems = {p.stem for p in NOTEBOOKS}
    assert set(KNOWN_GAPS) <= stems, sorted(set(KNOWN_GAPS) - stems)
    kinds = {"opening", "summary", "predict", "hide-input"}
    assert all(set(v) <= kinds for v in KNOWN_GAPS.values())


def _write_notebook(path, cells):
    nb = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb, str(path))


def test_the_name_check_catches_undefined_names_and_stale_references(tmp_path):
    ct = _check_text()
    chapters, exercises, lib = tmp_path / "chapters", tmp_path / "exercises", tmp_path / "toylab"
    for d in (chapters, exercises, lib):
        d.mkdir()
    (tmp_path / "README.md").write_text("readme\n")
    (lib / "report.py").write_text("def head_report(model):\n    pass\n")
    (exercises / "ch02_b.py").write_text("def graded_fn(x):\n    raise NotImplementedError\n")
    out = lambda text: [nbformat.v4.new_output("stream", name="stdout", text=text)]
    _write_notebook(chapters / "ch01_a.ipynb", [
        nbformat.v4.new_markdown_cell("# One\n\n## Setting up\n\nProse."),
        nbformat.v4.new_code_cell("half_len = 3\nprint(lang)",
                                  outputs=out("Lang(p_boost=0.4)\n")),
        nbformat.v4.new_markdown_cell(
            "We set `half_len` and the printout shows `p_boost` (both fine). Later we call"
            " `later_fn()` and the exercise `graded_fn`, neither shown yet; `made_up_name`"
            " exists nowhere; `CONSTANT_X` and `x` are not checked. See section"
            " \"Setting up\" (fine) and section"
            " \"Gone away\"."),
    ])
    _write_notebook(chapters / "ch02_b.ipynb", [
        nbformat.v4.new_markdown_cell("# Two\n\n## Reading heads"),
        nbformat.v4.new_code_cell("later_fn()\nother_fn()\nhalf_len = 4"),
        nbformat.v4.new_markdown_cell(
            "`later_fn()` and `graded_fn` are fine here, and so is `half_len` (chapter 1)."
            " But the chance correction of `head_report` (chapter 1) is stale, and so is"
            " chapter 1's `other_fn`; section \"Setting up\" of chapter 1 holds, section"
            " \"Reading weights\" of chapter 1 does not."),
    ])
    (chapters / "glossary.md").write_text(
        "# Glossary\n\n**Half length ($L$)**\n: the length of r (chapter 2).\n\n"
        "**Setting up; set-up**\n: what chapter 1 does first (chapter 1).\n")
    found = ct.name_findings(tmp_path)
    text = "\n".join(found)
    assert "`later_fn` is used before any chapter defines it (first shown in chapter 2)" in text
    assert "`graded_fn` is used before any chapter defines it" in text
    assert "`made_up_name` is a name no chapter defines" in text
    for fine in ("`half_len`", "`p_boost`", "CONSTANT_X", "`x`"):
        assert fine not in text, fine
    # ch02 names `head_report`, which no chapter shows: fine as a toylab name in passing,
    # but not as something chapter 1 has
    assert not any("`head_report` is a name" in f for f in found)
    assert "ch02_b.ipynb cell 2: `head_report` is referred to chapter 1" in text
    assert "ch02_b.ipynb cell 2: `other_fn` is referred to chapter 1" in text
    assert not any("`half_len` is referred" in f for f in found)
    assert "section 'Gone away' is not a heading of this page" in text
    assert "section 'Reading weights' is not a heading of chapter 1" in text
    assert not any("'Setting up'" in f for f in found)
    assert "the entry 'Half length' points to chapter 2, which never uses the term" in text
    assert not any("'Setting up'" in f for f in found)
    assert len(found) == 8, found
