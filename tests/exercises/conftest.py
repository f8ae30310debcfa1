"""Graded tests of the exercises: markers, the per-test time limit, shared fixtures.

Each graded test is marked ``@pytest.mark.exercise("name")`` and
``@pytest.mark.points(n)`` and loads the answers with
``toylab.course.answers.load_answers("chNN_<topic>")``, which reads the folder from
``TOYLAB_ANSWERS`` (unset: ``solutions/``; ``exercises``: the stubs; or a path).

    TOYLAB_ANSWERS=exercises python -m pytest tests/exercises     # grade your own answers
    toylab grade                                                  # the same, as a score table

A test marked ``@pytest.mark.hidden`` (at least one per chapter) is graded like the others but
left out of the students' copy that ``toylab release`` makes.

Every test runs under an alarm of ``TOYLAB_GRADE_TIMEOUT`` seconds (default 60;
``toylab grade`` sets its ``--timeout``), so an answer that loops forever fails
its test instead of hanging the run.

Fairness: every graded test receives its own copies of its fixtures' values
(models deep-copied, tensors cloned, containers of them copied), whatever the
fixture's scope, so an answer that changes a model or a pattern in place can
only spoil its own test, never the next exercise or another chapter's.
"""

import copy
import os

import pytest
import torch

from toylab.course.answers import TIMEOUT_ENV, alarm

# No eager `import torch._dynamo` here any more (it cost every grading process 4-5 s): the lab's
# optimisers (toylab.training.optim) never import it, and tests/test_optim.py checks that training, SAEs and
# probes do not. An answer that builds a torch.optim optimiser itself pays that import inside its
# own test, and only that test's time limit can cut it short.


# the graded tests do small tensor work: one thread avoids oversubscribing a loaded machine, whose
# thread contention made a 2000-sequence sample take 1.8 s instead of 0.07 s (and trip short --timeouts)
torch.set_num_threads(1)


def pytest_sessionstart(session):
    """Untrusted answers run in a worker process: start it now, while pytest collects the tests."""
    from toylab.course.answers import answers_dir, call_timeout, repo_root, trusted_answers

    try:
        folder = answers_dir()
    except FileNotFoundError:
        return
    if not trusted_answers(folder):
        from toylab.course.remote import prestart

        prestart(folder, repo_root(), call_timeout())


def pytest_configure(config):
    config.addinivalue_line("markers", "exercise(name): the exercise a graded test grades")
    config.addinivalue_line("markers", "points(n): how many points a graded test is worth")
    config.addinivalue_line("markers", "hidden: a graded test kept from students (not in `toylab release`)")


def _limit() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "60"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with alarm(_limit()):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with alarm(_limit()):
        yield


# pytest's own fixtures (and ones that manage state) are handed over as they are
_NOT_COPIED = {"request", "monkeypatch", "tmp_path", "tmp_path_factory", "tmpdir", "tmpdir_factory", "capsys",
               "capfd", "capsysbinary", "capfdbinary", "caplog", "recwarn", "pytestconfig", "record_property",
               "record_testsuite_property", "record_xml_attribute", "doctest_namespace", "_no_grad"}


def private_copy(value):
    """A copy of a fixture value that a test may change freely: tensors cloned, modules and
    other objects deep-copied (a value that cannot be copied is handed over as it is)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if not value.requires_grad else value.clone()
    if isinstance(value, (str, bytes, int, float, bool, type(None))) or callable(value) and not isinstance(
            value, torch.nn.Module):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # a generator, a lock, an open file: nothing a test can mutate into the next one
        return value


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    originals = dict(pyfuncitem.funcargs)
    for name, value in originals.items():
        if name not in _NOT_COPIED:
            pyfuncitem.funcargs[name] = private_copy(value)
    try:
        yield
    finally:
        pyfuncitem.funcargs.update(originals)


@pytest.fixture(scope="session")
def induction_model():
    """The shipped ``induction-2l`` model (2 layers x 2 heads, shortformer positions)."""
    from toylab.training.presets import load_model

    return load_model("induction-2l")


@pytest.fixture(scope="session")
def bigram_checkpoint():
    """The shipped ``bigram-0l`` checkpoint and its language: ``(model, BigramLanguage)``."""
    from toylab.data import make_dataset
    from toylab.training.presets import load_shipped

    ckpt = load_shipped("bigram-0l")
    return ckpt.model, make_dataset(ckpt.data_spec)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
