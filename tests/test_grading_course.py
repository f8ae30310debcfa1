"""The course workflow around the grader: the students' release, hidden tests, a class, Gradescope."""

import ast
import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from toylab.course import contain
from toylab.course.classroom import grade_class
from toylab.course.release import strip_hidden

ROOT = Path(__file__).resolve().parents[1]
GRADED = sorted((ROOT / "tests" / "exercises").glob("test_ch*.py"))


def _hidden_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and any("hidden" in ast.dump(d) for d in n.decorator_list)]


def test_every_chapter_has_a_hidden_graded_test_and_the_marker_is_registered():
    stubs = sorted(p.stem for p in (ROOT / "exercises").glob("ch*.py"))
    assert [f.stem.removeprefix("test_") for f in GRADED] == stubs, "one graded test file per exercise module"
    assert len(GRADED) >= 13, f"{len(GRADED)} graded chapters: chapters 0-11 and the capstone have graded exercises"
    for f in GRADED:
        assert _hidden_tests(f), f"{f.name}: no graded test marked @pytest.mark.hidden"
    tomllib = pytest.importorskip("tomllib")
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("hidden:") for m in markers)


def test_strip_hidden_cuts_the_test_and_its_decorators_only():
    src = ("import pytest\n\n\n@pytest.mark.exercise('a')\n@pytest.mark.hidden\n@pytest.mark.points(2)\n"
           "def test_a():\n    assert False\n\n\n@pytest.mark.exercise('b')\ndef test_b():\n    pass\n")
    out, names = strip_hidden(src)
    assert names == ["test_a"] and "test_a" not in out and "def test_b" in out and "hidden" not in out
    assert "@pytest.mark.exercise('b')" in out and "points(2)" not in out


def test_release_leaves_out_solutions_and_hidden_tests(tmp_path, capsys):
    from toylab.cli import main

    out = tmp_path / "course"
    assert main(["release", str(out)]) == 0
    assert "hidden graded tests" in capsys.readouterr().out
    assert not (out / "solutions").exists() and not (out / ".git").exists()
    for name in ("chapters", "exercises", "toylab", "README.md", "pyproject.toml"):
        assert (out / name).exists(), name
    assert list((out / "toylab" / "models").glob("*.pt")), "the shipped models belong in the release"
    assert not list(out.rglob("__pycache__")) and not (out / "chapters" / "_build").exists()
    for f in GRADED:
        text = (out / "tests" / "exercises" / f.name).read_text()
        compile(text, f.name, "exec")
        assert "mark.hidden" not in text and "@pytest.mark.exercise" in text
        for name in _hidden_tests(f):
            assert f"def {name}(" not in text, (f.name, name)
        visible = [n for n in ast.parse(f.read_text()).body if isinstance(n, ast.FunctionDef)
                   and n.name.startswith("test_") and n.name not in _hidden_tests(f)]
        for n in visible:
            assert f"def {n.name}(" in text
    assert (out / "tests" / "exercises" / "conftest.py").is_file()
    assert main(["release", str(out)]) == 2  # not empty any more
    assert "not empty" in capsys.readouterr().err


BROKEN = '''
def top_k_successors(table, token, k):
    return table[token].argsort()[:k]  # least likely first: a mistake
'''
THIEF = '''
def top_k_successors(table, token, k):  # copy a classmate's answer
    import glob
    for p in glob.glob(__SUBS__ + "/*/ch01_zero_layers.py"):
        ns = {}
        exec(open(p).read(), ns)
        return ns["top_k_successors"](table, token, k)
    raise RuntimeError("found no classmate")
'''


def test_grade_class_writes_one_gradebook(tmp_path, capsys):
    from tests.test_grading import _replace

    subs = tmp_path / "submissions"
    sol = (ROOT / "solutions" / "ch01_zero_layers.py").read_text()
    for name, text in (("alice", sol), ("bob", sol), ("carol", _replace(sol, "top_k_successors", BROKEN)),
                       ("mallory", _replace(sol, "top_k_successors", THIEF.replace("__SUBS__", repr(str(subs)))))):
        (subs / name).mkdir(parents=True)
        (subs / name / "ch01_zero_layers.py").write_text(text)
    (subs / "eve").symlink_to(ROOT / "solutions")
    out = tmp_path / "book"
    from toylab.cli import main

    code = main(["grade-class", str(subs), "--jobs", "2", "--chapter", "1", "--timeout", "30", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    data = json.loads((out / "gradebook.json").read_text())["students"]
    assert set(data) == {"alice", "bob", "carol", "mallory", "eve"}
    full = data["alice"]["max"]
    assert data["alice"]["earned"] == data["bob"]["earned"] == full > 0
    assert data["carol"]["earned"] == full - 1
    # the thief's copying only works if the classmates' folders are readable to its worker
    if contain.is_root() and contain.namespaces_available():
        assert data["mallory"]["earned"] == full - 1, data["mallory"]
    assert data["eve"]["earned"] == 0 and "symbolic link" in data["eve"]["error"]
    rows = list(csv.DictReader((out / "gradebook.csv").open()))
    assert {r["student"] for r in rows} == set(data)
    totals = {r["student"]: int(r["earned"]) for r in rows if r["chapter"] == "total"}
    assert totals == {k: v["earned"] for k, v in data.items()}
    assert sum(1 for r in rows if r["student"] == "alice" and r["chapter"] != "total") == 7
    for name in data:
        assert f"{name}: " in printed.out and " s" in printed.out
    assert "s per student" in printed.out
    assert "grading the class" in printed.err  # the progress bar


def test_grade_class_refuses_an_empty_folder_and_a_gradebook_inside_it(tmp_path):
    with pytest.raises(ValueError, match="no student folders"):
        grade_class(tmp_path)
    from toylab.cli import main

    (tmp_path / "s").mkdir()
    assert main(["grade-class", str(tmp_path), "--out", str(tmp_path / "s")]) == 2


def _source_copy(dest: Path) -> Path:
    for name in ("toylab", "tests", "exercises", "solutions"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_gradescope_run_autograder_in_an_imitated_layout(tmp_path):
    ag = tmp_path / "autograder"
    source = _source_copy(ag / "source")
    (ag / "submission" / "upload").mkdir(parents=True)  # a student who uploaded a folder
    shutil.copy(ROOT / "solutions" / "ch01_zero_layers.py", ag / "submission" / "upload")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(AUTOGRADER_ROOT=str(ag), TOYLAB_PYTHON=sys.executable, TOYLAB_GRADE_ARGS="--chapter 1 --timeout 30")
    script = ROOT / "course" / "gradescope" / "run_autograder"
    assert os.access(script, os.X_OK) and os.access(ROOT / "course" / "gradescope" / "setup.sh", os.X_OK)
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((ag / "results" / "results.json").read_text())
    assert results["tests"] and results["score"] == sum(t["max_score"] for t in results["tests"]) > 0, results
    assert all(t["status"] == "passed" for t in results["tests"])
    assert len(results["tests"]) == 7  # chapter 1's exercises, the hidden one included
    for p in ("solutions", "tests"):
        assert not stat.S_IMODE((source / p).stat().st_mode) & 0o007, f"{p} is still readable to others"
    assert not stat.S_IMODE((ag / "results").stat().st_mode) & 0o077


def test_gradescope_run_autograder_reports_a_grader_that_cannot_run(tmp_path):
    ag = tmp_path / "autograder"
    _source_copy(ag / "source")
    (ag / "submission").mkdir()
    # a grader that refuses its arguments (exit status 2) stands for one that cannot run at all
    env = dict(os.environ, AUTOGRADER_ROOT=str(ag), TOYLAB_PYTHON=sys.executable, TOYLAB_GRADE_ARGS="--timeout nan")
    proc = subprocess.run(["bash", str(ROOT / "course" / "gradescope" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    results = json.loads((ag / "results" / "results.json").read_text())
    assert results["score"] == 0 and "could not grade" in results["output"]
    assert "timeout must be a finite number" in results["output"]
