"""What travels between the grader and the worker that runs a student's code, and how.

Frames: an 8-byte length, then the payload, over a pipe. The two directions differ:

- grader -> worker: :mod:`pickle` (the grader is trusted, so the worker may unpickle what
  it sends). Models and other modules travel as their class and state (hooks left out);
  a callable the worker cannot import (a lambda, a test's own function) travels as a
  *callback* id: calling it in the worker asks the grader to run it. See :func:`dumps_to_worker`.
- worker -> grader: only plain data, written with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, which cannot run code (:func:`dumps_plain`,
  :func:`loads_plain`). :func:`encode` turns what the student's code returned into plain
  data: tensors, numbers, strings, bytes, None, lists, tuples, dicts, plus tagged dicts for
  sets, generators (their state), numpy arrays, the lab's own dataclasses and objects (field
  by field), module state, and *handles* for callables (a hook or a metric the student
  built, run in the worker when called). :func:`decode` rebuilds those in the grader,
  importing classes only from ``toylab``.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pickle
import select
import struct
import time
import types

TAG = "\x00toylab"
MAX_FRAME = 1 << 28  # 256 MiB: a larger answer is refused, not read (no graded answer comes near)
_HEADER = struct.Struct("<Q")


class WorkerGone(Exception):
    """The worker died, or the pipe closed, before it answered."""


class WorkerLate(Exception):
    """The worker did not answer within the time it had."""


# ------------------------------------------------------------------ framing
def send_frame(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            raise WorkerGone("the pipe to the other process is closed") from None
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None, alive) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None or alive is not None:
            while True:
                wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if deadline is not None and wait <= 0:
                    raise WorkerLate("no answer in time")
                ready, _, _ = select.select([fd], [], [], wait)
                if ready:
                    break
                if alive is not None and not alive():
                    raise WorkerGone("the worker exited")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise WorkerGone("the pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(fd: int, deadline: float | None = None, alive=None) -> bytes:
    """One frame's payload. ``deadline`` (``time.monotonic()``) and ``alive()`` bound the wait."""
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline, alive))
    if n > MAX_FRAME:
        raise WorkerGone(f"the worker sent a message of {n} bytes (more than {MAX_FRAME})")
    return _read_exact(fd, n, deadline, alive)


# ------------------------------------------------------- worker -> grader: plain data
def dumps_plain(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def loads_plain(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _toylab_class_path(cls) -> str | None:
    mod = getattr(cls, "__module__", "") or ""
    if mod == "toylab" or mod.startswith("toylab."):
        return f"{mod}:{cls.__qualname__}"
    return None


def _plain_tensor(t):
    import torch

    t = t.detach()
    if type(t) is not torch.Tensor:
        t = t.as_subclass(torch.Tensor)
    return t.cpu()


def encode(value, register, depth: int = 0):
    """``value`` as plain data (see the module docstring); ``register(callable) -> int`` names handles."""
    import torch

    if depth > 60:
        raise TypeError("the value is nested more than 60 levels deep")
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return value
    for plain in (bool, int, float, str, bytes):  # a subclass (an IntEnum, a str subclass) goes as its plain type
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, torch.Tensor):
        t = _plain_tensor(value)
        if isinstance(value, torch.nn.Parameter):
            return {TAG: "param", "t": t, "rg": bool(value.requires_grad)}
        if value.requires_grad:
            return {TAG: "tensor", "t": t, "rg": True}
        return t
    if isinstance(value, (torch.Size, torch.dtype)):
        return value
    if isinstance(value, torch.device):
        return {TAG: "device", "s": str(value)}
    if isinstance(value, torch.Generator):
        return {TAG: "generator", "state": value.get_state()}
    mod = type(value).__module__
    if mod == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return {TAG: "ndarray", "t": torch.from_numpy(value.copy())}
        if isinstance(value, np.generic):
            return encode(value.item(), register, depth + 1)
    if isinstance(value, tuple):
        return tuple(encode(v, register, depth + 1) for v in value)
    if isinstance(value, list):
        return [encode(v, register, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return {TAG: type(value).__name__ if type(value) in (set, frozenset) else "set",
                "items": [encode(v, register, depth + 1) for v in value]}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == TAG:
                raise TypeError("a dict key is the grader's reserved tag")
            out[encode(k, register, depth + 1)] = encode(v, register, depth + 1)
        return out
    if isinstance(value, torch.nn.Module):
        return {TAG: "state", "state": {k: _plain_tensor(v) for k, v in value.state_dict().items()}}
    path = _toylab_class_path(type(value))
    if path is not None and not isinstance(value, type):
        if dataclasses.is_dataclass(value):
            return {TAG: "dataclass", "cls": path,
                    "fields": {f.name: encode(getattr(value, f.name), register, depth + 1)
                               for f in dataclasses.fields(value)}}
        if hasattr(value, "__dict__") and not callable(value):
            return {TAG: "object", "cls": path, "dict": encode(dict(vars(value)), register, depth + 1)}
    if callable(value):
        return {TAG: "handle", "id": register(value)}
    return {TAG: "unsupported", "type": f"{mod}.{type(value).__qualname__}"}


class Unreceivable(AssertionError):
    """A value the student's code returned that cannot be sent to the grader."""


def _toylab_class(path: str):
    mod, _, qual = path.partition(":")
    if not (mod == "toylab" or mod.startswith("toylab.")) or not qual:
        raise Unreceivable(f"the worker named a class outside toylab: {path!r}")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise Unreceivable(f"{path} is not a class")
    return obj


def decode(value, make_handle):
    """The inverse of :func:`encode`, in the grader; ``make_handle(id)`` builds a callable handle."""
    import torch

    if isinstance(value, list):
        return [decode(v, make_handle) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v, make_handle) for v in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {decode(k, make_handle): decode(v, make_handle) for k, v in value.items()}
    if kind == "param":
        return torch.nn.Parameter(value["t"], requires_grad=bool(value["rg"]))
    if kind == "tensor":
        return value["t"].requires_grad_(bool(value["rg"]))
    if kind == "device":
        return torch.device(str(value["s"]))
    if kind == "generator":
        g = torch.Generator()
        g.set_state(value["state"])
        return g
    if kind == "ndarray":
        return value["t"].numpy()
    if kind in ("set", "frozenset"):
        items = [decode(v, make_handle) for v in value["items"]]
        try:
            return set(items) if kind == "set" else frozenset(items)
        except TypeError as e:
            raise Unreceivable(f"your function returned a set the grader cannot rebuild: {e}") from None
    if kind == "handle":
        return make_handle(int(value["id"]))
    if kind == "state":
        return _ModuleState(value["state"])
    if kind == "dataclass":
        cls = _toylab_class(value["cls"])
        if not dataclasses.is_dataclass(cls):
            raise Unreceivable(f"{value['cls']} is not a dataclass")
        fields = {k: decode(v, make_handle) for k, v in value["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            obj = cls(**{k: v for k, v in fields.items() if k in init})
        except Exception as e:
            raise Unreceivable(f"your function returned a {cls.__name__} that the lab refuses: "
                               f"{type(e).__name__}: {e}") from None
        for k, v in fields.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    if kind == "object":
        cls = _toylab_class(value["cls"])
        obj = object.__new__(cls)
        obj.__dict__.update(decode(value["dict"], make_handle))
        return obj
    if kind == "unsupported":
        raise Unreceivable(f"your function returned a {value.get('type')}, which cannot be sent to the grader: "
                           "return tensors, numbers, strings, None, lists, tuples, dicts or sets of these")
    raise Unreceivable(f"the worker sent an unknown kind of value {kind!r}")


class _ModuleState:
    """A module's state dict from the worker (only ever applied to the grader's own module)."""

    def __init__(self, state: dict):
        self.state = state


# ------------------------------------------------------- grader -> worker: pickle
_HOOK_ATTRS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")
_SENT_BY_NAME = ("toylab", "torch", "math", "builtins", "numpy", "operator", "functools")


def rebuild_module(cls, state: dict):
    """Runs in the worker: a module of class ``cls`` with the grader's ``__dict__`` (hooks removed)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _importable(fn) -> bool:
    mod = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", "") or ""
    return mod.split(".")[0] in _SENT_BY_NAME and "<" not in qual


def dumps_to_worker(obj, callback_id) -> bytes:
    """Pickle ``obj`` for the worker; ``callback_id(fn)`` returns the id of a callable the
    grader keeps (or ``None`` to pickle it by name)."""
    import torch

    class _P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, type):
                return None
            if getattr(o, "_toylab_handle_id", None) is not None and type(o).__name__ == "RemoteFunction":
                return ("handle", o._toylab_handle_id)
            if isinstance(o, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)) \
                    and not isinstance(o, torch.nn.Module):
                if isinstance(o, types.FunctionType) and _importable(o):
                    return None
                if isinstance(o, types.BuiltinFunctionType):
                    return None
                return ("callback", callback_id(o))
            if callable(o) and not isinstance(o, torch.nn.Module) and not isinstance(o, torch.Tensor) \
                    and type(o).__module__.split(".")[0] not in _SENT_BY_NAME:
                return ("callback", callback_id(o))
            return None

        def reducer_override(self, o):
            if isinstance(o, torch.nn.Module) and not isinstance(o, type):
                state = dict(o.__dict__)
                for key in _HOOK_ATTRS:
                    if key in state:
                        state[key] = type(state[key])()
                if isinstance(state.get("_fwd_hooks"), list):
                    state["_fwd_hooks"] = []
                return rebuild_module, (type(o), state)
            return NotImplemented

    buf = io.BytesIO()
    _P(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def loads_from_grader(data: bytes, resolve):
    """Unpickle in the worker; ``resolve(kind, id)`` turns a persistent id into a callable."""

    class _U(pickle.Unpickler):
        def persistent_load(self, pid):
            return resolve(*pid)

    return _U(io.BytesIO(data)).load()
