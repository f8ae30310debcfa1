"""Training is seeded, deterministic and records its evaluations."""

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch

from toylab.model import ModelConfig
from toylab.training.train import TrainConfig, evaluate, induction_probe, train

CFG = ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_layers=1, n_heads=2, positional="shortformer")
DATA = {"kind": "induction", "d_vocab": 16, "n_ctx": 12, "seed": 0, "min_offset": 2, "max_offset": 5,
        "p_repeat": 1.0, "p_periodic": 0.5}
TCFG = TrainConfig(steps=12, batch_size=8, eval_every=5, eval_batch=16, prefix_steps=4, warmup_steps=3)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights():
    a = train(CFG, DATA, TCFG, seed=7, progress=False)
    b = train(CFG, DATA, TCFG, seed=7, progress=False)
    c = train(CFG, DATA, TCFG, seed=8, progress=False)
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert not states_equal(a.model.state_dict(), c.model.state_dict())


_CHILD = """
import sys, torch
from toylab.model import ModelConfig
from toylab.training.train import TrainConfig, train
cfg, data, tcfg = ModelConfig.from_dict(eval(sys.argv[1])), eval(sys.argv[2]), TrainConfig.from_dict(eval(sys.argv[3]))
torch.save(train(cfg, data, tcfg, seed=7, progress=False).model.state_dict(), sys.argv[4])
"""


def test_bit_identical_in_one_process_and_in_a_child_process(tmp_path):
    """Bit equality is a same-machine, same-thread-count promise: twice here, once in a fresh interpreter."""
    a = train(CFG, DATA, TCFG, seed=7, progress=False)
    b = train(CFG, DATA, TCFG, seed=7, progress=False)
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    out = tmp_path / "child.pt"
    env = {**os.environ, "OMP_NUM_THREADS": str(TCFG.threads)}
    subprocess.run([sys.executable, "-c", _CHILD, repr(CFG.to_dict()), repr(DATA), repr(TCFG.to_dict()), str(out)],
                   check=True, env=env, timeout=300)
    child = torch.load(out)
    diff = max((child[k] - a.model.state_dict()[k]).abs().max().item() for k in child)
    assert states_equal(child, a.model.state_dict()), f"child process trained other weights (max |diff| {diff:.2e})"


def test_prefix_state_is_the_weights_after_prefix_steps():
    full = train(CFG, DATA, TCFG, seed=1, progress=False)
    prefix = train(CFG, DATA, TCFG, seed=1, progress=False, stop_after=TCFG.prefix_steps)
    assert states_equal(full.prefix_state, prefix.model.state_dict())
    assert not states_equal(full.prefix_state, full.model.state_dict())


def test_history_records_every_evaluation():
    seen = []
    result = train(CFG, DATA, TCFG, seed=0, progress=False, callback=seen.append)
    assert [e["step"] for e in result.history] == [5, 10, 12]
    assert seen == result.history
    entry = result.history[-1]
    for key in ("val_loss", "train_loss", "loss_first", "loss_repeat", "loss_repeat_gap", "best_induction",
                "best_prev_token", "seconds"):
        assert math.isfinite(entry[key]), key
    assert len(entry["induction"]) == 1 and len(entry["induction"][0]) == 2


def test_training_lowers_the_loss():
    cfg = ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_layers=0, positional="none")
    data = {"kind": "bigram", "d_vocab": 16, "n_ctx": 12, "seed": 0, "zipf_exponent": 1.0, "n_successors": 3,
            "boost_tokens": [], "p_boost": 0.0}
    result = train(cfg, data, TrainConfig(steps=60, batch_size=32, eval_every=60, warmup_steps=5), progress=False)
    assert result.metrics["val_loss"] < math.log(15) - 0.5


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, final_lr_frac=0.1)
    assert cfg.lr_at(5) == pytest.approx(0.5)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(100) == pytest.approx(0.1)
    assert cfg.lr_at(55) == pytest.approx(0.55)


def test_probe_losses_on_an_untrained_model_are_near_uniform():
    from toylab.model import AttnOnlyTransformer

    model = AttnOnlyTransformer(ModelConfig(d_vocab=64, n_ctx=32, d_model=32, n_layers=2, n_heads=2,
                                            init_std=0.1))
    probe = induction_probe(model, half_len=15)
    assert abs(probe["loss_first"] - math.log(64)) < 0.05
    assert abs(probe["loss_repeat"] - math.log(64)) < 0.05
    assert all(s < 0.3 for row in probe["induction"] for s in row)


def test_evaluate_does_not_change_the_model_or_global_rng():
    result = train(CFG, DATA, TCFG, seed=0, progress=False)
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    from toylab.data import make_dataset

    evaluate(result.model, make_dataset(DATA), step=0)
    assert torch.equal(torch.rand(3), expected)
    assert states_equal(before, result.model.state_dict())


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(steps=0), "steps must be a positive integer"), (dict(lr=-1.0), "lr must be positive"),
     (dict(batch_size=2.5), "batch_size"), (dict(threads=0), "threads")],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_data_must_fit_the_model():
    with pytest.raises(ValueError, match="does not fit the model"):
        train(CFG, {**DATA, "d_vocab": 20}, TCFG, progress=False)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        train(CFG, {**DATA, "kind": "wikipedia"}, TCFG, progress=False)
    with pytest.raises(ValueError, match="seed must be an integer"):
        train(CFG, DATA, TCFG, seed="0", progress=False)


def test_training_works_with_autograd_switched_off_by_the_caller():
    with torch.no_grad():
        a = train(CFG, DATA, TCFG, seed=7, progress=False)
    b = train(CFG, DATA, TCFG, seed=7, progress=False)
    assert states_equal(a.model.state_dict(), b.model.state_dict())


def test_the_evaluation_cadence_does_not_change_the_weights():
    """Evaluation draws from its own generators, so a run evaluated once at the end trains
    the same weights as one evaluated every few steps (the seed tests of
    tests/test_calibration.py rely on it)."""
    often = train(CFG, DATA, TCFG, seed=3, progress=False)
    once = train(CFG, DATA, dataclasses.replace(TCFG, eval_every=TCFG.steps), seed=3, progress=False, off_probe=False)
    assert len(once.history) == 1 < len(often.history)
    assert states_equal(often.model.state_dict(), once.model.state_dict())


def test_off_probe_false_skips_the_off_probe_metrics_and_trains_the_same_weights():
    """A live run may skip the off-probe evaluations; the weights and the other
    history entries are those of a normal run, and a normal run still records them."""
    normal = train(CFG, DATA, TCFG, seed=3, progress=False)
    lean = train(CFG, DATA, TCFG, seed=3, progress=False, off_probe=False)
    assert states_equal(normal.model.state_dict(), lean.model.state_dict())
    assert "uniform_loss" in normal.history[-1], "a normal run must keep the off-probe metrics"
    for full, short in zip(normal.history, lean.history, strict=True):
        assert not any(k.startswith(("nobos_", "randfirst_", "segment_", "uniform_")) for k in short)
        for key in ("step", "val_loss", "loss_first", "loss_repeat", "loss_repeat_gap",
                    "best_induction", "train_loss"):
            assert short[key] == full[key], key
    with pytest.raises(TypeError, match="off_probe"):
        train(CFG, DATA, TCFG, seed=3, progress=False, off_probe="no")
