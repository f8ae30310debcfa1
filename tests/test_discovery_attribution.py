"""Attribution patching (toylab.discovery.attribution_patching) against exact patching."""

import pytest
import torch

from toylab.data import make_dataset
from toylab.discovery.attribution_patching import edge_attribution, node_attribution, node_effects
from toylab.discovery.edge_patching import edge_effects
from toylab.discovery.graph import Graph
from toylab.discovery.reference import induction_circuit
from toylab.discovery.metrics import induction_positions, kl_to_clean, logit_diff, next_token_loss_on
from toylab.discovery.roc import spearman
from toylab.training.presets import get_preset, load_model
from toylab.circuits.scores import previous_token_score

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = load_model("induction-2l")
    ds = make_dataset(get_preset("induction-2l").data)
    clean = ds.sample_batch(32, torch.Generator().manual_seed(0))
    corr = ds.sample_batch(32, torch.Generator().manual_seed(1))
    metric = logit_diff(clean.tokens, corr.tokens, induction_positions(clean.is_repeat))
    return model, Graph(model), clean, corr, metric


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("around", ["clean", "corrupted"])
def test_frozen_patterns_make_atp_on_head_outputs_exact(setup, around):
    """Patterns frozen, no LayerNorm, a metric linear in the logits: M is linear in every head's output,
    so the first-order estimate is the exact patching effect (float error only)."""
    model, _, clean, corr, metric = setup
    est = node_attribution(model, clean.tokens, corr.tokens, metric, "result", around=around, freeze_patterns=True)
    exact = node_effects(model, clean.tokens, corr.tokens, metric, "result", around=around, freeze_patterns=True)
    scale = exact.abs().max()
    assert scale > 1.0  # the heads matter: this is not 0 == 0
    assert torch.allclose(est, exact, atol=1e-4 * float(scale))
    # without freezing, the layer-0 estimates differ (their effect passes through layer-1 softmaxes) ...
    free_est = node_attribution(model, clean.tokens, corr.tokens, metric, "result", around=around)
    free_exact = node_effects(model, clean.tokens, corr.tokens, metric, "result", around=around)
    assert (free_est[0] - free_exact[0]).abs().max() > 1e-2 * float(scale)
    # ... while the last layer, read only linearly by the logits, stays exact
    assert torch.allclose(free_est[-1], free_exact[-1], atol=1e-4 * float(scale))
    assert no_hooks(model)


def test_qk_fix_repairs_the_saturated_previous_token_head(setup):
    """The previous-token head puts almost all attention on one key. Zero-ablating its queries makes its
    pattern uniform (a large exact effect), but the softmax there has gradient ~0: plain AtP misses it,
    recomputing the pattern (AtP* QK fix) recovers it."""
    model, _, clean, _, metric = setup
    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["pattern", 0]
    prev = int(previous_token_score(pattern, exclude_bos=True).argmax())
    assert pattern[:, prev, 2:].max(-1).values.mean() > 0.85  # saturated: the premise of the test
    for node in ("q", "k"):
        exact = float(node_effects(model, clean.tokens, "zero", metric, node)[0, prev])
        plain = float(node_attribution(model, clean.tokens, "zero", metric, node)[0, prev])
        fixed = float(node_attribution(model, clean.tokens, "zero", metric, node, qk_fix=True)[0, prev])
        assert abs(exact) > 2.0  # the head matters a lot (nats of logit difference)
        assert abs(plain) < 0.25 * abs(exact), f"plain AtP {plain:.3f} vs exact {exact:.3f}"
        assert abs(fixed - exact) < 0.5 * abs(exact), f"QK fix {fixed:.3f} vs exact {exact:.3f}"


def test_qk_fix_is_exact_for_last_layer_heads(setup):
    """In the last layer the logits are linear in the pattern (values fixed): the fix leaves no error."""
    model, _, clean, corr, metric = setup
    for node in ("q", "k"):
        exact = node_effects(model, clean.tokens, corr.tokens, metric, node)[-1]
        fixed = node_attribution(model, clean.tokens, corr.tokens, metric, node, qk_fix=True)[-1]
        assert torch.allclose(fixed, exact, atol=1e-3 * float(exact.abs().max()))


def test_eap_agrees_with_exact_edge_patching(setup):
    model, g, clean, corr, metric = setup
    exact = edge_effects(model, g, clean.tokens, corr.tokens, metric)
    eap = edge_attribution(model, g, clean.tokens, corr.tokens, metric)
    # edges into the logits are read linearly: EAP is exact there for the logit difference
    into_logits = g.incoming("logits")
    assert torch.allclose(eap[into_logits], exact[into_logits], atol=1e-3 * float(exact.abs().max()))
    assert spearman(eap, exact) > 0.6
    assert eap[[i for i, e in enumerate(g.edges) if e.sender == "pos"]].abs().max() < 1e-5
    assert no_hooks(model)


def test_eap_ig(setup):
    model, g, clean, corr, _ = setup
    pos = induction_positions(clean.is_repeat)
    with torch.no_grad():
        kl = kl_to_clean(model(clean.tokens), pos)
    assert torch.allclose(edge_attribution(model, g, clean.tokens, corr.tokens, kl, "eap-ig", steps=1),
                          edge_attribution(model, g, clean.tokens, corr.tokens, kl, "eap"))
    # KL has zero gradient at the clean run, so EAP sees only noise; integrating the gradient fixes that
    exact = edge_effects(model, g, clean.tokens, corr.tokens, kl)
    eap = edge_attribution(model, g, clean.tokens, corr.tokens, kl)
    ig = edge_attribution(model, g, clean.tokens, corr.tokens, kl, "eap-ig", steps=5)
    assert eap.abs().max() < 1e-2 * exact.abs().max()
    assert spearman(ig, exact) > 0.5  # EAP's ranking here is a ranking of float noise
    loss = next_token_loss_on(clean.tokens, pos)
    exact = edge_effects(model, g, clean.tokens, corr.tokens, loss)
    for est in (edge_attribution(model, g, clean.tokens, corr.tokens, loss),
                edge_attribution(model, g, clean.tokens, corr.tokens, loss, "eap-ig", steps=5)):
        assert spearman(est, exact) > 0.5
        # the k edges with the largest exact effects (k = the size of the weight-derived circuit) are found
        k = len(induction_circuit(model, g, clean.tokens, composition=True))
        top = set(exact.abs().topk(k).indices.tolist())
        assert len(top & set(est.abs().topk(k).indices.tolist())) >= 0.75 * k


def test_bad_input(setup):
    model, g, clean, corr, metric = setup
    with pytest.raises(ValueError, match="same shape"):
        node_attribution(model, clean.tokens, corr.tokens[:4], metric)
    with pytest.raises(ValueError, match="node must be"):
        node_attribution(model, clean.tokens, corr.tokens, metric, node="pattern")
    with pytest.raises(ValueError, match="QK fix"):
        node_attribution(model, clean.tokens, corr.tokens, metric, node="v", qk_fix=True)
    with pytest.raises(ValueError, match="must return a scalar"):
        node_attribution(model, clean.tokens, corr.tokens, lambda lg: lg.mean(-1))
    with pytest.raises(ValueError, match="must return a scalar"):
        edge_attribution(model, g, clean.tokens, corr.tokens, lambda lg: lg.mean(-1))
    with pytest.raises(ValueError, match="steps"):
        edge_attribution(model, g, clean.tokens, corr.tokens, metric, "eap-ig", steps=0)
    with pytest.raises(ValueError, match="method"):
        edge_attribution(model, g, clean.tokens, corr.tokens, metric, "atp*")
    with pytest.raises(ValueError, match="corrupted tokens"):
        node_attribution(model, clean.tokens, "zero", metric, around="corrupted")
    assert no_hooks(model)
