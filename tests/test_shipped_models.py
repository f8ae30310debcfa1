"""The shipped models are the lab's own, and they learned the rules of their data.

Every number here is recomputed from the loaded weights and checked against
the ground truth of the data generator, not read from the recorded metadata.
"""

import dataclasses
import hashlib
import json
import math

import pytest
import torch

from toylab.data import make_dataset
from toylab.suite.planted import PLANTED
from toylab.training.presets import PRESETS, SHIPPED_SUITE, get_preset, load_shipped, shipped_path
from toylab.training.train import induction_probe, train

L = 15  # the probe [BOS, r, r] that fills n_ctx = 32
SHIPPED = list(PRESETS) + list(SHIPPED_SUITE)  # the suite's shipped seed-0 checkpoints too


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_preset(name):
    path = shipped_path(name)
    assert path.is_file(), f"{path} is missing: run `make models`"
    assert path.stat().st_size < 5_000_000
    ckpt = load_shipped(name)
    preset = get_preset(name)
    assert ckpt.config == preset.model
    assert ckpt.train_spec == preset.train.to_dict()
    assert ckpt.seed == preset.seed
    assert {k: ckpt.data_spec[k] for k in preset.data} == preset.data
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), "metadata describes another file"
    assert meta["config"] == preset.model.to_dict()


# How close a retrained prefix must come to the recorded one. Bit equality holds only on the
# machine (and thread count) that recorded it (tests/test_train.py checks that, in-process and
# in a child process); another CPU, or torch's generic kernels (ATEN_CPU_CAPABILITY=default),
# sums each matmul and reduction in another order and rounds exp/log differently, so every
# gradient differs from the recorded run by a few float32 ulps. AdamW turns each gradient into
# an update of size ~lr, so after n steps a weight tensor w can move by about
# c * eps_f32 * max|w| * n with a small c. Measured here (Xeon, AVX-512; torch 2.13, 1 thread),
# c = max|retrained - recorded| / (eps_f32 * max|w| * 20), per tensor, worst over tensors:
#
#   preset          native  avx2  default    changed: seed+1   lr*1.01  warmup+1  steps-1
#   bigram-0l        0.09   0.14   0.35             6.2e5      975      4701     8719
#   skiptrigram-1l   0.35   0.27   0.31             7.2e5      541      1077     4269
#   induction-2l     2.36   3.09   4.72             6.8e5      422       824     3846
#   induction-1l     0.21   0.25   0.87             6.6e5      374       732     3697
#   text-2l          0.13   0.13   0.25             6.6e5      525      1028     2462
#
# ("native" is AVX-512 here; the shipped models were recorded on a Zen 4). The worst case,
# induction-2l, is set at step 1: Adam's first update is lr_1 * g / (|g| + 1e-8), which
# amplifies the rounding of gradients close to 1e-8. Its drift (native vs default) is 49 units
# at n = 1, 9.7 at n = 5, 4.8 at n = 10, 2.4 at n = 20, 1.2 at n = 40: flat in absolute terms
# after the first step, so a bound linear in n is conservative. PREFIX_ULPS = 32 is 6.8x the
# worst case measured; every real change above is >= 11x PREFIX_ULPS (the smallest: a 1%
# larger lr on induction-1l, 374 units).
# Re-measured on the models retrained here (0baf4a9; text-2l is still the Zen 4 record):
# native 0 (bit-identical), avx2 <= 0.48, default <= 1.08; real changes >= 391 (lr*1.01).
PREFIX_ULPS = 32
EPS32 = torch.finfo(torch.float32).eps


def prefix_drift(got, want, steps):
    """max over tensors of max|got - want| / (eps_f32 * max|want| * steps): the drift in the units above."""
    assert got.keys() == want.keys()
    return max((got[k] - want[k]).abs().max().item() / (EPS32 * max(want[k].abs().max().item(), 1e-12) * steps)
               for k in want)


def _retrain_prefix(name, **change):
    ckpt = load_shipped(name)
    preset = get_preset(name)
    if preset.data["kind"] in ("text", "text_repeats"):   # both read this Python's docstrings
        here = make_dataset(preset.data).spec["corpus_fingerprint"]
        if here != ckpt.data_spec["corpus_fingerprint"]:
            pytest.skip(f"this Python's docstring corpus ({here}) differs from the one the model saw")
    seed = change.pop("seed", ckpt.seed)
    steps = change.pop("steps", preset.train.prefix_steps)
    tcfg = dataclasses.replace(preset.train, **change)
    prefix = train(preset.model, ckpt.data_spec, tcfg, seed=seed, progress=False, stop_after=steps)
    return prefix.model.state_dict(), ckpt.prefix_state, preset.train.prefix_steps


# grokking-1l's full-batch recipe (init_std 1, AdamW 3e-3, weight decay 2) is chaotic from its first
# steps: retrained under torch's generic kernels against the native AVX-512 ones, its weights differ by
# 1.6e-5 after 1, 2 and 5 steps and by 0.016 (9 % of a tensor's largest weight) after 20. No bound in
# rounding units holds across CPUs, so its recipe is checked by the preset comparison above, by
# check_grokking_model on the shipped weights, by tests/test_train_full_batch.py (bit-identical
# retraining on one machine) and by the recipe test at another seed, not here.
CHAOTIC_PREFIX = {"grokking-1l"}


@pytest.mark.parametrize("name", SHIPPED)
def test_retraining_the_prefix_reproduces_the_recorded_weights(name):
    if name in CHAOTIC_PREFIX:
        pytest.skip(f"{name}: its training is chaotic, so its prefix differs across CPU kernels (see CHAOTIC_PREFIX)")
    got, want, steps = _retrain_prefix(name)
    drift = prefix_drift(got, want, steps)
    assert drift <= PREFIX_ULPS, (
        f"retrained prefix differs from the recorded one by {drift:.1f} units of eps_f32 * max|w| * steps "
        f"(float32 rounding across CPUs is < {PREFIX_ULPS}): data, init, optimiser or recipe changed")


# each real change must move the prefix by at least this many tolerances (measured: >= 11x)
CHANGE_MARGIN = 4


@pytest.mark.parametrize("name", ["induction-2l", "bigram-0l"])
@pytest.mark.parametrize("change", ["seed+1", "lr*1.01", "warmup+1", "steps-1", "batch-1"])
def test_the_prefix_check_catches_real_changes(name, change):
    preset = PRESETS[name]
    kwargs = {"seed+1": dict(seed=preset.seed + 1), "lr*1.01": dict(lr=preset.train.lr * 1.01),
              "warmup+1": dict(warmup_steps=preset.train.warmup_steps + 1),
              "steps-1": dict(steps=preset.train.prefix_steps - 1),
              "batch-1": dict(batch_size=preset.train.batch_size - 1)}[change]
    got, want, steps = _retrain_prefix(name, **kwargs)
    drift = prefix_drift(got, want, steps)
    assert drift >= CHANGE_MARGIN * PREFIX_ULPS, f"{change}: drift {drift:.0f} is within reach of the tolerance"


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

# the same checks at seeds 1 and 2: tests/test_calibration.py::test_acceptance_bounds_hold_for_other_seeds
# (it trains both models once per seed for both sets of bounds)


def check_fact_model(model, lang):
    """The facts-1l bounds: the model recalls the planted table, and it is the MLP that does it.
    Measured on the shipped model (seed 0): accuracy 1.0 on every fact, 0.39 with the MLP
    zero-ablated (the direct path W_E W_U and attention keep a third of the facts)."""
    from toylab.causal.interventions import mlp_ablation_hooks
    from toylab.neurons.facts import fact_accuracy, fact_batch

    tokens = fact_batch(lang)
    acc = fact_accuracy(model, lang, tokens)
    assert acc.mean() >= 0.95 and acc.min() >= 0.8, (acc.mean().item(), acc.min().item())
    no_mlp = fact_accuracy(model, lang, tokens, mlp_ablation_hooks(model, tokens, layers=[0]))
    assert no_mlp.mean() <= 0.6, no_mlp.mean().item()
    return acc, no_mlp


def test_fact_model_recalls_the_planted_table_with_its_mlp():
    ckpt = load_shipped("facts-1l")
    lang = make_dataset(ckpt.data_spec)
    assert lang.n_subjects > ckpt.model.cfg.d_model, "more facts than residual dimensions"
    check_fact_model(ckpt.model, lang)
    with torch.no_grad():
        tokens = lang.sample(256, torch.Generator().manual_seed(99))
        logq = torch.log_softmax(ckpt.model(tokens).double(), -1)[:, :-1]
        p = lang.next_token_probs(tokens)[:, :-1]
        kl = (p * (torch.log(p.clamp_min(1e-300)) - logq)).sum(-1).mean().item()
    assert kl <= 0.01, f"KL(true || model) = {kl:.4f} nats per token"


def grokking_summary(history):
    """From a grokking run's history: the first step at which training accuracy is 1, the
    last step after it at which fresh-test accuracy is still under 0.1 (near chance: memorising
    alone cannot answer a fresh pair), and the first step at which it is over 0.99."""
    memorised = next((e["step"] for e in history if e["train_acc"] == 1.0), None)
    grokked = next((e["step"] for e in history if e["fresh_acc"] > 0.99), None)
    chance = [e["step"] for e in history if memorised is not None and e["step"] >= memorised
              and (grokked is None or e["step"] < grokked) and e["fresh_acc"] < 0.1]
    return memorised, (max(chance) if chance else None), grokked


def check_grokking_model(model, data):
    """The grokking-1l bounds, from the weights: every pair right (fresh test pairs included), the
    embedding concentrated on a few key frequencies, and the logits' key-frequency waves alone
    doing the task (restricted loss) while the rest of the logits cannot (excluded loss on the
    training pairs). Measured on the shipped model (seed 0): fresh-test accuracy 0.9993, key
    frequencies [18, 19, 11], restricted loss 6e-7 nats, excluded loss 18.9 nats (log p = 4.08)."""
    from toylab.neurons.fourier import embedding_spectrum, excluded_loss, key_frequencies, restricted_loss
    from toylab.training.full_batch import evaluate_full_batch

    e = evaluate_full_batch(model, data, 0)
    assert e["train_acc"] == 1.0 and e["fresh_acc"] > 0.99 and e["test_acc"] > 0.99, e
    keys = key_frequencies(embedding_spectrum(model.W_E.detach(), data.p))
    assert 2 <= len(keys) <= 6, f"key frequencies {keys}: expected a few (2..6)"
    with torch.no_grad():
        logits = model(data.tokens)[:, -1, :data.p]
    restricted = restricted_loss(logits, data.p, keys)
    excluded = excluded_loss(logits, data.p, keys, data.train_idx)
    assert restricted < 0.1, f"restricted loss {restricted:.3f}: the key waves alone do not do the task"
    assert excluded > math.log(data.p), (f"excluded loss {excluded:.2f} nats on the training pairs is not worse "
                                         f"than guessing: the key waves do not carry the answer")
    return keys, e


def test_grokking_model_adds_mod_p_with_a_few_key_frequencies_after_a_delay():
    ckpt = load_shipped("grokking-1l")
    data = make_dataset(ckpt.data_spec)
    check_grokking_model(ckpt.model, data)
    memorised, last_chance, grokked = grokking_summary(ckpt.history)  # the recorded curves
    assert memorised is not None and grokked is not None and last_chance is not None, (memorised, grokked)
    assert last_chance - memorised >= 500, "fresh-test accuracy left chance soon after memorising: no delay"


@pytest.mark.parametrize("suite_name", sorted(n for n, e in PLANTED.items() if e.preset in SHIPPED_SUITE))
def test_shipped_suite_models_plant_their_truth(suite_name):
    """The suite's shipped seed-0 checkpoints do what their presets are for: the structure each is built
    for is there (``INTENDED``: two induction heads, a topic head outside the truth, ...) and its
    generator-read truth passes the intervention check; a negative control (``majority-1l``) has no
    circuit of at most half its heads that keeps 90 % of the behaviour."""
    from toylab.discovery.graph import Graph
    from toylab.suite.planted import INTENDED, NEGATIVE_CONTROLS
    from toylab.suite.truth import check_dense, check_truth

    entry = PLANTED[suite_name]
    model = load_shipped(entry.preset).model
    graph = Graph(model)
    task = entry.make_task(model, 0, 64)
    if suite_name in NEGATIVE_CONTROLS:
        d = check_dense(model, graph, task, "resample")
        assert d.passed, d
        return
    ok, why = INTENDED[suite_name](model, graph)
    assert ok, why
    r = check_truth(model, graph, entry.truth(model, graph), task, "resample")
    assert r.passed, r
