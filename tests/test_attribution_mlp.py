"""Residual decomposition, DLA, neuron DLA and the logit lens on models with MLPs: the terms
still sum exactly to what the model computes, with and without (learned) LayerNorm."""

import pytest
import torch

from toylab.causal.attribution import (decompose_resid, direct_logit_attribution, logit_lens, neuron_dla,
                                       stack_head_results)
from toylab.model import AttnOnlyTransformer, ModelConfig

CONFIGS = {
    "mlp": dict(d_mlp=16),
    "mlp-gelu-ln": dict(d_mlp=16, act_fn="gelu", layernorm=True),
    "mlp-ln-affine-biases": dict(d_mlp=16, layernorm=True, ln_affine=True, biases=True),
    "attn-ln-affine": dict(layernorm=True, ln_affine=True),
}


def make(kw, seed=1):
    model = AttnOnlyTransformer(ModelConfig(d_vocab=17, n_ctx=10, d_model=12, n_layers=2, n_heads=3,
                                            positional="learned", **kw), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LayerNorm weights and biases away from 1 and 0
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_in", "b_out", "b_Q", "b_K", "b_V", "b_U")):
                p.copy_((1.0 if name.endswith(".w") else 0.0) + 0.5 * torch.randn(p.shape, generator=g))
    return model


TOKENS = torch.randint(0, 17, (5, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decomposition_sums_to_the_residual_stream(name):
    model = make(CONFIGS[name])
    _, cache = model.run_with_cache(TOKENS)
    for layer in (0, 1, 2):
        stack, labels = decompose_resid(cache, model, layer)
        want = cache["resid_pre", layer] if layer < 2 else cache["resid_post", 1]
        torch.testing.assert_close(stack.sum(0), want, atol=1e-5, rtol=1e-5)
        if model.cfg.d_mlp:
            assert [f"{l}_mlp_out" for l in range(layer)] == [x for x in labels if x.endswith("mlp_out")]
    stack, labels = stack_head_results(cache, model)
    torch.testing.assert_close(stack.sum(0), cache["resid_post", 1], atol=1e-5, rtol=1e-5)
    assert labels[:6] == [f"L{l}H{h}" for l in range(2) for h in range(3)]


@pytest.mark.parametrize("per", ["head", "layer"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dla_sums_to_the_true_logit(name, per):
    model = make(CONFIGS[name])
    dla = direct_logit_attribution(model, TOKENS, per=per)
    torch.testing.assert_close(dla.attrs.sum(0), dla.total, atol=1e-4, rtol=1e-4)
    logits = model(TOKENS)
    torch.testing.assert_close(dla.total, logits[:, :-1].gather(-1, TOKENS[:, 1:, None])[..., 0])
    cfg = model.cfg
    assert ("ln_final.b" in dla.labels) == cfg.ln_affine and ("b_U" in dla.labels) == cfg.biases
    wrong = (TOKENS[:, 1:] + 1) % 17
    diff = direct_logit_attribution(model, TOKENS, incorrect_tokens=wrong, per=per)
    torch.testing.assert_close(diff.attrs.sum(0), diff.total, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "mlp-gelu-ln", "mlp-ln-affine-biases"])
def test_neuron_dla_splits_the_mlp_term_exactly(name):
    model = make(CONFIGS[name])
    layer_dla = direct_logit_attribution(model, TOKENS, per="layer")
    for layer in (0, 1):
        nd = neuron_dla(model, TOKENS, layer)
        assert nd.attrs.shape == (17, 5, 9) and nd.labels[0] == f"L{layer}N0" and nd.labels[-1] == f"L{layer}.b_out"
        torch.testing.assert_close(nd.attrs.sum(0), nd.total, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(nd.total, layer_dla.attrs[layer_dla.labels.index(f"{layer}_mlp_out")],
                                   atol=1e-5, rtol=1e-4)
    some = neuron_dla(model, TOKENS, 1, neurons=[3, -1])
    full = neuron_dla(model, TOKENS, 1)
    assert some.labels == ["L1N3", "L1N15", "L1.b_out"]
    torch.testing.assert_close(some.attrs[:2], full.attrs[[3, 15]])


def test_neuron_dla_is_activation_times_output_weights_times_unembedding():
    model = make(CONFIGS["mlp"])
    _, cache = model.run_with_cache(TOKENS)
    nd = neuron_dla(model, TOKENS, 0, neurons=[5])
    b, p = 2, 4
    want = cache["post", 0][b, p, 5] * (model.W_out[0, 5] @ model.W_U[:, TOKENS[b, p + 1]])
    torch.testing.assert_close(nd.attrs[0, b, p], want.detach())


def test_neuron_dla_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="attention-only"):
        neuron_dla(make({}), TOKENS, 0)
    model = make(CONFIGS["mlp"])
    with pytest.raises(ValueError, match="neuron 16 is out of range"):
        neuron_dla(model, TOKENS, 0, neurons=[16])
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        neuron_dla(model, TOKENS, 2)
    with pytest.raises(ValueError, match="integer indices"):
        neuron_dla(model, TOKENS, 0, neurons=[0.5])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logit_lens_reads_the_streams_after_attention_and_after_the_mlp(name):
    model = make(CONFIGS[name])
    lens = logit_lens(model, TOKENS, k=3, target=TOKENS)
    if model.cfg.d_mlp:
        assert lens.labels == ["embed", "L0.attn", "L0", "L1.attn", "L1"]
    else:
        assert lens.labels == ["embed", "L0", "L1"]
    probs = torch.softmax(model(TOKENS), -1)  # the last stream is the model's own output
    torch.testing.assert_close(lens.target_probs[-1], probs.gather(-1, TOKENS[..., None])[..., 0])
    torch.testing.assert_close(lens.topk_probs[-1], probs.topk(3, -1).values)
