"""What a graded test uses: the student's answers, teaching assertions, a time limit.

The graded tests in ``tests/exercises/`` load the module under test with
:func:`load_answers`, which reads the folder from the environment variable
``TOYLAB_ANSWERS``:

=====================  ==============================================
unset or ``solutions``  the reference answers in ``solutions/`` (CI)
``exercises``           the student's stubs in ``exercises/``
any other value         a folder holding ``chNN_<topic>.py`` files
=====================  ==============================================

:func:`expect_tensor` and :func:`expect_number` fail with a message that
teaches (expected shape, a hint for a common mistake); :class:`alarm` bounds
a test's time inside the process. The grader that runs these tests is
:mod:`toylab.course.grading`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

TIMEOUT_ENV = "TOYLAB_GRADE_TIMEOUT"
ANSWERS_ENV = "TOYLAB_ANSWERS"
ISOLATE_ENV = "TOYLAB_GRADE_ISOLATE"  # "1": even solutions/ runs in the worker (set by toylab grade)


# ----------------------------------------------------------------- locating
def repo_root() -> Path:
    """The checkout that holds ``tests/exercises``: the current folder or a parent, else toylab's."""
    here = Path.cwd().resolve()
    for cand in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (cand / "tests" / "exercises").is_dir():
            return cand
    raise FileNotFoundError("cannot find tests/exercises: run the grader inside a clone of the toylab repository")


def answers_dir() -> Path:
    """The folder the graded tests import answers from (see the module docstring)."""
    value = os.environ.get(ANSWERS_ENV, "").strip() or "solutions"
    if value in ("solutions", "exercises"):
        return repo_root() / value
    return Path(value).expanduser().resolve()


_loaded: dict[Path, object] = {}


def call_timeout() -> float:
    """Seconds one call into the worker may take: ``$TOYLAB_GRADE_TIMEOUT`` (default 60)."""
    return float(os.environ.get(TIMEOUT_ENV, "60"))


def trusted_answers(folder: Path) -> bool:
    """Whether ``folder`` may be imported in the test process itself: only the repository's own
    ``solutions/``, and only outside ``toylab grade`` (plain pytest: CI, ``make test``)."""
    return folder == repo_root() / "solutions" and os.environ.get(ISOLATE_ENV) != "1"


def load_answers(module: str):
    """The answers of ``<answers_dir>/<module>.py`` (e.g. ``module="ch00_transformer"``).

    Untrusted answers (any folder but the repository's ``solutions/`` in plain pytest, and
    every folder under ``toylab grade``) are imported only in a contained worker process:
    this returns a proxy module whose functions run there
    (:func:`toylab.course.remote.remote_answers`). The trusted ``solutions/`` are imported
    here, once per process. A file that is missing or does not import raises an
    ``AssertionError`` that says so, which fails the test.
    """
    folder = answers_dir()
    path = folder / f"{module}.py"
    if not trusted_answers(folder):
        from toylab.course.remote import remote_answers

        return remote_answers(path, module, repo_root(), call_timeout())
    if path in _loaded:
        return _loaded[path]
    if not path.is_file():
        raise AssertionError(f"no file {module}.py in {path.parent}: the answers folder must hold one file per chapter")
    spec = importlib.util.spec_from_file_location(f"toylab_answers_{module}_{len(_loaded)}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # a syntax error or a failing import in the student's file
        del sys.modules[spec.name]
        raise AssertionError(f"could not import {path.name}: {type(e).__name__}: {e}") from e
    _loaded[path] = mod
    return mod


# ------------------------------------------------------- teaching assertions
def _shape(x) -> str:
    return "[" + ", ".join(str(int(s)) for s in x) + "]"


def expect_tensor(actual, expected, what: str, dims: str = "", *, atol: float = 1e-4, rtol: float = 1e-4,
                  hints: tuple = ()) -> None:
    """Assert that ``actual`` is a tensor equal to ``expected`` (within tolerances); teach if not.

    ``dims`` names the expected dimensions (``"batch, pos, d_model"``).
    ``hints`` is a sequence of ``(candidate, message)``: if ``actual`` matches a
    candidate (a typical wrong answer, computed from the truth) the message
    says which mistake that was. Infinite entries (a causal mask) must match
    exactly.
    """
    import torch

    if actual is None:
        raise AssertionError(f"{what}: your function returned None; did you forget `return`?")
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    names = f"[{dims}] = " if dims else ""
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: expected shape {names}{_shape(expected.shape)}, got {_shape(actual.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if torch.isnan(a).any():
        raise AssertionError(f"{what}: your tensor contains NaN at {_shape(torch.nonzero(torch.isnan(a))[0])}")
    for cand, message in hints:
        c = cand.detach().double().cpu()
        if c.shape == a.shape and _close(a, c, atol, rtol) and not _close(a, e, atol, rtol):
            raise AssertionError(f"{what}: wrong values. {message}")
    if not _close(a, e, atol, rtol):
        guess = _diagnose(a, e, atol, rtol)
        if guess:
            raise AssertionError(f"{what}: wrong values. {guess}")
        diff = (a - e).abs().nan_to_num(float("inf"))
        diff[torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))] = 0
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{what}: wrong values; at index {list(idx)} you have {a[idx].item():.4g}, "
                             f"expected {e[idx].item():.4g} (max |difference| {diff.max().item():.3g})")


def _diagnose(a, e, atol: float, rtol: float) -> str:
    """A sentence naming the relation between a wrong tensor ``a`` and the truth ``e``, when it is a
    common one (a flipped sign, a constant factor, a transpose, a shift by one position, rows that
    are not normalised, logs for probabilities, a different mask); else ``""``."""
    import torch

    if a.numel() == 0 or not bool(torch.isfinite(e).all()) and not torch.equal(torch.isinf(a), torch.isinf(e)):
        if bool(torch.isinf(e).any()):
            return ("The -inf (masked) entries are not where they should be: check the mask "
                    "(the future keys j > i are masked, a position may attend to itself).")
        return ""
    fin = torch.isfinite(e) & torch.isfinite(a)
    if not bool(fin.all()):
        return ""
    if float(e.abs().max()) > atol and _close(-a, e, atol, rtol):
        return "Your values have the opposite sign of the expected ones (a flipped sign or a reversed difference)."
    ee = float((e * e).sum())
    if ee > 0:
        k = float((a * e).sum()) / ee
        if abs(k - 1) > 1e-3 and abs(k) > 1e-6 and _close(a, k * e, atol * max(1.0, abs(k)), rtol):
            return (f"Your values are the expected ones times {k:.4g}: a missing or extra scale or normalisation "
                    "(a sqrt(d_head), a mean for a sum, a log base, a count for a share).")
    if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and _close(a.transpose(-1, -2), e, atol, rtol):
        return "Your result is the transpose of the expected one: rows and columns (the last two dims) are swapped."
    for d in range(a.ndim):
        n = a.shape[d]
        if n < 3:
            continue
        for s, word in ((1, "later"), (-1, "earlier")):
            lo, hi = (a.narrow(d, s, n - 1), e.narrow(d, 0, n - 1)) if s == 1 else (a.narrow(d, 0, n - 1), e.narrow(d, 1, n - 1))
            if _close(lo, hi, atol, rtol):
                return (f"Your values are the expected ones shifted by one along dim {d} (yours sit one index {word}): "
                        "an off-by-one position, a missing or doubled shift to the next token.")
    rows = e.sum(-1) if e.ndim >= 1 else e
    ones = (rows - 1).abs() <= 1e-3          # rows that are distributions (an all-zero row may stand for "unseen")
    if bool((e >= 0).all()) and e.ndim >= 1 and bool(ones.any()) and bool((ones | (rows.abs() <= 1e-9)).all()):
        if bool((a <= 1e-9).all()) and _close(a.exp(), e, atol, rtol):
            return "Those are log-probabilities: the expected values are probabilities (exp of yours)."
        if not bool(torch.allclose(a.sum(-1)[ones], torch.ones_like(a.sum(-1)[ones]), atol=1e-3)):
            return ("Each row of the expected result is a probability distribution over the last dim (sums to 1); "
                    "yours do not sum to 1: normalise (softmax) over the last dim.")
    return ""


def _close(a, e, atol: float, rtol: float) -> bool:
    import torch

    if a.shape != e.shape:
        return False
    inf = torch.isinf(e)
    if not torch.equal(torch.isinf(a), inf) or not torch.equal(a[inf], e[inf]):
        return False
    return bool(torch.allclose(a[~inf], e[~inf], atol=atol, rtol=rtol))


def expect_number(actual, expected: float, what: str, *, tol: float, hint: str = "") -> None:
    """Assert that ``actual`` is a number within ``tol`` of ``expected``; teach if not."""
    try:
        value = float(actual)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"{what}: expected a number (float), got {type(actual).__name__}") from None
    if not (abs(value - expected) <= tol or (math.isinf(value) and value == expected)):
        why = ""
        if abs(expected) > tol and abs(value + expected) <= tol:
            why = " (the opposite sign: a flipped sign or a reversed difference)"
        elif math.isfinite(value) and abs(expected) > tol and abs(value * math.log(2) - expected) <= tol:
            why = " (in bits: the expected value is in nats, natural logs)"
        raise AssertionError(f"your value for {what} is {value:.4g}, expected about {expected:.4g}{why}"
                             + (f": {hint}" if hint else ""))


class alarm:
    """``with alarm(seconds):`` raises ``TimeoutError("timed out after S s")`` in a Python loop that overruns.

    Uses ``SIGALRM`` (Unix, main thread only); elsewhere it does nothing and the
    grader's watchdog is the only limit.
    """

    def __init__(self, seconds: float):
        import signal
        import threading

        self.seconds = seconds
        self.active = (seconds > 0 and hasattr(signal, "setitimer")
                       and threading.current_thread() is threading.main_thread())

    def _fire(self, signum, frame):
        raise TimeoutError(f"timed out after {self.seconds:g} s")

    def __enter__(self):
        if self.active:
            import signal

            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False
