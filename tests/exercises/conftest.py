"""Graded tests of the exercises: markers, the per-test time limit, shared fixtures.

Each graded test is marked ``@pytest.mark.exercise("name")`` and
``@pytest.mark.points(n)`` and loads the answers with
``toylab.answers.load_answers("chNN_<topic>")``, which reads the folder from
``TOYLAB_ANSWERS`` (unset: ``solutions/``; ``exercises``: the stubs; or a path).

    TOYLAB_ANSWERS=exercises python -m pytest tests/exercises     # grade your own answers
    toylab grade                                                  # the same, as a score table

Every test runs under an alarm of ``TOYLAB_GRADE_TIMEOUT`` seconds (default 60;
``toylab grade`` sets its ``--timeout``), so an answer that loops forever fails
its test instead of hanging the run.
"""

import os

import pytest
import torch

from toylab.answers import TIMEOUT_ENV, alarm


def pytest_configure(config):
    config.addinivalue_line("markers", "exercise(name): the exercise a graded test grades")
    config.addinivalue_line("markers", "points(n): how many points a graded test is worth")


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


@pytest.fixture(scope="session")
def induction_model():
    """The shipped ``induction-2l`` model (2 layers x 2 heads, shortformer positions)."""
    from toylab.presets import load_model

    return load_model("induction-2l")


@pytest.fixture(scope="session")
def bigram_checkpoint():
    """The shipped ``bigram-0l`` checkpoint and its language: ``(model, BigramLanguage)``."""
    from toylab.data import make_dataset
    from toylab.presets import load_shipped

    ckpt = load_shipped("bigram-0l")
    return ckpt.model, make_dataset(ckpt.data_spec)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
