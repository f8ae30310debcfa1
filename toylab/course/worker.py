"""The worker: the only process that imports a student's answers (runs as ``python -m``-less code).

Started by :mod:`toylab.course.sandbox`, already contained (its own session, limits, an
unprivileged user where the grader is root). It reads requests from one pipe and answers on
another (:mod:`toylab.course.wire`):

=================================  ==============================================================
``("load", module, source, file)``  compile and run a student's file; answer its public names
``("call", module, name, a, kw, g)``  call a function of a loaded file (grad mode ``g``)
``("handle", id, a, kw, g)``        call a callable the student's code returned earlier
``("drop", id)``                    forget a handle
=================================  ==============================================================

An answer is ``("ok", value, changed)`` (``changed``: the arguments the call changed in place,
as ``[(index or name, new value)]``) or ``("error", [exception class names], message)``. While a
call runs, the student's code may call a grader callback: the worker sends ``("callback", id,
args, kwargs)`` and serves nested requests until ``("return", value)`` or ``("raise", names,
message)`` comes back.
"""

from __future__ import annotations

import builtins
import copy
import errno
import os
import sys
import types

from toylab.course import wire


OUTPUT_LIMIT_HIT = "output limit"


class _State:
    def __init__(self, req: int, resp: int):
        self.req, self.resp = req, resp
        self.modules: dict[str, types.ModuleType] = {}
        self.handles: dict[int, object] = {}
        self.next_id = 1

    def register(self, fn) -> int:
        for k, v in self.handles.items():
            if v is fn:
                return k
        self.next_id += 1
        self.handles[self.next_id] = fn
        return self.next_id

    def send(self, msg) -> None:
        wire.send_frame(self.resp, wire.dumps_plain(msg))

    def receive(self):
        return wire.loads_from_grader(wire.recv_frame(self.req), self._resolve)

    def _resolve(self, kind, ident):
        if kind == "handle":
            return self.handles[ident]
        return _Callback(self, ident)


class GraderError(Exception):
    """A grader callback raised (its class name and message are in the text)."""


class _Callback:
    """A callable that lives in the grader (a metric the test passes in); calling it asks the grader."""

    def __init__(self, state: _State, ident: int):
        self._state, self._id = state, ident

    def __call__(self, *args, **kwargs):
        st = self._state
        st.send(("callback", self._id, wire.encode(args, st.register), wire.encode(kwargs, st.register)))
        return serve(st, until_return=True)


def _error(e: BaseException):
    names = [c.__name__ for c in type(e).__mro__ if getattr(builtins, c.__name__, None) is c]
    if isinstance(e, OSError) and e.errno == errno.EFBIG:
        import resource

        mib = resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20
        return ("error", ["AssertionError"], f"{OUTPUT_LIMIT_HIT}: your code wrote more than {mib} MiB "
                "(printing too much?), so its process was stopped")
    if not isinstance(e, Exception):
        return ("error", ["AssertionError"], f"your code raised {type(e).__name__}({e}) instead of returning")
    return ("error", names, f"{e}")


def _snapshot(value, depth=0):
    import torch

    if depth > 20:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, torch.nn.Module):
        return {k: v.detach().clone() for k, v in value.state_dict().items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return set(value)
    if isinstance(value, dict):
        return {k: _snapshot(v, depth + 1) for k, v in value.items()}
    if hasattr(value, "__dict__") and not callable(value) and type(value).__module__.startswith("toylab"):
        return {k: _snapshot(v, depth + 1) for k, v in vars(value).items()}
    try:
        return copy.copy(value)
    except Exception:
        return value


def _same(snap, value, depth=0) -> bool:
    import torch

    if depth > 20:
        return True
    if isinstance(value, torch.Tensor):
        return isinstance(snap, torch.Tensor) and snap.shape == value.shape and snap.dtype == value.dtype \
            and bool(torch.equal(snap, value.detach()) or (torch.isnan(snap).all() and torch.isnan(value).all()))
    if isinstance(value, torch.Generator):
        return torch.equal(snap, value.get_state())
    if isinstance(value, torch.nn.Module):
        state = value.state_dict()
        return snap.keys() == state.keys() and all(_same(snap[k], state[k], depth + 1) for k in state)
    if isinstance(value, (list, tuple)):
        return len(snap) == len(value) and all(_same(s, v, depth + 1) for s, v in zip(snap, value))
    if isinstance(value, (set, frozenset)):
        return snap == value
    if isinstance(value, dict):
        return snap.keys() == value.keys() and all(_same(snap[k], value[k], depth + 1) for k in value)
    if hasattr(value, "__dict__") and not callable(value) and type(value).__module__.startswith("toylab"):
        d = vars(value)
        return isinstance(snap, dict) and snap.keys() == d.keys() and all(
            _same(snap[k], d[k], depth + 1) for k in d)
    try:
        return bool(snap == value)
    except Exception:
        return True


def _call(st: _State, fn, args, kwargs, grad):
    import torch

    before = [_snapshot(a) for a in args]
    before_kw = {k: _snapshot(v) for k, v in kwargs.items()}
    try:
        with torch.set_grad_enabled(bool(grad)):
            result = fn(*args, **kwargs)
        value = wire.encode(result, st.register)
        changed = [(i, wire.encode(a, st.register)) for i, (s, a) in enumerate(zip(before, args))
                   if not _same(s, a)]
        changed += [(k, wire.encode(v, st.register)) for k, v in kwargs.items() if not _same(before_kw[k], v)]
    except BaseException as e:  # noqa: BLE001 - every failure of the student's code is reported
        return _error(e)
    return ("ok", value, changed)


def _load(st: _State, module: str, source: str, filename: str):
    mod = types.ModuleType(f"toylab_answers_{module}")
    mod.__file__ = filename
    try:
        code = compile(source, filename, "exec")
        sys.modules[mod.__name__] = mod
        exec(code, mod.__dict__)
    except BaseException as e:  # noqa: BLE001
        sys.modules.pop(mod.__name__, None)
        return ("error", ["AssertionError"], f"could not import {os.path.basename(filename)}: "
                f"{type(e).__name__}: {e}")
    st.modules[module] = mod
    names = {}
    for k, v in vars(mod).items():
        if k.startswith("_") or isinstance(v, types.ModuleType) or isinstance(v, type):
            continue
        if callable(v):
            names[k] = "function"
        elif v is None or isinstance(v, (bool, int, float, str)):
            names[k] = ("value", v)
    return ("ok", names, [])


def serve(st: _State, until_return: bool = False):
    """Answer requests; with ``until_return``, return the value of the grader's ``("return", v)``."""
    while True:
        msg = st.receive()
        op = msg[0]
        if op == "return":
            return msg[1]
        if op == "raise":
            cls = getattr(builtins, msg[1], None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = GraderError
            raise cls(msg[2])
        if op == "load":
            st.send(_load(st, *msg[1:]))
        elif op == "call":
            _, module, name, args, kwargs, grad = msg
            fn = getattr(st.modules.get(module), name, None)
            if fn is None or not callable(fn):
                st.send(("error", ["AssertionError"], f"{module}.py has no function {name}"))
            else:
                st.send(_call(st, fn, args, kwargs, grad))
        elif op == "handle":
            _, ident, args, kwargs, grad = msg
            st.send(_call(st, st.handles[ident], args, kwargs, grad))
        elif op == "drop":
            st.handles.pop(msg[1], None)
        elif op == "exit":
            os._exit(0)


def main(req: int, resp: int) -> None:  # pragma: no cover - runs in the worker
    import torch

    torch.set_num_threads(1)
    st = _State(req, resp)
    st.send(("ready", os.getpid(), os.getuid()))
    try:
        serve(st)
    except wire.WorkerGone:
        os._exit(0)
