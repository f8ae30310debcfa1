"""The student's module as the graded tests see it: a proxy whose functions run in the worker.

:func:`remote_answers` is what :func:`toylab.course.answers.load_answers` returns whenever the
answers are not the repository's own ``solutions/`` in plain pytest. Each function of a
:class:`RemoteModule` is a :class:`RemoteFunction`: calling it sends the name and the
arguments to the worker (:class:`toylab.course.sandbox.Worker`), rebuilds the answer as plain
data, applies the in-place changes the call made to its arguments (so a test that checks that
an input was left alone still catches a change), and raises the exception the student's code
raised as the same built-in exception class (``NotImplementedError`` for a stub, ``ValueError``
for a refused input, ...). A callable the student's code returns (a hook, a metric) is a
:class:`RemoteFunction` too.
"""

from __future__ import annotations

import builtins
import os
import stat
from pathlib import Path

from toylab.course import wire
from toylab.course.contain import Limits, hidden_paths, worker_uid
from toylab.course.sandbox import Worker

MAX_SOURCE = 1 << 20  # a submitted file over 1 MiB is refused


def _apply(orig, new):
    """Write ``new`` (the worker's value of an argument after the call) into ``orig``; returns the result."""
    import torch

    if isinstance(orig, torch.Tensor) and isinstance(new, torch.Tensor):
        with torch.no_grad():
            if orig.shape == new.shape:
                orig.copy_(new)
            else:
                orig.data = new.to(orig.dtype)
        return orig
    if isinstance(orig, torch.Generator) and isinstance(new, torch.Generator):
        orig.set_state(new.get_state())
        return orig
    if isinstance(orig, torch.nn.Module) and isinstance(new, wire._ModuleState):
        with torch.no_grad():
            for k, v in orig.state_dict().items():
                w = new.state.get(k)
                if isinstance(w, torch.Tensor) and w.shape == v.shape:
                    v.copy_(w)
        return orig
    if isinstance(orig, list) and isinstance(new, list):
        if len(orig) == len(new):
            for i, v in enumerate(new):
                orig[i] = _apply(orig[i], v)
        else:
            orig[:] = new
        return orig
    if isinstance(orig, tuple) and isinstance(new, tuple) and len(orig) == len(new):
        for o, v in zip(orig, new):
            _apply(o, v)
        return orig
    if isinstance(orig, dict) and isinstance(new, dict):
        for k in [k for k in orig if k not in new]:
            del orig[k]
        for k, v in new.items():
            orig[k] = _apply(orig[k], v) if k in orig else v
        return orig
    if isinstance(orig, set) and isinstance(new, set):
        orig.clear()
        orig.update(new)
        return orig
    if type(orig) is type(new) and hasattr(orig, "__dict__") and type(orig).__module__.startswith("toylab"):
        for k, v in vars(new).items():
            orig.__dict__[k] = _apply(orig.__dict__[k], v) if k in orig.__dict__ else v
        return orig
    return new


def _raise(names, message):
    for name in names:
        cls = getattr(builtins, str(name), None)
        if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
            try:
                exc = cls(message)
            except Exception:  # an exception class that needs other arguments
                continue
            raise exc
    raise RuntimeError(message)


class RemoteFunction:
    """A function that runs in the worker; call it like the student's own function."""

    def __init__(self, worker: Worker, target: tuple, name: str, module: "RemoteModule | None" = None):
        self._worker, self._target, self.__name__ = worker, target, name
        self.__qualname__ = name
        self._generation = worker.generation
        self._module = module
        self._toylab_handle_id = target[1] if target[0] == "handle" else None

    def __repr__(self) -> str:
        return f"<function {self.__name__} (runs in the grading worker)>"

    def __call__(self, *args, **kwargs):
        import torch

        w = self._worker
        if self._module is not None:
            self._module._ensure_loaded()
            msg = ("call", self._module._name, self._target[1], args, kwargs, torch.is_grad_enabled())
        else:
            if w.proc is None or w.generation != self._generation:
                raise AssertionError(f"{self.__name__} came from a process that was stopped since (it crashed or "
                                     "timed out earlier): it can no longer be called")
            msg = ("handle", self._target[1], args, kwargs, torch.is_grad_enabled())
        reply = w.request(msg)
        if reply[0] == "error":
            if str(reply[2]).startswith("output limit: "):  # its output file is full: a fresh worker for the rest
                w.stop(restart=True)
                raise AssertionError(str(reply[2])[len("output limit: "):])
            _raise(reply[1], reply[2])
        _, value, changed = reply
        value = wire.decode(value, w.handle)
        for key, new in changed:
            new = wire.decode(new, w.handle)
            if isinstance(key, int) and 0 <= key < len(args):
                _apply(args[key], new)
            elif isinstance(key, str) and key in kwargs:
                _apply(kwargs[key], new)
        return value


def read_answer_file(path: Path) -> str:
    """The text of a submitted file: a regular file (not a symbolic link), at most 1 MiB, UTF-8."""
    path = Path(path)
    if path.is_symlink():
        raise AssertionError(f"{path.name} is a symbolic link: submit the file itself")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise AssertionError(f"no file {path.name} in {path.parent}: the answers folder must hold one file per "
                             "chapter") from None
    except OSError as e:
        raise AssertionError(f"could not open {path.name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AssertionError(f"{path.name} is not a regular file")
        if st.st_size > MAX_SOURCE:
            raise AssertionError(f"{path.name} is {st.st_size} bytes: a chapter's answers must fit in 1 MiB")
        data = os.read(fd, MAX_SOURCE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AssertionError(f"could not import {path.name}: it is not UTF-8 text") from None


class RemoteModule:
    """The student's ``chNN_<topic>.py``, loaded in the worker; its public functions are proxies."""

    def __init__(self, worker: Worker, name: str, path: Path):
        self._worker, self._name, self._path = worker, name, path
        self._names: dict = {}
        self._loaded_gen = -1
        self.__name__ = name
        self.__file__ = str(path)

    def _ensure_loaded(self) -> None:
        self._worker.ready()
        if self._loaded_gen == self._worker.generation:
            return
        source = read_answer_file(self._path)
        reply = self._worker.request(("load", self._name, source, self._path.name))
        if reply[0] == "error":
            raise AssertionError(reply[2])
        self._names = dict(reply[1])
        self._loaded_gen = self._worker.generation

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        self._ensure_loaded()
        kind = self._names.get(attr)
        if kind is None:
            raise AttributeError(f"module {self._name!r} has no attribute {attr!r}")
        if kind == "function":
            return RemoteFunction(self._worker, ("call", attr), attr, module=self)
        return kind[1]

    def __dir__(self):
        return sorted(self._names)


_worker: Worker | None = None
_modules: dict[Path, RemoteModule] = {}


def _handle(worker: Worker, ident: int) -> RemoteFunction:
    return RemoteFunction(worker, ("handle", ident), f"<a function your code returned (#{ident})>")


def shared_worker(root: Path, call_timeout: float) -> Worker:
    """This process's worker (one per grading process; restarted after a crash); ``root`` is the
    repository (what the worker must not see), ``call_timeout`` the seconds each call may take."""
    global _worker
    if _worker is None:
        uid = worker_uid(root)
        hide = hidden_paths(root) if uid is not None else None
        _worker = Worker(Limits.from_env(), uid=uid, hide=hide, call_timeout=call_timeout)
        _worker.handle_factory = _handle
        import atexit

        atexit.register(_worker.close)
    return _worker


def prestart(folder: Path, root: Path, call_timeout: float) -> None:
    """Start this process's worker in the background (the graded tests' conftest does, at session
    start), with the answers ``folder`` hidden from it."""
    w = shared_worker(root, call_timeout)
    if w.hide is not None and str(Path(folder).resolve()) not in w.hide:
        w.hide.append(str(Path(folder).resolve()))
    w.prestart()


def remote_answers(path: Path, module: str, root: Path, call_timeout: float) -> RemoteModule:
    """The proxy for ``path`` (``<answers>/<module>.py``), loaded (an import error raises ``AssertionError``)."""
    path = Path(path)
    w = shared_worker(root, call_timeout)
    if w.hide is not None and str(path.parent.resolve()) not in w.hide:
        w.hide.append(str(path.parent.resolve()))
    mod = _modules.get(path)
    if mod is None:
        mod = _modules[path] = RemoteModule(w, module, path)
    mod._ensure_loaded()
    return mod
