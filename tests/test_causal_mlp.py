"""Ablation and activation patching of MLP layers and single neurons; path patching on models with
learned LayerNorm and biases."""

import copy

import pytest
import torch

from toylab.causal.interventions import ablate_mlps, make_metric, mlp_ablation_hooks, term_importance
from toylab.causal.patching import patch, patch_sweep, path_patch
from toylab.model import AttnOnlyTransformer, ModelConfig


def make(seed=2, **kw):
    base = dict(d_vocab=15, n_ctx=8, d_model=12, n_layers=2, n_heads=3, positional="learned", d_mlp=10)
    base.update(kw)
    return AttnOnlyTransformer(ModelConfig(**base), seed=seed)


TOKENS = torch.randint(0, 15, (6, 8), generator=torch.Generator().manual_seed(0))
OTHER = torch.randint(0, 15, (6, 8), generator=torch.Generator().manual_seed(1))


def test_zero_ablating_an_mlp_equals_zeroing_its_weights():
    model = make()
    got = ablate_mlps(model, TOKENS, layers=[1])
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_out.zero_()
        edited.blocks[1].mlp.b_out.zero_()
    torch.testing.assert_close(got, edited(TOKENS))
    assert not torch.allclose(got, model(TOKENS))


def test_zero_ablating_neurons_equals_zeroing_their_output_rows():
    model = make()
    got = ablate_mlps(model, TOKENS, neurons=[(0, 3), (0, [7, -1]), (1, 2)])
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[0].mlp.W_out[[3, 7, 9]] = 0.0
        edited.blocks[1].mlp.W_out[2] = 0.0
    torch.testing.assert_close(got, edited(TOKENS))


def test_mean_and_resample_ablation_of_a_neuron_use_the_reference():
    model = make()
    _, ref_cache = model.run_with_cache(OTHER, names_filter="blocks.1.mlp.hook_post")
    seen = {}

    def spy(act, hook):
        seen["post"] = act.clone()
    for kind in ("mean", "resample"):
        hooks = mlp_ablation_hooks(model, TOKENS, neurons=[(1, 4)], kind=kind, reference=OTHER, seed=3)
        model.run_with_hooks(TOKENS, fwd_hooks=hooks + [("blocks.1.mlp.hook_post", spy)])
        ref = ref_cache["post", 1][..., 4]
        if kind == "mean":
            torch.testing.assert_close(seen["post"][..., 4], ref.mean(0, keepdim=True).expand(6, -1))
        else:  # each row is one of the reference's rows, all rows used once
            rows = [next(r for r in range(6) if torch.equal(seen["post"][b, :, 4], ref[r])) for b in range(6)]
            assert sorted(rows) == list(range(6))
    # resampling from the batch itself gives no row its own activation back
    _, own = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_mlp_out")
    hooks = mlp_ablation_hooks(model, TOKENS, layers=[0], kind="resample", seed=0)
    model.run_with_hooks(TOKENS, fwd_hooks=hooks + [("blocks.0.hook_mlp_out", spy)])
    for b in range(6):
        assert not torch.equal(seen["post"][b], own["mlp_out", 0][b])


def test_mlp_ablation_refuses_with_sentences():
    model = make()
    with pytest.raises(ValueError, match="no MLPs"):
        ablate_mlps(make(d_mlp=0), TOKENS, layers=[0])
    with pytest.raises(ValueError, match="nothing to ablate"):
        ablate_mlps(model, TOKENS)
    with pytest.raises(ValueError, match="neuron 10 is out of range"):
        ablate_mlps(model, TOKENS, neurons=[(0, 10)])
    with pytest.raises(ValueError, match=r"\(layer, neuron\) pair"):
        ablate_mlps(model, TOKENS, neurons=[3])
    with pytest.raises(ValueError, match="unknown ablation kind"):
        ablate_mlps(model, TOKENS, layers=[0], kind="random")
    with pytest.raises(NotImplementedError, match="attention-only"):
        term_importance(model, TOKENS)


def _manual_patch(model, clean, corrupted, name, metric, cols=None):
    """Denoise by hand: the corrupted run with ``name`` (``[..., cols]``) from the clean run."""
    _, cache = model.run_with_cache(clean, names_filter=name)

    def fn(act, hook):
        act = act.clone()
        if cols is None:
            return cache[name]
        act[..., cols] = cache[name][..., cols]
        return act
    m = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, fn)])))
    m_clean, m_corr = float(metric(model(clean))), float(metric(model(corrupted)))
    return (m - m_corr) / (m_clean - m_corr)


def test_patching_an_mlp_layer_and_a_neuron_matches_doing_it_by_hand():
    model = make()
    metric = make_metric("logprob", TOKENS)
    got = patch(model, TOKENS, OTHER, "mlp_out", metric, layer=1)
    assert got == pytest.approx(_manual_patch(model, TOKENS, OTHER, "blocks.1.hook_mlp_out", metric), abs=1e-5)
    got = patch(model, TOKENS, OTHER, "post", metric, layer=0, neuron=6)
    assert got == pytest.approx(_manual_patch(model, TOKENS, OTHER, "blocks.0.mlp.hook_post", metric, cols=6),
                                abs=1e-5)


def test_neuron_sweep_agrees_with_one_patch_per_neuron():
    model = make()
    metric = make_metric("logprob", TOKENS)
    vals, labels = patch_sweep(model, TOKENS, OTHER, metric, hook="post", per_position=False)
    assert vals.shape == (20,) and labels[:2] == ["L0N0", "L0N1"] and labels[-1] == "L1N9"
    naive, _ = patch_sweep(model, TOKENS, OTHER, metric, hook="post", per_position=False, cells_per_pass=1)
    torch.testing.assert_close(vals, naive, atol=1e-5, rtol=1e-5)
    for i in (0, 13):
        one = patch(model, TOKENS, OTHER, "post", metric, layer=i // 10, neuron=i % 10)
        assert float(vals[i]) == pytest.approx(one, abs=1e-5)
    layer_vals, layer_labels = patch_sweep(model, TOKENS, OTHER, metric, hook="mlp_out", per_head=False)
    assert layer_vals.shape == (2, 8) and layer_labels == ["L0", "L1"]
    with pytest.raises(ValueError, match="neuron= applies to an MLP's hook_pre or hook_post"):
        patch(model, TOKENS, OTHER, "z", metric, layer=0, neuron=1)
    with pytest.raises(ValueError, match="neuron 10 is out of range"):
        patch(model, TOKENS, OTHER, "post", metric, layer=0, neuron=10)


@pytest.mark.parametrize("kw", [dict(layernorm=True, ln_affine=True, biases=True),
                                dict(layernorm=True, ln_affine=True, biases=True, d_mlp=0)], ids=str)
@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_path_patching_recomputes_the_receiver_input_exactly(kw, receiver_input):
    """With the same tokens on both sides, the recomputed input (through ln1's weights and the
    biases) must be the clean one: the metric comes back unchanged."""
    model = make(**kw)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_Q", "b_K", "b_V")):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    metric = make_metric("logprob", TOKENS)
    got = path_patch(model, TOKENS, TOKENS, (0, 1), (1, 2), receiver_input, metric, normalise=False)
    assert got == pytest.approx(float(metric(model(TOKENS))), abs=1e-5)
