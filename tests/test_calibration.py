"""Off-probe calibration: the induction models do induction on any repeated text and are
honestly uncertain where nothing can be predicted (issue 8, section 2).

Every number is recomputed from the loaded weights (or a fresh training), never read
from the recorded metadata.
"""

import dataclasses
import math

import pytest
import torch

from toylab.data import BOS
from toylab.causal.evaluation import (OFF_PROBE_BOUNDS, PROBE_SEED, no_bos_probe, off_probe_failures,
                               off_probe_lines, off_probe_metrics, segment_probe, segment_tokens)
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import PRESETS, load_shipped
from toylab.training.train import evaluate, induction_probe, train

L = 15  # the probe [BOS, r, r] that fills n_ctx = 32


def acceptance_failures(two, one) -> list[str]:
    """The existing acceptance bounds (issue 8 section 2, first item) for a 2-layer model
    and its 1-layer control, on [BOS, r, r] and at a different offset."""
    probe, gapped = induction_probe(two, L), induction_probe(two, L - 7, gap=8)
    control = induction_probe(one, L)
    bad = []
    if not max(probe["induction"][1]) >= 0.9:
        bad.append(f"layer-1 induction {probe['induction'][1]}")
    if not max(probe["prev_token"][0]) >= 0.9:
        bad.append(f"layer-0 previous-token {probe['prev_token'][0]}")
    if not probe["loss_repeat"] <= 0.3:
        bad.append(f"repeated-half loss {probe['loss_repeat']:.3f}")
    if not (max(gapped["induction"][1]) >= 0.9 and gapped["loss_repeat"] <= 0.3):
        bad.append(f"different offset: induction {gapped['induction'][1]}, loss {gapped['loss_repeat']:.3f}")
    if not max(control["induction"][0]) < 0.3:
        bad.append(f"1L control induction {control['induction'][0]}")
    if not control["loss_repeat"] >= 5 * probe["loss_repeat"]:
        bad.append(f"1L control repeated loss {control['loss_repeat']:.3f} < 5 x {probe['loss_repeat']:.3f}")
    return bad


def test_shipped_induction_models_meet_the_acceptance_bounds():
    two, one = load_shipped("induction-2l").model, load_shipped("induction-1l").model
    assert acceptance_failures(two, one) == []


def test_shipped_two_layer_model_improves_on_the_old_off_probe_numbers():
    # the model shipped before issue 8 (every repeat ran to the end) gave 12.0 nats on the
    # first token after a copied segment in noise, with max probability 0.99 on a wrong token
    m = off_probe_metrics(load_shipped("induction-2l").model)
    assert m["segment_loss_after"] < 9.0 and m["segment_max_prob_after"] < 0.95, m
    assert m["segment_loss_copy"] <= 0.5, m


@pytest.mark.xfail(strict=True, reason="issue 8 section 2 is open: no BOS-free training in the shipped recipe "
                   "(it cost layer-1 induction its 0.9 margin) and the segment-end bound conflicts with "
                   "the repeated-half bound for a calibrated copy probability; see the issue-8 report")
def test_shipped_two_layer_model_meets_every_off_probe_bound():
    assert off_probe_failures(off_probe_metrics(load_shipped("induction-2l").model)) == []


def test_shipped_models_record_the_off_probe_metrics():
    for name in ("induction-2l", "induction-1l"):
        ckpt = load_shipped(name)
        recorded = ckpt.metrics
        assert all(k in recorded for k, _, _ in OFF_PROBE_BOUNDS), sorted(recorded)
        here = off_probe_metrics(ckpt.model)
        # same weights, same probe seed: the recorded value is what the weights give (up to kernels)
        for key, _, _ in OFF_PROBE_BOUNDS:
            assert recorded[key] == pytest.approx(here[key], abs=1e-3), key


@pytest.mark.slow
@pytest.mark.recipes
@pytest.mark.parametrize("seed", [1, 2])
def test_acceptance_bounds_hold_for_other_seeds(seed):
    models = {}
    for name in ("induction-2l", "induction-1l"):
        p = PRESETS[name]
        # the preset's recipe, evaluated once at the end: evaluation draws from its own generators,
        # so the weights are those of the preset's own cadence (tests/test_train.py checks that)
        once = dataclasses.replace(p.train, eval_every=p.train.steps)
        models[name] = train(p.model, p.data, once, seed=seed, progress=False, off_probe=False).model
    assert acceptance_failures(models["induction-2l"], models["induction-1l"]) == []
    # and the shipped-model checks of tests/test_shipped_models.py, on the same two trainings
    from test_shipped_models import check_one_layer_control, check_two_layer

    check_one_layer_control(models["induction-1l"], check_two_layer(models["induction-2l"]))


# ------------------------------------------------------------------ the probes themselves
def test_segment_tokens_layout_is_its_documented_rule():
    toks, dst = segment_tokens(64, 32, 7, 2000, torch.Generator().manual_seed(0))
    assert toks.shape == (2000, 32) and (toks[:, 0] == BOS).all() and (toks[:, 1:] != BOS).all()
    gaps, afters, befores = set(), set(), set()
    for i in range(2000):
        d = int(dst[i])
        src = [s for s in range(1, d - 7) if torch.equal(toks[i, s:s + 7], toks[i, d:d + 7])]
        assert src, "the copy has a source with noise between"
        s = src[-1]
        befores.add(s - 1), gaps.add(d - s - 7), afters.add(32 - d - 7)
    K = 32 - 1 - 2 * 7 - 2  # a + (g - 1) + (t - 1)
    assert min(gaps) >= 1 and min(afters) >= 1 and min(befores) == 0
    assert max(befores) == K and max(gaps) == max(afters) == K + 1
    with pytest.raises(ValueError, match="does not fit"):
        segment_tokens(64, 16, 7, 4, torch.Generator().manual_seed(0))


def uniform_model(d_vocab=64, n_ctx=32):
    """Predicts the uniform distribution everywhere (W_U = 0): every loss is ln V."""
    model = AttnOnlyTransformer(ModelConfig(d_vocab=d_vocab, n_ctx=n_ctx, d_model=16, n_layers=1, n_heads=1,
                                            positional="shortformer"), seed=0)
    with torch.no_grad():
        model.W_U.zero_()
    return model


def test_probes_measure_what_they_say_on_a_uniform_model():
    model = uniform_model()
    lnV = pytest.approx(math.log(64), abs=1e-4)  # float32 logits
    for res in (no_bos_probe(model), no_bos_probe(model, random_first=True)):
        assert res["loss_first"] == lnV and res["loss_repeat"] == lnV
    seg = segment_probe(model)
    assert seg["loss_copy"] == lnV and seg["loss_after"] == lnV
    assert seg["max_prob_after"] == pytest.approx(1 / 64, abs=1e-6)
    m = off_probe_metrics(model)
    assert m["uniform_loss"] == pytest.approx(math.log(63))
    failures = off_probe_failures(m)  # first-copy and after-copy losses are fine, the repeats are not
    assert sorted(f.split()[0] for f in failures) == ["nobos_loss_repeat", "randfirst_loss_repeat",
                                                      "segment_loss_copy"]
    lines = off_probe_lines(m)
    assert len(lines) == 4 and "FAIL" in lines[1] and "ok" in lines[3]


def test_probes_are_seeded_and_do_not_touch_the_global_rng():
    model = uniform_model()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = segment_probe(model, seg_len=5, seed=PROBE_SEED)
    assert torch.equal(torch.rand(1), before)
    assert segment_probe(model, seg_len=5) == a


def test_probe_arguments_are_checked():
    model = uniform_model()
    with pytest.raises(ValueError, match="batch"):
        no_bos_probe(model, batch=0)
    with pytest.raises(ValueError, match="seg_len"):
        segment_probe(model, seg_len=2)


def test_evaluate_records_the_off_probe_metrics():
    model = uniform_model()
    from toylab.data import make_dataset
    ds = make_dataset({**PRESETS["induction-2l"].data, "d_vocab": 64})
    entry = evaluate(model, ds, step=0)
    for key, _, _ in OFF_PROBE_BOUNDS:
        assert entry[key] == pytest.approx(off_probe_metrics(model)[key])
    short = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=8, n_layers=1, n_heads=1), seed=0)
    small = make_dataset({"kind": "induction", "d_vocab": 16, "n_ctx": 8, "seed": 0, "min_offset": 2,
                          "max_offset": 5, "p_repeat": 1.0, "p_periodic": 0.5})
    assert "segment_loss_after" not in evaluate(short, small, step=0)  # too short for the layout


# ----------------------------------------------------------------------------- presets
def test_induction_presets_do_not_share_their_data_dict():
    two, one = PRESETS["induction-2l"], PRESETS["induction-1l"]
    assert two.data == one.data and two.data is not one.data
    saved = dict(two.data)
    two.data["min_offset"] = 3  # editing one preset ...
    try:
        assert one.data == saved  # ... leaves the other alone
    finally:
        two.data.clear()
        two.data.update(saved)
    assert two.data == saved


@pytest.mark.parametrize("typo, suggestion", [("induction2l", "induction-2l"), ("inducton-1l", "induction-1l"),
                                              ("bigram", "bigram-0l"), ("text2l", "text-2l")])
def test_a_preset_typo_suggests_the_closest_name(typo, suggestion):
    from toylab.training.presets import get_preset
    with pytest.raises(ValueError, match=f"did you mean '{suggestion}'"):
        get_preset(typo)
    with pytest.raises(ValueError, match="unknown preset 'zzz'; the presets are"):
        get_preset("zzz")
