"""Causal scrubbing (toylab.discovery.scrubbing) on the induction model."""

import dataclasses

import pytest
import torch

from toylab.data import make_dataset
from toylab.discovery.graph import Graph
from toylab.discovery.reference import (copied_positions, distractors, induction_circuit, induction_heads,
                                        induction_hypotheses)
from toylab.discovery.scrubbing import (EquivalenceClasses, Hypothesis, position_losses, redraw_tokens, scrub,
                                        scrubbed_position_losses, treeified_logits)
from toylab.training.presets import get_preset, load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = load_model("induction-2l")
    batch = make_dataset(get_preset("induction-2l").data).sample_batch(192, torch.Generator().manual_seed(0))
    return model, Graph(model), batch, EquivalenceClasses.from_induction(batch)


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


def test_resampling_respects_the_classes(setup):
    _, _, batch, classes = setup
    idx = torch.arange(len(classes))
    g = torch.Generator().manual_seed(0)
    for feature in ("offset", "structure"):
        new = classes.resample(idx, feature, g)
        assert torch.equal(classes.features[feature][new], classes.features[feature][idx])
    same = classes.resample(idx, "structure", g)
    assert torch.equal(batch.dst_start[same], batch.dst_start) and torch.equal(batch.offset[same], batch.offset)
    assert torch.equal(classes.resample(idx, "identity", g), idx)
    assert (classes.resample(idx, "any", g) != idx).float().mean() > 0.9


def test_identity_everywhere_is_the_model(setup):
    model, g, batch, classes = setup
    hyp = Hypothesis({e: "identity" for e in g.edge_names})
    roots = torch.arange(16)
    out = treeified_logits(model, g, classes, hyp, roots, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(batch.tokens[:16])
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()
    r = scrub(model, g, classes, hyp, n_resamples=1, n_boot=100)
    assert r.recovered == pytest.approx(1.0, abs=1e-4) and r.low <= r.recovered <= r.high


def test_the_induction_hypothesis_recovers_the_loss_and_layer_one_alone_does_not(setup):
    model, g, batch, classes = setup
    full = Hypothesis.from_circuit(induction_circuit(model, g, batch.tokens, composition=False))
    prev, heads = induction_heads(model, batch.tokens)
    # layer 1 alone: the induction heads read the tokens directly, layer 0 carries nothing
    layer1 = Hypothesis({**{f"L{l}H{h}->logits": "identity" for l, h in heads},
                         **{f"embed->L{l}H{h}.{s}": "identity" for l, h in heads for s in "qkv"}})
    r_full = scrub(model, g, classes, full, n_resamples=2)
    r_l1 = scrub(model, g, classes, layer1, n_resamples=2)
    assert r_full.recovered >= 0.9 and r_full.low >= 0.85, r_full
    assert r_l1.high < r_full.low - 0.3, (r_l1, r_full)
    assert r_full.loss_model < r_full.loss_hypothesis < r_full.loss_scrubbed
    # a hypothesis that only claims the previous-token head's queries and keys see the repeat's structure
    # (positions), not the tokens, loses nothing: resampling them within "structure" classes is harmless
    p = f"L0H{prev[1]}"
    refined = Hypothesis({**full.edges, f"embed->{p}.q": "structure", f"embed->{p}.k": "structure"})
    assert scrub(model, g, classes, refined, n_resamples=2).recovered >= r_full.low - 0.02
    assert no_hooks(model)


def test_bad_hypotheses(setup):
    model, g, _, classes = setup
    with pytest.raises(ValueError, match="names node 'L2H0', which the model lacks"):
        scrub(model, g, classes, Hypothesis({"L2H0->logits": "identity"}))
    with pytest.raises(ValueError, match="names receiver 'L1H5.q'"):
        scrub(model, g, classes, Hypothesis({"embed->L1H5.q": "identity"}))
    with pytest.raises(ValueError, match="unknown edge"):
        scrub(model, g, classes, Hypothesis({"L1H0->L0H0.q": "identity"}))
    with pytest.raises(ValueError, match="unknown feature"):
        scrub(model, g, classes, Hypothesis({"embed->logits": "same colour"}))
    with pytest.raises(ValueError, match="sender->receiver"):
        scrub(model, g, classes, Hypothesis({"embed": "identity"}))
    with pytest.raises(TypeError, match="Hypothesis"):
        scrub(model, g, classes, {"embed->logits": "identity"})
    with pytest.raises(ValueError, match="confidence"):
        scrub(model, g, classes, Hypothesis({}), confidence=1.5)
    with pytest.raises(ValueError, match="one integer label per pool sequence"):
        EquivalenceClasses(classes.tokens, {"offset": torch.zeros(3, dtype=torch.long)})
    assert no_hooks(model)


def test_the_hypothesis_ladder_climbs(setup):
    model, g, batch, classes = setup
    ladder = induction_hypotheses(model, g, batch.tokens)
    names = ["layer-1 heads only", "+ K-composition", "+ tokens into queries and values", "full circuit"]
    for a, b in zip(names, names[1:]):
        assert set(ladder[a].edges) < set(ladder[b].edges)
    r = {n: scrub(model, g, classes, ladder[n], n_resamples=1, n_boot=200)
         for n in ["layer-1 heads only"] + names[2:] + ["layer-1 reading tokens only"]}
    # the induction circuit, minimal or with the composition edges read off the weights, explains most of
    # the loss; the layer-1 heads without the previous-token head do not (issue 10's acceptance)
    assert r["full circuit"].recovered >= 0.9, r["full circuit"]
    assert r["layer-1 heads only"].high < r["full circuit"].low - 0.5, r
    for n in names[2:]:
        assert r[n].recovered > r["layer-1 reading tokens only"].recovered + 0.3


def test_sequences_without_a_scored_position_are_not_roots(setup):
    model, g, batch, classes = setup
    positions = classes.positions.clone()
    positions[::2] = False  # half the pool has nothing to score
    half = EquivalenceClasses(classes.tokens, {k: v for k, v in classes.features.items()
                                               if k not in ("identity", "any")}, positions)
    r = scrub(model, g, half, Hypothesis({e: "identity" for e in g.edge_names}), n_resamples=1, n_boot=50)
    assert r.recovered == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="selects nothing"):
        EquivalenceClasses(classes.tokens, positions=torch.zeros_like(positions))


@pytest.fixture(scope="module")
def pool():
    """The chapter's pool: 16 structures x 2 token draws x 3 noise draws."""
    spec = get_preset("induction-2l").data
    gen = torch.Generator().manual_seed(0)
    base = make_dataset(spec).sample_batch(16, gen)
    by_structure, _ = redraw_tokens(base, spec["d_vocab"], 2, gen, keep="structure")
    batch, parent = redraw_tokens(by_structure, spec["d_vocab"], 3, gen, keep="segment")
    return base, batch, parent, EquivalenceClasses.from_induction(batch, segment=parent)


def test_redraw_tokens_keeps_what_it_says(pool):
    base, batch, parent, classes = pool
    spec = get_preset("induction-2l").data
    again, parent2 = redraw_tokens(base, spec["d_vocab"], 4, torch.Generator().manual_seed(1))
    assert torch.equal(parent2, torch.arange(16).repeat_interleave(4))
    for b, par in ((again, parent2), (batch, parent)):
        src = base if b is again else None
        # a valid sample of the generator: the copy rule holds, BOS at 0, tokens in 1..V-1 elsewhere
        x, d, o, L = b.tokens, b.dst_start, b.offset, b.length
        for i in range(len(x)):
            for p in range(int(d[i]), int(d[i] + L[i])):
                assert x[i, p] == x[i, p - o[i]]
        assert (x[:, 0] == 0).all() and (x[:, 1:] >= 1).all() and (x < spec["d_vocab"]).all()
        if src is not None:
            assert torch.equal(b.dst_start, src.dst_start[par]) and torch.equal(b.length, src.length[par])
            assert (b.tokens != src.tokens[par]).float().mean() > 0.9  # the tokens are drawn again
    # keep="segment": the copied positions are kept, the noise is drawn again
    cp = copied_positions(batch)
    siblings = torch.nonzero(parent == parent[0]).flatten()
    for i in siblings[1:]:
        assert torch.equal(batch.tokens[i][cp[0]], batch.tokens[siblings[0]][cp[0]])
    noise = ~cp & (torch.arange(32) > 0)
    assert (batch.tokens[::3][noise[::3]] != batch.tokens[1::3][noise[1::3]]).float().mean() > 0.9
    labels = classes.features["segment"]
    assert torch.equal(labels[::3], labels[1::3]) and len(torch.unique(labels)) == 32
    with pytest.raises(ValueError, match="keep must be one of"):
        redraw_tokens(base, spec["d_vocab"], 2, torch.Generator(), keep="tokens")
    with pytest.raises(ValueError, match="segment needs one integer label"):
        EquivalenceClasses.from_induction(batch, segment=torch.zeros(3, dtype=torch.long))


def test_distractors_match_a_direct_count(pool):
    _, batch, _, _ = pool
    x, o = batch.tokens, batch.offset
    within = ~copied_positions(batch)
    got, got_noise = distractors(batch), distractors(batch, within=within)
    for i in range(0, len(x), 7):
        for p in range(31):
            hits = [j for j in range(1, p + 1) if x[i, j - 1] == x[i, p] and x[i, j] != x[i, p + 1]
                    and j != p + 1 - o[i]]
            assert bool(got[i, p]) == bool(hits)
            assert bool(got_noise[i, p]) == any(bool(within[i, j - 1]) for j in hits)


def test_baseline_reuse_and_position_losses(setup, pool):
    model, g, _, _ = setup
    _, batch, _, classes = pool
    ladder = induction_hypotheses(model, g, batch.tokens)
    h = ladder["+ tokens into queries and values"]
    a = scrub(model, g, classes, h, n_resamples=1, n_boot=100)
    b = scrub(model, g, classes, h, n_resamples=1, n_boot=100, baseline=a)
    assert b.recovered == pytest.approx(a.recovered, abs=1e-6) and b.loss_scrubbed == a.loss_scrubbed
    roots = torch.arange(len(classes))
    with torch.no_grad():
        lp = position_losses(classes, model(batch.tokens), roots)
    assert torch.isnan(lp[~classes.positions]).all() and not torch.isnan(lp[classes.positions]).any()
    assert float(lp.nanmean(1).mean()) == pytest.approx(a.loss_model, rel=1e-5)
    same = scrubbed_position_losses(model, g, classes, Hypothesis({e: "identity" for e in g.edge_names}), roots)
    assert torch.allclose(same[classes.positions], lp[classes.positions], atol=1e-4)
    with pytest.raises(ValueError, match="baseline must be a ScrubResult"):
        scrub(model, g, classes, h, baseline=dataclasses.replace(a, roots=a.roots[:-1]))


def test_a_false_hypothesis_scores_one_through_cancellation(setup, pool):
    """Chapter 9's pitfall: "only the copied segment matters" recovers all of the loss, yet on positions with a
    chance match in the noise it predicts a very different loss (the errors of opposite sign cancel)."""
    model, g, _, _ = setup
    _, batch, _, classes = pool
    hyp = Hypothesis({e: ("segment" if e.startswith("embed->") else "identity") for e in g.edge_names})
    r = scrub(model, g, classes, hyp, n_resamples=2, n_boot=200)
    assert r.low <= 1.0 <= r.high + 0.01 and r.recovered > 0.97, r
    roots = torch.arange(len(classes))
    with torch.no_grad():
        lm = position_losses(classes, model(batch.tokens), roots)
    lh = scrubbed_position_losses(model, g, classes, hyp, roots, 4, torch.Generator().manual_seed(0))
    mask = classes.positions
    noise = distractors(batch, within=~copied_positions(batch)) & mask
    assert noise.sum() >= 5
    assert float((lh - lm)[noise].mean()) < -0.3          # much better where the noise misled the model
    assert float((lh - lm)[mask & ~noise].mean()) > 0     # slightly worse elsewhere
