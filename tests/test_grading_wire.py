"""The messages between the grader and the worker, and the containment pieces that need no worker."""

import io
import pickle

import pytest
import torch

from toylab.course import contain, wire
from toylab.course.remote import _apply, _raise, read_answer_file
from toylab.model import ModelConfig


def _roundtrip(value):
    handles = []

    def register(fn):
        handles.append(fn)
        return len(handles)

    data = wire.dumps_plain(wire.encode(value, register))
    return wire.decode(wire.loads_plain(data), lambda i: ("handle", i)), handles


def test_plain_values_survive_the_trip():
    g = torch.Generator().manual_seed(5)
    g.manual_seed(7)
    value = {"t": torch.arange(6.0).reshape(2, 3), "p": torch.nn.Parameter(torch.ones(2)), "s": {1, 2},
             "f": frozenset({"a"}), "tu": (1, 2.5, None, "x", b"b"), (0, 1): [True, 3], "g": g,
             "cfg": ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=2)}
    back, handles = _roundtrip(value)
    assert torch.equal(back["t"], value["t"]) and isinstance(back["p"], torch.nn.Parameter)
    assert back["s"] == {1, 2} and back["f"] == frozenset({"a"}) and back["tu"] == (1, 2.5, None, "x", b"b")
    assert back[(0, 1)] == [True, 3] and torch.equal(back["g"].get_state(), g.get_state())
    assert back["cfg"] == value["cfg"] and type(back["cfg"]) is ModelConfig
    assert not handles


def test_cheating_values_arrive_as_plain_ones():
    class Liar(float):
        def __eq__(self, other):
            return True

    class Agree(torch.Tensor):
        pass

    back, _ = _roundtrip([Liar(0.25), torch.zeros(2).as_subclass(Agree)])
    assert type(back[0]) is float and back[0] == 0.25 and type(back[1]) is torch.Tensor


def test_callables_become_handles_and_unknown_objects_are_refused():
    back, handles = _roundtrip({"hook": lambda z, hook: z})
    assert back["hook"] == ("handle", 1) and len(handles) == 1

    class Odd:
        __slots__ = ()

    with pytest.raises(wire.Unreceivable, match="cannot be sent to the grader"):
        _roundtrip(Odd())


def test_the_decoder_imports_nothing_outside_toylab_and_runs_no_pickle():
    with pytest.raises(wire.Unreceivable, match="outside toylab"):
        wire.decode({wire.TAG: "object", "cls": "os:system", "dict": {}}, None)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(Exception):
        wire.loads_plain(pickle.dumps(Evil()))
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)
    assert wire.loads_plain(buf.getvalue()) == {"x": 1}


def test_in_place_changes_are_applied_to_the_graders_objects():
    t, lst, d = torch.zeros(3), [torch.zeros(2), 1], {"a": torch.zeros(1)}
    _apply(t, torch.ones(3))
    _apply(lst, [torch.ones(2), 2])
    _apply(d, {"a": torch.ones(1), "b": 5})
    assert t.tolist() == [1, 1, 1] and lst[0].tolist() == [1, 1] and lst[1] == 2
    assert d["a"].item() == 1 and d["b"] == 5


def test_student_exceptions_come_back_as_builtin_classes():
    with pytest.raises(NotImplementedError):
        _raise(["NotImplementedError", "RuntimeError", "Exception"], "stub")
    with pytest.raises(ValueError, match="bad k"):
        _raise(["ValueError"], "bad k")
    with pytest.raises(RuntimeError):
        _raise(["SomethingOfTheirs"], "x")


def test_submitted_files_must_be_regular_files(tmp_path):
    (tmp_path / "real.py").write_text("x = 1\n")
    (tmp_path / "link.py").symlink_to(tmp_path / "real.py")
    assert read_answer_file(tmp_path / "real.py") == "x = 1\n"
    with pytest.raises(AssertionError, match="symbolic link"):
        read_answer_file(tmp_path / "link.py")
    with pytest.raises(AssertionError, match="no file missing.py"):
        read_answer_file(tmp_path / "missing.py")
    (tmp_path / "big.py").write_bytes(b"#" * (2 << 20))
    with pytest.raises(AssertionError, match="1 MiB"):
        read_answer_file(tmp_path / "big.py")


def test_the_note_says_when_privileges_cannot_be_dropped(monkeypatch):
    monkeypatch.setattr(contain, "is_root", lambda: False)
    note = contain.containment_note(None)
    assert "not root" in note and "can read solutions/" in note


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv(contain.LIMITS_ENV, "cpu=5,mem=1024,fsize=2,nproc=9")
    lim = contain.Limits.from_env()
    assert (lim.cpu_s, lim.memory_mib, lim.fsize_mib, lim.nproc) == (5, 1024, 2, 9)


def test_a_worker_that_cannot_start_leaves_nothing_behind(monkeypatch, tmp_path):
    import glob

    from toylab.course import sandbox

    monkeypatch.setattr(sandbox.sys, "executable", str(tmp_path / "no-such-python"))
    before = set(glob.glob("/tmp/toylab-worker-*"))
    w = sandbox.Worker(contain.Limits(), uid=None, hide=None)
    with pytest.raises(AssertionError, match="could not be started"):
        w.start()
    assert set(glob.glob("/tmp/toylab-worker-*")) == before and w.proc is None
