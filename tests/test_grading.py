"""The grading system: graded tests fail on the stubs and pass on the answers; the grader survives bad answers.

The meta-tests run the real grader (pytest in a child process) on

- the untouched stubs in ``exercises/``: every graded test must fail (a test
  that passes on a stub grades nothing);
- a copy of ``solutions/`` in a temporary folder: every graded test must pass;
- a copy with one answer that loops forever, one that ignores the alarm and
  hangs, and one that kills its process: those fail with a message, the rest
  still score.
"""

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from toylab.course import answers, commands, grading

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("ch*.py"))


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


@pytest.fixture(scope="module")
def stub_grade():
    return grading.grade(ROOT / "exercises", timeout=30)


@pytest.fixture(scope="module")
def solution_grade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    for ch in CHAPTERS:
        shutil.copy(ROOT / "solutions" / f"{ch}.py", folder / f"{ch}.py")
    return grading.grade(folder, timeout=30)


def test_every_chapter_has_exercises_solutions_and_graded_tests():
    assert len(CHAPTERS) >= 2
    for ch in CHAPTERS:
        sol, ex = _functions(ROOT / "solutions" / f"{ch}.py"), _functions(ROOT / "exercises" / f"{ch}.py")
        assert sol.keys() == ex.keys(), f"{ch}: exercises and solutions define different functions"
        assert len(sol) >= 5, f"{ch}: only {len(sol)} exercises"
        for name, fn in ex.items():
            assert ast.dump(fn.args) == ast.dump(sol[name].args), f"{ch}.{name}: signatures differ"
            doc = ast.get_docstring(fn) or ""
            assert re.search(r"★+\s+\(about \d+ min\)", doc), f"{ch}.{name}: docstring needs difficulty and minutes"
            assert "Hint" in doc and "Returns" in doc, f"{ch}.{name}: docstring needs Returns and a Hint"
            body = fn.body[1:]
            assert len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.dump(body[0]), \
                f"exercises/{ch}.py: {name} must be a stub that raises NotImplementedError"


def test_graded_tests_cover_every_exercise(stub_grade):
    graded = {(t.chapter, t.exercise) for t in stub_grade.tests}
    for ch in CHAPTERS:
        n = int(ch[2:4])
        for name in _functions(ROOT / "exercises" / f"{ch}.py"):
            assert (n, name) in graded, f"no graded test for {ch}.{name}"
    assert all(t.points >= 1 for t in stub_grade.tests)


def test_every_graded_test_fails_on_the_stubs(stub_grade):
    assert len(stub_grade.tests) >= 10
    passing = [t.nodeid for t in stub_grade.tests if t.passed]
    assert not passing, f"graded tests that pass on the untouched stubs grade nothing: {passing}"
    for t in stub_grade.tests:
        assert "not implemented yet" in t.message, (t.nodeid, t.message)
    assert stub_grade.earned == 0
    table = stub_grade.table()
    assert re.search(r"total\s+0/\d+", table), table
    assert "embed" in table and "bigram_table_from_weights" in table


def test_every_graded_test_passes_on_the_solutions(solution_grade):
    failing = {t.nodeid: t.message for t in solution_grade.tests if not t.passed}
    assert not failing, failing
    assert solution_grade.earned == solution_grade.max_points >= 10
    assert re.search(r"total\s+(\d+)/\1", solution_grade.table())


HANGS = '''
def conditional_entropy(P, weights):
    while True:  # a Python loop that never ends: the alarm stops it
        pass
'''
HANGS_IN_C = '''
def next_token_loss(logits, tokens):
    import signal, time
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # ignores the alarm: only the watchdog can stop it
    while True:
        time.sleep(0.05)
'''
CRASHES = '''
def top_k_successors(table, token, k):
    import os
    os._exit(3)  # the whole test process dies
'''


def _replace(src: str, name: str, new: str) -> str:
    fn = _functions_from_source(src)[name]
    lines = src.splitlines()
    return "\n".join(lines[: fn.lineno - 1] + new.strip("\n").splitlines() + lines[fn.end_lineno:]) + "\n"


def _functions_from_source(src):
    return {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}


def test_grader_survives_hanging_and_crashing_answers(tmp_path, capsys):
    ch0 = (ROOT / "solutions" / "ch00_transformer.py").read_text()
    (tmp_path / "ch00_transformer.py").write_text(_replace(ch0, "next_token_loss", HANGS_IN_C))
    ch1 = (ROOT / "solutions" / "ch01_zero_layers.py").read_text()
    ch1 = _replace(_replace(ch1, "conditional_entropy", HANGS), "top_k_successors", CRASHES)
    (tmp_path / "ch01_zero_layers.py").write_text(ch1)
    out = tmp_path / "scores" / "grades.json"
    code = commands.main([str(tmp_path), "--timeout", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    report = json.loads(out.read_text())
    # only chapters 0 and 1 have answer files here; the later chapters fail with "no file"
    rows = {r["exercise"]: r for r in report["exercises"] if r["chapter"] in (0, 1)}
    assert "timed out after 3 s" in rows["conditional_entropy"]["message"]
    assert "timed out after 3 s" in rows["next_token_loss"]["message"]
    assert "crashed: the process running your code exited with code 3" in rows["top_k_successors"]["message"]
    broken = {"conditional_entropy", "next_token_loss", "top_k_successors"}
    for name, row in rows.items():  # everything else is graded normally
        assert row["passed"] == (name not in broken), (name, row)
    assert sum(r["earned"] for r in rows.values()) == sum(r["max"] for r in rows.values()) - sum(
        rows[n]["max"] for n in broken)
    assert "crashed" in printed and "timed out after 3 s" in printed and "total" in printed
    assert not list(out.parent.glob("*.tmp")), "the JSON must be written atomically (no temp file left)"


def test_grade_one_chapter_and_check_one_exercise(tmp_path, capsys):
    for ch in CHAPTERS:
        shutil.copy(ROOT / "solutions" / f"{ch}.py", tmp_path / f"{ch}.py")
    assert grading.check("ch01", "top_k_successors", path=tmp_path) is True
    assert "ch01 top_k_successors: 1/1 points, pass" in capsys.readouterr().out
    assert commands.main(["--chapter", "99", str(tmp_path)]) == 2
    assert "no graded tests for chapter 99" in capsys.readouterr().err


def test_missing_or_broken_answer_files_fail_with_a_message(tmp_path):
    (tmp_path / "ch00_transformer.py").write_text("def embed(:\n")
    g = grading.grade(tmp_path, timeout=20, select="embed or project or top_k")
    messages = {t.exercise: t.message for t in g.tests}
    assert set(messages) == {"embed", "project", "top_k_successors"}
    assert "could not import ch00_transformer.py: SyntaxError" in messages["embed"], messages
    assert "could not import ch00_transformer.py: SyntaxError" in messages["project"], messages
    assert "no file ch01_zero_layers.py" in messages["top_k_successors"]


def test_expect_tensor_teaches():
    import torch

    with pytest.raises(AssertionError, match=r"expected shape \[n_heads, d_vocab\] = \[2, 3\], got \[3, 2\]"):
        answers.expect_tensor(torch.zeros(3, 2), torch.zeros(2, 3), "x", "n_heads, d_vocab")
    with pytest.raises(AssertionError, match="did you forget `return`"):
        answers.expect_tensor(None, torch.zeros(2), "x")
    with pytest.raises(AssertionError, match="wrong values. Halve it"):
        answers.expect_tensor(torch.ones(2) * 2, torch.ones(2), "x", hints=[(torch.ones(2) * 2, "Halve it.")])
    with pytest.raises(AssertionError, match=r"your value for y is -0.42, expected about 0.97: hint"):
        answers.expect_number(-0.42, 0.97, "y", tol=0.01, hint="hint")
    inf = float("inf")
    answers.expect_tensor(torch.tensor([1.0, -inf]), torch.tensor([1.0, -inf]), "masked")
    with pytest.raises(AssertionError):
        answers.expect_tensor(torch.tensor([1.0, 0.0]), torch.tensor([1.0, -inf]), "masked")


# --- fairness: an answer that changes what it was given spoils only its own test ------------------

VANDAL_EMBED = '''
def embed(tokens, W_E):
    out = W_E[tokens]
    W_E.mul_(0.0)  # changes the shared model in place
    return out
'''
VANDAL_PREV = '''
_solution_previous_token_score = previous_token_score


def previous_token_score(pattern):
    out = _solution_previous_token_score(pattern)
    pattern.zero_()  # masks a module-scoped fixture's pattern in place
    return out
'''
REAL_PARTS = '''
def copying_score(M):
    ev = torch.linalg.eigvals(M.double())
    return (ev.real.sum(-1) / ev.real.abs().sum(-1)).float()  # the real parts in the denominator: a mistake
'''


@pytest.fixture(scope="module")
def vandal_run(tmp_path_factory):
    """Grade solutions with three bad answers; ``(exit code, printed table, Gradescope results.json)``."""
    folder = tmp_path_factory.mktemp("vandal")
    for ch in CHAPTERS:
        shutil.copy(ROOT / "solutions" / f"{ch}.py", folder / f"{ch}.py")
    ch0 = folder / "ch00_transformer.py"
    ch0.write_text(_replace(ch0.read_text(), "embed", VANDAL_EMBED))
    ch4 = folder / "ch04_induction.py"
    ch4.write_text(ch4.read_text() + "\n\n" + VANDAL_PREV)
    ch2 = folder / "ch02_one_layer.py"
    ch2.write_text(_replace(ch2.read_text(), "copying_score", REAL_PARTS))
    out = tmp_path_factory.mktemp("results") / "results.json"
    select = "embed or copying_score or previous_token_score or induction_score or find_heads or per_position_loss"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    args = commands.build_args([str(folder), "--timeout", "30", "--format", "gradescope", "--json", str(out)])
    with redirect_stdout(buf):
        code = commands.cmd_grade(args, select=select)
    return code, buf.getvalue(), json.loads(out.read_text())


def test_in_place_changes_do_not_leak_into_other_tests(vandal_run):
    code, table, results = vandal_run
    status = {t["name"]: t["status"] for t in results["tests"]}
    assert code == 1
    # the vandals' own tests may fail; every other exercise (other chapters included) is graded fairly
    vandals = {"ch04 previous_token_score", "ch02 copying_score"}
    for name in ("ch00 embed", "ch04 per_position_loss", "ch04 induction_score", "ch04 find_heads"):
        assert status[name] == "passed", (name, results["tests"])
    assert vandals <= set(status) and status["ch02 copying_score"] == "failed"


def test_the_whole_hint_reaches_the_table_and_the_json(vandal_run):
    code, table, results = vandal_run
    hint = "not of the real parts"
    [copying] = [t for t in results["tests"] if t["name"] == "ch02 copying_score"]
    assert hint in copying["output"] and len(copying["output"]) > 200, copying
    assert hint in table


def test_gradescope_results_json_format(vandal_run):
    code, table, results = vandal_run
    assert set(results) >= {"score", "tests", "visibility", "stdout_visibility"}
    assert results["score"] == sum(t["score"] for t in results["tests"])
    for t in results["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility", "status"}
        assert 0 <= t["score"] <= t["max_score"] and t["visibility"] == "visible"
        assert (t["status"] == "passed") == (t["score"] == t["max_score"]) == (t["output"] == "pass")
    assert "Gradescope results.json format" in table


def test_first_line_keeps_long_messages_whole():
    long = "wrong values; " + "x" * 300 + " hint: the denominator is the sum of the moduli"

    class Info:
        value = AssertionError(long)

        def exconly(self):
            return f"AssertionError: {long}\nassert False"

    assert grading.first_line(Info()) == long
    huge = "a" * 5000 + " the hint at the end"
    short = grading.shorten(huge)
    assert len(short) <= grading.MESSAGE_LIMIT and short.endswith("the hint at the end")


def test_grade_refuses_bad_timeouts_and_unwritable_json_before_grading(tmp_path, monkeypatch, capsys):
    def must_not_grade(*a, **k):
        raise AssertionError("grading started before the arguments were checked")

    monkeypatch.setattr(commands, "grade", must_not_grade)
    for t in ("nan", "inf", "-1", "0"):
        assert commands.main([str(tmp_path), "--timeout", t]) == 2
        assert "timeout must be a finite number of seconds > 0" in capsys.readouterr().err
    assert commands.main([str(tmp_path), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    from toylab.training import checkpoint

    monkeypatch.setattr(checkpoint.os, "access", lambda p, mode: False)  # a read-only place (root ignores modes)
    assert commands.main([str(tmp_path), "--json", str(tmp_path / "g.json")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_missing_pytest_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'pytest>=7.4'"):
        grading.grade(tmp_path)


def test_pytest_is_a_runtime_dependency():
    tomllib = pytest.importorskip("tomllib")

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("pytest") for d in deps), deps
