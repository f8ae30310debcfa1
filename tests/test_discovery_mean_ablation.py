"""Mean ablation in the discovery methods (source ``"mean"``): each sender's output replaced by its mean
over the base batch at each position, the same numbers as :func:`toylab.causal.interventions.ablate_heads`
with ``kind="mean"``."""

import pytest
import torch

from toylab.causal.interventions import ablate_heads
from toylab.data import make_dataset
from toylab.discovery.acdc import acdc
from toylab.discovery.attribution_patching import edge_attribution, node_attribution, node_effects
from toylab.discovery.edge_patching import edge_effects, run_with_edges, sender_outputs
from toylab.discovery.graph import Graph
from toylab.discovery.metrics import kl_to_clean, next_token_loss_on
from toylab.training.presets import get_preset, load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = load_model("induction-2l")
    ds = make_dataset(get_preset("induction-2l").data)
    clean = ds.sample_batch(16, torch.Generator().manual_seed(0)).tokens
    return model, Graph(model), clean


def test_mean_of_every_outgoing_edge_is_the_head_mean_ablated(setup):
    model, g, clean = setup
    edges = [e.name for e in g.edges if e.sender == "L0H1"]
    patched = run_with_edges(model, g, clean, "mean", edges)[0]
    with torch.no_grad():
        want = ablate_heads(model, clean, [(0, 1)], kind="mean", at="result")
    assert torch.allclose(patched, want, atol=1e-5)
    zero = run_with_edges(model, g, clean, "zero", edges)[0]
    assert not torch.allclose(zero, want, atol=1e-3)  # the mean is not the zero ablation


def test_one_edge_to_the_mean_changes_only_that_term(setup):
    model, g, clean = setup
    out = sender_outputs(model, g, clean)
    logits = run_with_edges(model, g, clean, "mean", ["L1H0->logits"])[0]
    resid = sum(out[n] for n in ("embed", "L0H0", "L0H1", "L1H0", "L1H1"))
    resid = resid - out["L1H0"] + out["L1H0"].mean(0, keepdim=True)
    assert torch.allclose(logits, resid @ model.W_U, atol=1e-4)


def test_node_effects_and_methods_accept_mean(setup):
    model, g, clean = setup
    metric = next_token_loss_on(clean)
    exact = node_effects(model, clean, "mean", metric, node="result")
    with torch.no_grad():
        base = float(metric(model(clean)))
        for l, h in [(0, 0), (1, 1)]:
            want = float(metric(ablate_heads(model, clean, [(l, h)], kind="mean", at="result"))) - base
            assert abs(float(exact[l, h]) - want) < 1e-4
    atp = node_attribution(model, clean, "mean", metric, node="result")
    assert atp.shape == exact.shape and bool(torch.isfinite(atp).all())
    assert not torch.allclose(atp, node_attribution(model, clean, "zero", metric, node="result"))
    eff = edge_effects(model, g, clean, "mean", metric)
    assert float(eff[g.index["pos->L0H0.q"]]) == pytest.approx(0.0, abs=1e-6)  # positions are the same in every row
    assert bool(torch.isfinite(edge_attribution(model, g, clean, "mean", metric)).all())
    kl = kl_to_clean(model(clean).detach())
    assert acdc(model, g, clean, "mean", 0.0, metric=kl).metric == pytest.approx(0.0, abs=1e-5)


def test_mean_is_refused_where_it_means_nothing(setup):
    model, g, clean = setup
    with pytest.raises(ValueError, match="denoising needs corrupted tokens to start from, not 'mean'"):
        edge_effects(model, g, clean, "mean", next_token_loss_on(clean), direction="denoise")
    with pytest.raises(ValueError, match="'mean' or 'zero', got 'average'"):
        run_with_edges(model, g, clean, "average", [])
