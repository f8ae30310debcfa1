"""pytest plugin of the mutant harness: one chapter's graded tests, once per mutant.

Loaded by ``tools/mutants/run.py`` (``-p plugin``) with ``TOYLAB_MUTANTS_FILE`` (the chapter's
mutant file) and ``TOYLAB_MUTANTS_OUT`` (where the JSON results go). It replaces pytest's test
loop: first every test runs on the untouched solutions (all must pass), then, for each mutant,
the solution module's function is replaced by the mutant and all the tests of that exercise
(``@pytest.mark.exercise(func)``) run; the first failure is recorded. The conftest's hooks (time limit, private
copies of fixtures) run as in any grading run; only the trusted ``solutions/`` are patched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
from _pytest.runner import runtestprotocol


def _load_mutants(path):
    spec = importlib.util.spec_from_file_location("toylab_mutants_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MUTANTS


def _exercise(item):
    m = item.get_closest_marker("exercise")
    return m.args[0] if m else None


def _message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr)


def _full(report) -> str:
    return str(report.longrepr)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    from toylab.course.answers import load_answers

    mutants = _load_mutants(os.environ["TOYLAB_MUTANTS_FILE"])
    chapter = os.path.basename(os.environ["TOYLAB_MUTANTS_FILE"])[:-3]
    items = list(session.items)
    module = load_answers(chapter)
    source = open(module.__file__).read()
    results = {"chapter": chapter, "baseline_failures": [], "mutants": []}
    t0 = time.perf_counter()
    by_ex = {}
    for item in items:
        by_ex.setdefault(_exercise(item), []).append(item)
    built = []  # (mutant, function or error) in order; the run's schedule is fixed before it starts
    for mut in mutants:
        try:
            built.append((mut, mut.build(module, source), None))
        except Exception as e:
            built.append((mut, None, f"{type(e).__name__}: {e}"))
    # every item is run with its true successor as `nextitem`, so that pytest tears down exactly
    # what the next test does not share (a test run on a mutant is not cut short by its failure)
    schedule = [(None, item) for item in items]
    for k, (mut, fn, err) in enumerate(built):
        if fn is not None:
            schedule += [(k, item) for item in by_ex.get(mut.func, [])]
    first_fail = {}
    for i, (k, item) in enumerate(schedule):
        nxt = schedule[i + 1][1] if i + 1 < len(schedule) else None
        if nxt is item:  # the same test again (the next mutant): tear the test down, keep its module
            nxt = next((o for o in items if o is not item and o.parent is item.parent), None)
        if k is not None:
            mut, fn, _ = built[k]
            original = getattr(module, mut.func)
            setattr(module, mut.func, fn)
        try:
            reports = runtestprotocol(item, log=False, nextitem=nxt)
        finally:
            if k is not None:
                setattr(module, mut.func, original)
        for r in reports:
            if r.failed:
                msg = f"[{item.name} {r.when}] " + _message(r)
                if k is None:
                    results["baseline_failures"].append(msg)
                else:
                    first_fail.setdefault(k, msg)
                    if os.environ.get("TOYLAB_MUTANTS_DEBUG"):
                        print(_full(r)[-3000:])
                break
    for k, (mut, fn, err) in enumerate(built):
        row = {"func": mut.func, "what": mut.what, "keys": list(mut.keys)}
        if err:
            row.update(status="broken", message=err, named=False)
        else:
            msg = first_fail.get(k)
            if not by_ex.get(mut.func):
                row["note"] = "no graded test for this exercise"
            row.update(status="caught" if msg else "missed", message=msg or "",
                       named=bool(msg) and mut.names_mistake(msg))
        results["mutants"].append(row)
    results["seconds"] = time.perf_counter() - t0
    with open(os.environ["TOYLAB_MUTANTS_OUT"], "w") as f:
        json.dump(results, f, indent=1)
    return True
