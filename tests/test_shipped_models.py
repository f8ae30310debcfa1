"""The shipped models are the lab's own, and they learned the rules of their data.

Every number here is recomputed from the loaded weights and checked against
the ground truth of the data generator, not read from the recorded metadata.
"""

import hashlib
import json
import math

import pytest
import torch

from toylab.data import make_dataset
from toylab.presets import PRESETS, load_shipped, shipped_path
from toylab.train import induction_probe, train

L = 15  # the probe [BOS, r, r] that fills n_ctx = 32


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(PRESETS))
def test_shipped_checkpoint_matches_its_preset(name):
    path = shipped_path(name)
    assert path.is_file(), f"{path} is missing: run `make models`"
    assert path.stat().st_size < 5_000_000
    ckpt = load_shipped(name)
    preset = PRESETS[name]
    assert ckpt.config == preset.model
    assert ckpt.train_spec == preset.train.to_dict()
    assert ckpt.seed == preset.seed
    assert {k: ckpt.data_spec[k] for k in preset.data} == preset.data
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), "metadata describes another file"
    assert meta["config"] == preset.model.to_dict()


@pytest.mark.parametrize("name", list(PRESETS))
def test_retraining_the_prefix_reproduces_the_recorded_weights(name):
    ckpt = load_shipped(name)
    preset = PRESETS[name]
    if preset.data["kind"] == "text":
        here = make_dataset(preset.data).spec["corpus_fingerprint"]
        if here != ckpt.data_spec["corpus_fingerprint"]:
            pytest.skip(f"this Python's docstring corpus ({here}) differs from the one the model saw")
    prefix = train(preset.model, ckpt.data_spec, preset.train, seed=ckpt.seed, progress=False,
                   stop_after=preset.train.prefix_steps)
    got, want = prefix.model.state_dict(), ckpt.prefix_state
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    assert states_equal(got, want), f"retrained prefix differs from the recorded one (max |diff| {diff:.2e})"


def test_zero_layer_model_is_the_true_bigram_table():
    ckpt = load_shipped("bigram-0l")
    model, lang = ckpt.model, make_dataset(ckpt.data_spec)
    with torch.no_grad():
        probs = torch.softmax((model.W_E @ model.W_U).double(), dim=-1)  # [d_vocab, d_vocab]
        kl = lang.frequency_weighted_kl(probs)
        # the same through the model's forward pass, on fresh samples
        tokens = lang.sample(256, torch.Generator().manual_seed(99))
        logq = torch.log_softmax(model(tokens).double(), -1)[:, :-1]
        p = lang.transition[tokens[:, :-1]]
        sampled = (p * (torch.log(p.clamp_min(1e-300)) - logq)).sum(-1).mean().item()
    assert kl <= 0.05, f"frequency-weighted KL(true || model) = {kl:.4f} nats"
    assert abs(sampled - kl) < 0.02, (sampled, kl)


def _induction_criteria(model):
    V = model.cfg.d_vocab
    probe = induction_probe(model, L)
    gapped = induction_probe(model, L - 7, gap=8)  # the repeat at offset 16 instead of 15
    return probe, gapped, math.log(V - 1)


def check_two_layer(model):
    probe, gapped, uniform = _induction_criteria(model)
    assert max(probe["induction"][1]) >= 0.9, probe["induction"]
    assert max(probe["prev_token"][0]) >= 0.9, probe["prev_token"]
    assert probe["loss_repeat"] <= 0.3, probe["loss_repeat"]
    assert abs(probe["loss_first"] - uniform) < 0.25, (probe["loss_first"], uniform)
    assert max(gapped["induction"][1]) >= 0.9, gapped["induction"]
    assert gapped["loss_repeat"] <= 0.3, gapped["loss_repeat"]
    return probe


def check_one_layer_control(model, two_layer_probe):
    probe, gapped, uniform = _induction_criteria(model)
    assert max(probe["induction"][0]) < 0.3, probe["induction"]
    assert probe["loss_repeat"] >= 5 * two_layer_probe["loss_repeat"], (probe["loss_repeat"], two_layer_probe)


def test_two_layer_model_has_induction_and_the_one_layer_control_does_not():
    two = check_two_layer(load_shipped("induction-2l").model)
    check_one_layer_control(load_shipped("induction-1l").model, two)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_induction_holds_for_other_seeds(seed):
    results = {}
    for name in ("induction-2l", "induction-1l"):
        p = PRESETS[name]
        results[name] = train(p.model, p.data, p.train, seed=seed, progress=False).model
    two = check_two_layer(results["induction-2l"])
    check_one_layer_control(results["induction-1l"], two)
