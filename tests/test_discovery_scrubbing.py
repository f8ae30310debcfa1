"""Causal scrubbing (toylab.discovery.scrubbing) on the induction model."""

import pytest
import torch

from toylab.data import make_dataset
from toylab.discovery.graph import Graph
from toylab.discovery.reference import induction_circuit, induction_heads, induction_hypotheses
from toylab.discovery.scrubbing import EquivalenceClasses, Hypothesis, scrub, treeified_logits
from toylab.presets import get_preset, load_model

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
         for n in names[2:] + ["layer-1 reading tokens only"]}
    # the induction circuit, minimal or with the composition edges read off the weights, explains most of
    # the loss; the layer-1 heads without the previous-token head do not
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
