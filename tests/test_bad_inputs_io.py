"""Bad or unusual inputs to training settings, checkpoints, the CLI and the grader, and the message each gets.

One table: each case does one thing a curious student (or a full disk) might
do and names the sentence that must come back. API cases must raise a
ValueError/TypeError/OSError (never a deep torch traceback or a silent wrong
file); CLI cases must exit non-zero with the sentence on stderr. Run with
``-s`` to print the table of cases and messages.
"""

from __future__ import annotations

import errno
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from toylab.training import checkpoint

from toylab.course import commands
from toylab.files import SaveError
from toylab.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toylab.cli import main
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import get_preset
from toylab.training.train import TrainConfig, TrainingInterrupted, train

CFG = ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=1, n_heads=2, positional="shortformer")
TINY = ["train", "bigram-0l", "--steps", "2", "--quiet"]


@dataclass
class Ctx:
    tmp: object
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture


@dataclass
class Case:
    name: str
    action: Callable[[Ctx], object]  # raises (API) or returns the exit code (CLI)
    match: str  # the sentence (a regex) the user gets
    cli: bool = False


def _save(ctx: Ctx, model=None, name="m.pt", **kw):
    spec = dict(data_spec={"kind": "bigram"}, train_spec={}, seed=0)
    spec.update(kw)
    return save_checkpoint(ctx.tmp / name, model or AttnOnlyTransformer(CFG, seed=0), **spec)


def _nan_model():
    m = AttnOnlyTransformer(CFG, seed=0)
    with torch.no_grad():
        m.blocks[0].attn.W_Q[1, 2, 3] = math.nan
    return m


def _nan_file(ctx: Ctx):
    path = _save(ctx)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["W_U"][0, 0] = math.inf
    torch.save(payload, path)
    return load_checkpoint(path)


def _full_disk(ctx: Ctx):
    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(torch, "save", full)
    return _save(ctx)


def _zip_writer_fails(ctx: Ctx):
    def enforce(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    ctx.monkeypatch.setattr(torch, "save", enforce)
    return _save(ctx)


def _read_only(ctx: Ctx):
    ctx.monkeypatch.setattr(checkpoint.os, "access", lambda p, mode: False)  # root ignores permission bits


def _cli_full_disk(ctx: Ctx):
    _full_disk_patch(ctx)
    return main(TINY + ["--out", str(ctx.tmp / "m.pt")])


def _full_disk_patch(ctx: Ctx):
    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(torch, "save", full)


def _ctrl_c(ctx: Ctx):
    def stop(entry):
        raise KeyboardInterrupt

    p = get_preset("bigram-0l")
    return train(p.model, p.data, TrainConfig(steps=6, eval_every=2, batch_size=8), seed=0, progress=False,
                 callback=stop)


def _stale_json(ctx: Ctx):
    assert main(TINY + ["--out", str(ctx.tmp / "m.pt")]) == 0
    meta = ctx.tmp / "m.json"
    meta.write_text(meta.read_text().replace('"sha256": "', '"sha256": "0'))
    return main(["info", str(ctx.tmp / "m.pt")])


def _no_pytest(ctx: Ctx):
    import importlib.util

    real = importlib.util.find_spec
    ctx.monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pytest" else real(n, *a))
    return commands.main([str(ctx.tmp)])


def _grade_never_runs(ctx: Ctx):
    def must_not_grade(*a, **k):
        raise AssertionError("grading started before the arguments were checked")

    ctx.monkeypatch.setattr(commands, "grade", must_not_grade)


P = get_preset("bigram-0l")
CASES = [
    # --- TrainConfig, validated like ModelConfig
    *[Case(f"TrainConfig({k}={v!r})", (lambda ctx, k=k, v=v: TrainConfig(**{k: v})), m) for k, v, m in [
        ("lr", math.inf, r"TrainConfig.lr must be a finite number, got inf"),
        ("lr", math.nan, r"TrainConfig.lr must be a finite number, got nan"),
        ("lr", 0.0, r"TrainConfig.lr must be positive \(and finite\), got 0.0"),
        ("lr", -1e-3, r"TrainConfig.lr must be positive"),
        ("grad_clip", -1.0, r"grad_clip must be finite and >= 0 \(0 = no clipping\), got -1.0"),
        ("grad_clip", math.nan, r"TrainConfig.grad_clip must be a finite number, got nan"),
        ("grad_clip", math.inf, r"TrainConfig.grad_clip must be a finite number, got inf"),
        ("final_lr_frac", -0.1, r"final_lr_frac must be in \[0, 1\], got -0.1"),
        ("final_lr_frac", 1.5, r"final_lr_frac must be in \[0, 1\], got 1.5"),
        ("betas", (0.9, 1.0), r"TrainConfig.betas\[1\] must be in \[0, 1\), got 1.0"),
        ("betas", (1.2, 0.99), r"TrainConfig.betas\[0\] must be in \[0, 1\), got 1.2"),
        ("betas", (-0.1, 0.99), r"TrainConfig.betas\[0\] must be in \[0, 1\)"),
        ("betas", (0.9, math.nan), r"TrainConfig.betas\[1\] must be a finite number, got nan"),
        ("betas", (0.9,), r"TrainConfig.betas must be a pair"),
        ("betas", "ab", r"TrainConfig.betas must be a pair"),
        ("warmup_steps", math.nan, r"warmup_steps must be a non-negative integer, got nan"),
        ("warmup_steps", -1, r"warmup_steps must be a non-negative integer, got -1"),
        ("warmup_steps", 2.5, r"warmup_steps must be a non-negative integer, got 2.5"),
        ("prefix_steps", -3, r"prefix_steps must be a non-negative integer, got -3"),
        ("weight_decay", -0.01, r"weight_decay must be finite and >= 0, got -0.01"),
        ("weight_decay", math.inf, r"TrainConfig.weight_decay must be a finite number, got inf"),
        ("eval_batch", 0, r"eval_batch must be a positive integer, got 0"),
        ("steps", True, r"steps must be a positive integer, got True"),
    ]],
    # --- train(seed=...)
    *[Case(f"train(seed={s!r})", (lambda ctx, s=s: train(P.model, P.data, P.train, seed=s, progress=False)), m)
      for s, m in [(-1, r"seed must be in \[0, 2\*\*63\) \(torch generators take 64-bit seeds\), got -1"),
                   (2**64, r"seed must be in \[0, 2\*\*63\).*got 18446744073709551616"),
                   (2**63, r"seed must be in \[0, 2\*\*63\)"),
                   (1.5, r"seed must be an integer, got 1.5")]],
    Case("train(train_cfg={'lr': 1})", lambda ctx: train(P.model, P.data, {"lr": 1}, progress=False),
         r"train_cfg must be a TrainConfig, got dict"),
    Case("Ctrl-C during train()", _ctrl_c, r"training interrupted after 2 steps"),
    # --- save_checkpoint / load_checkpoint
    Case("save_checkpoint: a set in the data spec", lambda ctx: _save(ctx, data_spec={"kind": "x", "a": {1, 2}}),
         r"data_spec\['a'\] is a builtins.set; a checkpoint stores only JSON-like data"),
    Case("save_checkpoint: a numpy int in the train spec", lambda ctx: _save(ctx, train_spec={"steps": np.int64(3)}),
         r"train_spec\['steps'\] is a numpy.int64.*convert it first"),
    Case("save_checkpoint: a tensor in the metrics", lambda ctx: _save(ctx, metrics={"loss": torch.tensor(1.0)}),
         r"metrics\['loss'\] is a torch.Tensor"),
    Case("save_checkpoint: an object as the spec", lambda ctx: _save(ctx, data_spec=object()),
         r"data_spec is a builtins.object"),
    Case("save_checkpoint: a non-string key", lambda ctx: _save(ctx, history=[{1: 2.0}]),
         r"history\[0\] has the key 1 \(int\); keys must be strings"),
    Case("save_checkpoint: NaN in a weight", lambda ctx: _save(ctx, model=_nan_model()),
         r"weight blocks.0.attn.W_Q has 1 non-finite value\(s\) \(1 NaN, 0 inf\).*did training diverge"),
    Case("load_checkpoint: inf in a weight", _nan_file, r"weight W_U has 1 non-finite value\(s\) \(0 NaN, 1 inf\)"),
    Case("load_checkpoint on a folder", lambda ctx: load_checkpoint(ctx.tmp), r"is a folder, not a checkpoint file"),
    Case("save_checkpoint onto a folder", lambda ctx: (ctx.tmp / "m.pt").mkdir() or _save(ctx),
         r"m.pt is a folder; give a file path such as .*m.pt/model.pt"),
    Case("save_checkpoint on a full disk", _full_disk,
         r"could not write .*m.pt: No space left on device \(an existing file there is untouched\)"),
    Case("save_checkpoint: torch's zip writer fails", _zip_writer_fails,
         r"torch could not write the file \(full disk\?\)"),
    Case("save_checkpoint into a read-only folder", lambda ctx: _read_only(ctx) or _save(ctx),
         r"cannot write .*m.pt: the folder .* is not writable"),
    Case("save_checkpoint(metadata=...) to a .json path",
         lambda ctx: _save(ctx, name="m.json", metadata={}), r"a checkpoint path must not end in .json"),
    # --- toylab train / info
    Case("toylab train --out model.json", lambda ctx: main(TINY + ["--out", str(ctx.tmp / "model.json")]),
         r"--out .*model.json: a checkpoint path must not end in .json .*use e.g. .*model.pt", cli=True),
    Case("toylab train --out FOLDER", lambda ctx: main(TINY + ["--out", str(ctx.tmp)]),
         r"is a folder; give a file path such as", cli=True),
    Case("toylab train --out READ-ONLY/m.pt", lambda ctx: _read_only(ctx) or main(TINY + ["--out", str(ctx.tmp / "m.pt")]),
         r"cannot write .*m.pt: the folder .* is not writable", cli=True),
    Case("toylab train --out on a full disk", _cli_full_disk,
         r"toylab train: error: could not write .*m.pt: No space left on device", cli=True),
    Case("toylab train --seed -1", lambda ctx: main(TINY + ["--seed", "-1", "--out", str(ctx.tmp / "m.pt")]),
         r"toylab train: error: seed must be in \[0, 2\*\*63\)", cli=True),
    Case("toylab info: a .json describing another .pt", _stale_json,
         r"toylab info: warning: the metadata .*m.json describes another checkpoint", cli=True),
    # --- toylab grade
    *[Case(f"toylab grade --timeout {t}", (lambda ctx, t=t: _grade_never_runs(ctx) or commands.main(
        [str(ctx.tmp), "--timeout", t])), rf"timeout must be a finite number of seconds > 0, got {m}", cli=True)
      for t, m in [("nan", "nan"), ("inf", "inf"), ("-1", "-1.0"), ("0", "0.0")]],
    Case("toylab grade --json FOLDER", lambda ctx: _grade_never_runs(ctx) or commands.main(
        [str(ctx.tmp), "--json", str(ctx.tmp)]), r"is a folder; give a file path", cli=True),
    Case("toylab grade --json READ-ONLY/g.json", lambda ctx: _grade_never_runs(ctx) or _read_only(ctx) or commands.main(
        [str(ctx.tmp), "--json", str(ctx.tmp / "g.json")]), r"the folder .* is not writable", cli=True),
    Case("toylab grade --json answers.py", lambda ctx: _grade_never_runs(ctx) or commands.main(
        [str(ctx.tmp), "--json", str(ctx.tmp / "ch00.py")]), r"refusing to overwrite a .py file", cli=True),
    Case("toylab grade without pytest", _no_pytest,
         r"toylab grade runs the graded tests with pytest.*pip install 'pytest>=7.4'", cli=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_message(case, tmp_path, monkeypatch, capsys, pytestconfig):
    ctx = Ctx(tmp_path, monkeypatch, capsys)
    if case.cli:
        code = case.action(ctx)
        err = capsys.readouterr().err
        assert code not in (0, None), f"{case.name}: exit {code}, stderr {err!r}"
        assert re.search(case.match, err), f"{case.name}: {err!r}"
        message = err.strip().splitlines()[-1]
    else:
        with pytest.raises((ValueError, TypeError, OSError, KeyboardInterrupt)) as info:
            case.action(ctx)
        assert not isinstance(info.value, KeyboardInterrupt) or isinstance(info.value, TrainingInterrupted)
        assert re.search(case.match, str(info.value)), f"{case.name}: {info.value!r}"
        message = f"{type(info.value).__name__}: {info.value}"
    if pytestconfig.getoption("capture") == "no":  # `pytest -s` prints the table of cases and messages
        print(f"\n  {case.name:50s} -> {message[:300]}", end="")


def test_the_interrupted_result_is_marked_partial(tmp_path):
    with pytest.raises(TrainingInterrupted) as info:
        _ctrl_c(None)
    m = info.value.result.metrics
    assert m["partial"] is True and m["step"] == 2 and m["steps_planned"] == 6
    assert math.isfinite(m["val_loss"])
    path = info.value.result.save(tmp_path / "p.pt")
    assert load_checkpoint(path).metrics["partial"] is True


def test_every_failed_save_keeps_the_good_file(tmp_path, monkeypatch):
    good = _save(Ctx(tmp_path, monkeypatch, None), metadata={"preset": "x"})
    before = good.read_bytes(), good.with_suffix(".json").read_bytes()
    for break_it in (_full_disk_patch, _read_only):
        with monkeypatch.context() as m:
            break_it(Ctx(tmp_path, m, None))
            with pytest.raises(SaveError):
                _save(Ctx(tmp_path, m, None), model=AttnOnlyTransformer(CFG, seed=9), metadata={"preset": "y"})
        assert (good.read_bytes(), good.with_suffix(".json").read_bytes()) == before
    with pytest.raises(CheckpointError):
        _save(Ctx(tmp_path, monkeypatch, None), model=_nan_model(), metadata={"preset": "y"})
    assert (good.read_bytes(), good.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
