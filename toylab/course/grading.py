"""Grade a student's exercises: run the graded tests, print and save a score table.

    toylab grade [--chapter N] [--json [FILE]] [--format toylab|gradescope] [--timeout S] [PATH]

The graded tests live in ``tests/exercises/test_chNN_<topic>.py``; each one
carries ``@pytest.mark.exercise("name")`` and ``@pytest.mark.points(n)``. They
import the module under test with :func:`load_answers`, which reads the folder
from the environment variable ``TOYLAB_ANSWERS``:

=====================  ==============================================
unset or ``solutions``  the reference answers in ``solutions/`` (CI)
``exercises``           the student's stubs in ``exercises/``
any other value         a folder holding ``chNN_<topic>.py`` files
=====================  ==============================================

The grader runs pytest on those tests in a child process with a recording
plugin (:class:`Recorder`) that writes one JSON line per event. Each test has
a time limit, enforced twice: an alarm inside the child (a Python loop that
never ends fails with "timed out after S s") and a watchdog in the parent that
kills the child if a test outlives its limit anyway (a hang in C code). A
child that dies (``os._exit``, a segfault) fails the test it was running;
the grader then starts a fresh child on the tests that are left, so one
broken answer never costs the others their points.

``--format gradescope`` writes the file as Gradescope's autograder
``results.json`` instead (see :meth:`Grade.to_gradescope`). A failure message
is the whole first line of the failing check (up to :data:`MESSAGE_LIMIT`
characters), so the hint written for a mistake reaches the table and the JSON.

This module imports pytest only inside the child process (pytest is a runtime
dependency of toylab: grading is a core command); what the graded
tests themselves use (:func:`~toylab.course.answers.load_answers`, the teaching
assertions, the alarm) is in :mod:`toylab.course.answers`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toylab.course.answers import ANSWERS_ENV, ISOLATE_ENV, TIMEOUT_ENV, repo_root
from toylab.course import contain
from toylab.course.scores import Grade, GradedTest
from toylab.training.progress import Progress

DEFAULT_TIMEOUT = 10.0
# seconds the watchdog adds to a test's limit: the test's alarm is paused while a fresh worker starts
# (importing torch can take tens of seconds on a loaded machine), and the alarm itself stops an
# answer that runs too long; the watchdog is left for a grader that hangs
WORKER_START_ALLOWANCE = 60.0
MESSAGE_LIMIT = 2000  # characters of a failure's first line that are kept (hints sit at its end)
_EVENTS_ENV = "TOYLAB_GRADE_EVENTS"


def first_line(excinfo) -> str:
    """The line a student sees for a failure: the exception's message, first line."""
    exc = excinfo.value
    if isinstance(exc, NotImplementedError):
        return "not implemented yet (the stub raises NotImplementedError)"
    if isinstance(exc, TimeoutError) and str(exc).startswith("timed out after"):
        return str(exc)  # from :class:`alarm`
    text = excinfo.exconly().strip()
    if isinstance(exc, AssertionError):
        text = text.removeprefix("AssertionError").lstrip(": ")
    return shorten((text.splitlines() or [type(exc).__name__])[0].strip())


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` whole if it fits in ``limit`` characters, else its start and its end
    (where a hint usually is) around `` ... ``."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return text[:half] + " ... " + text[-half:]


class Recorder:
    """pytest plugin: appends one JSON line per event to ``path`` (collected, start, result)."""

    def __init__(self, path: str):
        self.path = path
        self.failures: dict[str, str] = {}

    def _write(self, **event) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def pytest_collection_finish(self, session) -> None:
        tests = []
        for item in session.items:
            ex, pts = item.get_closest_marker("exercise"), item.get_closest_marker("points")
            m = re.match(r"test_ch(\d+)_", Path(str(item.fspath)).name)
            tests.append({"nodeid": item.nodeid, "chapter": int(m.group(1)) if m else -1,
                          "exercise": ex.args[0] if ex else item.name,
                          "points": pts.args[0] if pts else 1, "hidden": item.get_closest_marker("hidden") is not None})
        self._write(event="collected", tests=tests)

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self._write(event="start", nodeid=nodeid, time=time.time())

    def pytest_runtest_makereport(self, item, call) -> None:
        if call.excinfo is not None and item.nodeid not in self.failures:
            self.failures[item.nodeid] = first_line(call.excinfo)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.failed or report.skipped:
            if report.when == "teardown" and not report.failed:
                return
            passed = report.passed and report.when == "call"
            message = "" if passed else self.failures.get(report.nodeid, report.outcome)
            if report.skipped:
                message = "skipped"
            self._write(event="result", nodeid=report.nodeid, passed=passed, message=message)


def _child_main(events: str, args: list[str]) -> int:  # pragma: no cover - runs in the child
    import pytest

    return pytest.main(args, plugins=[Recorder(events)])


# ------------------------------------------------------------------ grading
def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            pass
    return events


def graded_test_files(chapter: int | None = None, root: Path | None = None) -> list[Path]:
    """The graded test files, all or one chapter's."""
    root = root or repo_root()
    pattern = "test_ch*.py" if chapter is None else f"test_ch{chapter:02d}_*.py"
    files = sorted((root / "tests" / "exercises").glob(pattern))
    if not files:
        raise ValueError(f"no graded tests for chapter {chapter}" if chapter is not None else "no graded tests found")
    return files


def grade(path: str | os.PathLike = "exercises", chapter: int | None = None, timeout: float = DEFAULT_TIMEOUT,
          select: str | None = None, startup_timeout: float = 120.0, progress: bool = False,
          hide: tuple = (), limits: str | None = None) -> Grade:
    """Run the graded tests against the answers in folder ``path``; returns a :class:`Grade`.

    ``select``: a pytest ``-k`` expression (e.g. one exercise's name).
    ``progress``: show a progress bar on stderr while the tests run.
    ``hide``: more folders the worker must not see (``grade-class`` passes the submissions).
    ``limits``: the worker's resource limits, ``"cpu=S,mem=MiB,fsize=MiB,nproc=N"``.
    Every test gets ``timeout`` seconds; a hanging or crashing answer fails its
    own test and the others are still graded. The answers run only in a contained worker
    (:mod:`toylab.course.sandbox`), never in the process that decides the verdict; when
    grading ends, the worker's session and (as root) every process of its uid are killed.
    """
    root = repo_root()
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no answers folder {folder}")
    check_timeout(timeout)
    require_pytest()
    uid = contain.worker_uid(root)
    result = Grade(path=str(folder), timeout=timeout, note=contain.containment_note(uid))
    args = [str(f) for f in graded_test_files(chapter, root)]
    if select:
        args += ["-k", select]
    env = dict(os.environ, **{ANSWERS_ENV: str(folder), TIMEOUT_ENV: str(timeout), "PYTHONDONTWRITEBYTECODE": "1",
                              ISOLATE_ENV: "1",
                              contain.HIDE_ENV: os.pathsep.join([str(folder), *map(str, hide)])})
    env.pop(contain.UID_ENV, None)
    if uid is not None:
        env[contain.UID_ENV] = str(uid)
    if limits is not None:
        env[contain.LIMITS_ENV] = limits
    base = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(root), "-W", "ignore"]
    by_id: dict[str, GradedTest] = {}
    state: dict = {"pending": None}
    bar: Progress | None = None

    def tick(events: list[dict]) -> None:  # called by the watchdog as the child reports
        nonlocal bar
        if not progress:
            return
        if bar is None:
            collected = [e for e in events if e["event"] == "collected"]
            if not (by_id or collected):
                return
            bar = Progress(len(by_id) or len(collected[0]["tests"]), "grading", stream=sys.stderr)
        pending = state["pending"]
        finished_before = len(by_id) - len(pending) if pending is not None else 0
        bar.update(finished_before + sum(e["event"] == "result" for e in events) - bar.n)

    with tempfile.TemporaryDirectory(prefix="toylab-grade-") as tmp:
        env[contain.PIDS_ENV] = str(Path(tmp) / "workers.txt")
        try:
            _run_attempts(state, tmp, root, env, base, args, timeout, startup_timeout, tick, by_id)
        finally:
            _end_workers(Path(tmp) / "workers.txt", uid)
    if bar is not None:
        bar.__exit__()
    result.tests = list(by_id.values())
    return result


def _end_workers(pids_file: Path, uid: int | None) -> None:
    """Kill every worker session the grading started and, as root, every process of its uid."""
    if pids_file.exists():
        for line in pids_file.read_text().split():
            if line.isdigit():
                contain.kill_session(int(line))
    if uid is not None:
        contain.kill_uid(uid)
        contain.release_uid(uid)


def _run_attempts(state, tmp, root, env, base, args, timeout, startup_timeout, tick, by_id) -> None:
    """Run pytest children until every collected test has a result (a child that dies is replaced)."""
    pending: list[str] | None = None  # None: not collected yet
    for attempt in range(1000):
        events_path = Path(tmp) / f"events{attempt}.jsonl"
        run_args = base + (args if pending is None else pending)
        code = ("import sys, toylab.course.grading as g; "
                f"sys.exit(g._child_main({str(events_path)!r}, {run_args!r}))")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out = _watch(proc, events_path, timeout, startup_timeout, tick)
        events = _read_events(events_path)
        killed_at = out["killed"]
        running = None
        for ev in events:
            if ev["event"] == "collected":
                for t in ev["tests"]:
                    by_id.setdefault(t["nodeid"], GradedTest(t["chapter"], t["exercise"], t["nodeid"], t["points"],
                                                             hidden=bool(t.get("hidden"))))
                if pending is None:
                    pending = state["pending"] = [t["nodeid"] for t in ev["tests"]]
            elif ev["event"] == "start":
                running = ev["nodeid"]
            elif ev["event"] == "result":
                t = by_id[ev["nodeid"]]
                t.passed, t.message = ev["passed"], ev["message"]
                if ev["nodeid"] in pending:
                    pending.remove(ev["nodeid"])
                running = None
        if pending is None:  # never got as far as collecting the tests
            if "No module named 'pytest'" in out["output"]:
                raise RuntimeError(PYTEST_MISSING.format(exe=sys.executable))
            tail = out["output"].strip().splitlines()[-5:]
            raise RuntimeError("the graded tests could not be collected:\n" + "\n".join(tail))
        if running is not None:  # the child died or was killed inside this test
            t = by_id[running]
            t.passed = False
            if killed_at == "timeout":
                t.message = f"timed out after {timeout:g} s"
            else:
                t.message = f"crashed: the test process exited with code {proc.returncode} while running it"
            pending.remove(running)
        elif pending and killed_at == "startup":
            for nodeid in pending:
                by_id[nodeid].message = "the test process did not start in time"
            break
        if not pending or running is None:
            break


def check_timeout(timeout) -> float:
    """``timeout`` as a float, or a ``ValueError`` unless it is a finite number of seconds > 0
    (NaN and inf would mean no limit can ever fire)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


PYTEST_MISSING = ("toylab grade runs the graded tests with pytest, which this Python ({exe}) does not have: "
                  "install it with `{exe} -m pip install 'pytest>=7.4'` (it is a dependency of toylab; "
                  "`pip install -e .` installs it)")


def require_pytest() -> None:
    """Raise ``RuntimeError`` with the command to run when pytest cannot be imported by the grader's child."""
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError(PYTEST_MISSING.format(exe=sys.executable))


def _watch(proc: subprocess.Popen, events_path: Path, timeout: float, startup_timeout: float,
           tick=None) -> dict:
    """Wait for ``proc``; kill it if one test runs past ``timeout`` (plus a grace) or it never starts.

    ``tick(events)``, if given, sees the child's events at every poll (for a progress bar)."""
    import threading

    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    grace = max(1.0, 0.25 * timeout) + WORKER_START_ALLOWANCE
    started = time.time()
    killed = None
    while proc.poll() is None:
        time.sleep(0.1)
        events = _read_events(events_path)
        if tick is not None:
            tick(events)
        last = events[-1] if events else None
        now = time.time()
        if last is None and now - started > startup_timeout:
            killed = "startup"
        elif last is not None and last["event"] == "start" and now - last["time"] > timeout + grace:
            killed = "timeout"
        if killed:
            _kill(proc)
            break
    proc.wait()
    reader.join(timeout=5)
    return {"killed": killed, "output": b"".join(chunks).decode(errors="replace")}


def _kill(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()


def check(chapter: str | int, exercise: str, path: str | os.PathLike | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Grade one exercise from a notebook and print one line: ``check("ch01", "bigram_table_from_weights")``.

    ``path`` defaults to the repository's ``exercises/`` folder. Returns whether it passed.
    """
    n = int(str(chapter).lower().removeprefix("ch"))
    folder = Path(path) if path is not None else repo_root() / "exercises"
    g = grade(folder, chapter=n, timeout=timeout, select=exercise)
    rows = [r for r in g.exercises() if r["exercise"] == exercise]
    if not rows:
        print(f"ch{n:02d} {exercise}: no graded test of that name")
        return False
    r = rows[0]
    status = "pass" if r["passed"] else f"FAIL: {r['message']}"
    print(f"ch{n:02d} {exercise}: {r['earned']}/{r['max']} points, {status}")
    return r["passed"]
