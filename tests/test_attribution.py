"""Residual-stream decompositions, direct logit attribution and the logit lens."""

import math

import pytest
import torch

from toylab.causal.attribution import (decompose_resid, direct_logit_attribution, final_resid, final_scale,
                                logit_attrs, logit_lens, stack_head_results)
from toylab.data import repeated_tokens
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import load_model

H = 15


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def probe():
    return repeated_tokens(128, H, 32, torch.Generator().manual_seed(11))


def _small(positional="learned", layernorm=False, n_layers=2):
    cfg = ModelConfig(d_vocab=20, n_ctx=12, d_model=16, n_layers=n_layers, n_heads=2, positional=positional,
                      layernorm=layernorm)
    return AttnOnlyTransformer(cfg, seed=3), torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(0))


def test_decompose_resid_sums_to_final_stream(model, probe):
    _, cache = model.run_with_cache(probe)
    stack, labels = decompose_resid(cache, model)
    assert labels == ["embed", "0_attn_out", "1_attn_out"]  # shortformer: no pos_embed in the stream
    assert stack.shape == (3, *probe.shape, 64)
    torch.testing.assert_close(stack.sum(0), cache["resid_post", -1], rtol=0, atol=1e-5)
    stack1, labels1 = decompose_resid(cache, model, layer=1)
    assert labels1 == ["embed", "0_attn_out"]
    torch.testing.assert_close(stack1.sum(0), cache["resid_pre", 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("positional,layernorm,n_layers", [("learned", False, 2), ("learned", True, 2),
                                                           ("none", False, 1), ("learned", False, 0)])
def test_decompositions_sum_on_other_configs(positional, layernorm, n_layers):
    m, toks = _small(positional, layernorm, n_layers)
    _, cache = m.run_with_cache(toks)
    stack, labels = decompose_resid(cache, m)
    assert ("pos_embed" in labels) == (positional == "learned")
    torch.testing.assert_close(stack.sum(0), final_resid(cache, m), rtol=0, atol=1e-5)
    heads, hlabels = stack_head_results(cache, m)
    assert len(hlabels) == n_layers * 2 + (2 if positional == "learned" else 1)
    torch.testing.assert_close(heads.sum(0), final_resid(cache, m), rtol=0, atol=1e-5)


def test_zero_layer_model_is_its_embeddings():
    m = load_model("bigram-0l")
    toks = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    _, cache = m.run_with_cache(toks)
    stack, labels = stack_head_results(cache, m)
    assert labels == ["embed"]
    torch.testing.assert_close(stack.sum(0), m.W_E[toks].detach())


def test_stack_head_results_with_and_without_hook_result(model, probe):
    _, full = model.run_with_cache(probe)
    _, no_result = model.run_with_cache(probe, names_filter=lambda n: "hook_result" not in n)
    assert ("result", 0) in full and ("result", 0) not in no_result
    a, labels = stack_head_results(full, model)
    b, _ = stack_head_results(no_result, model)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1", "embed"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.sum(0), full["resid_post", -1], rtol=0, atol=1e-5)


def test_logit_attrs_sum_to_logits(model, probe):
    logits, cache = model.run_with_cache(probe)
    stack, _ = stack_head_results(cache, model)
    other = (probe + 1) % 128
    attrs = logit_attrs(stack, model, probe)
    torch.testing.assert_close(attrs.sum(0), logits.gather(-1, probe[..., None])[..., 0], rtol=0, atol=1e-4)
    diff = logit_attrs(stack, model, probe, other)
    want = logits.gather(-1, probe[..., None])[..., 0] - logits.gather(-1, other[..., None])[..., 0]
    torch.testing.assert_close(diff.sum(0), want, rtol=0, atol=1e-4)


def test_logit_attrs_with_layernorm_freezes_the_scale():
    m, toks = _small("learned", layernorm=True)
    logits, cache = m.run_with_cache(toks)
    stack, _ = stack_head_results(cache, m)
    with pytest.raises(ValueError, match="final_scale"):
        logit_attrs(stack, m, toks)
    attrs = logit_attrs(stack, m, toks, scale=final_scale(cache, m))
    torch.testing.assert_close(attrs.sum(0), logits.gather(-1, toks[..., None])[..., 0], rtol=0, atol=1e-4)
    d = direct_logit_attribution(m, toks)
    torch.testing.assert_close(d.attrs.sum(0), d.total, rtol=0, atol=1e-4)


def test_logit_lens_with_layernorm_and_learned_positions():
    m, toks = _small("learned", layernorm=True)
    ll = logit_lens(m, toks, k=2)
    torch.testing.assert_close(ll.topk_probs[-1], torch.softmax(m(toks), -1).topk(2, -1).values)
    assert ll.target_probs is None and ll.labels == ["embed", "L0", "L1"]


def test_logit_attrs_bad_input(model, probe):
    _, cache = model.run_with_cache(probe)
    stack, _ = stack_head_results(cache, model)
    with pytest.raises(ValueError, match="shape"):
        logit_attrs(stack, model, probe[:, :-1])
    with pytest.raises(ValueError, match="n_components"):
        logit_attrs(stack[0], model, probe)
    with pytest.raises(ValueError, match="outside"):
        logit_attrs(stack, model, probe + 500)


def test_dla_sums_to_true_logit_and_induction_heads_dominate(model, probe):
    d = direct_logit_attribution(model, probe)
    assert d.attrs.shape == (5, 32, 2 * H)
    torch.testing.assert_close(d.attrs.sum(0), d.total, rtol=0, atol=1e-4)
    second = list(range(1 + H, 2 * H))  # logit positions predicting the repeated copy
    means = d.mean(second)
    print("DLA of the correct next token, second half:", {k: round(v, 3) for k, v in means.items()})
    induction = means["L1H0"] + means["L1H1"]
    rest = sum(abs(means[k]) for k in ("L0H0", "L0H1", "embed"))
    assert min(means["L1H0"], means["L1H1"]) > 2.0
    assert induction > 10 * rest
    # logit difference against another token: still sums, still the induction heads
    wrong = (probe[:, 1:] + 7) % 127 + 1
    dd = direct_logit_attribution(model, probe, incorrect_tokens=wrong)
    torch.testing.assert_close(dd.attrs.sum(0), dd.total, rtol=0, atol=1e-4)
    assert dd.mean(second)["L1H1"] > 2.0
    with pytest.raises(ValueError, match="per"):
        direct_logit_attribution(model, probe, per="neuron")


def test_logit_lens(model, probe):
    target = torch.cat([probe[:, 1:], probe[:, :1]], 1)  # next token (last column unused)
    ll = logit_lens(model, probe, k=3, target=target)
    assert ll.labels == ["embed", "L0", "L1"]
    assert ll.topk_tokens.shape == (3, 32, 1 + 2 * H, 3) and ll.target_probs.shape == (3, 32, 1 + 2 * H)
    # the last layer's lens is the model itself
    probs = torch.softmax(model(probe), -1)
    torch.testing.assert_close(ll.topk_probs[-1], probs.topk(3, -1).values)
    p = ll.target_probs[:, :, 1 + H:2 * H].mean((1, 2))
    print("logit lens, P(correct next token) on the repeated half:", [round(float(x), 4) for x in p])
    # induction happens in layer 1. The shipped model's repeated-half loss is <= 0.3 (its acceptance
    # bound), so by Jensen its mean probability there is >= exp(-0.3) = 0.74; it cannot be
    # reached before layer 1 writes.
    assert p[0] < 0.05 and p[1] < 0.05 and p[2] > math.exp(-0.3)
    embed_probs = torch.softmax(model.W_E[probe] @ model.W_U, -1)  # shortformer: no W_pos in the stream
    torch.testing.assert_close(ll.topk_probs[0], embed_probs.topk(3, -1).values)
    with pytest.raises(ValueError, match="k must"):
        logit_lens(model, probe, k=0)


def test_cache_methods_match_the_functions(model, probe):
    from toylab.causal.attribution import decompose_resid, logit_attrs, stack_head_results

    _, cache = model.run_with_cache(probe)
    stack, labels = cache.decompose_resid()
    want, want_labels = decompose_resid(cache, model)
    assert labels == want_labels and torch.equal(stack, want)
    heads, head_labels = cache.stack_head_results()
    want, want_labels = stack_head_results(cache, model)
    assert head_labels == want_labels and torch.equal(heads, want)
    torch.testing.assert_close(heads.sum(0), cache["resid_post", -1], atol=1e-4, rtol=1e-4)
    nxt = probe[:, 1:]
    attrs = cache.logit_attrs(heads[:, :, :-1], nxt)
    assert torch.equal(attrs, logit_attrs(heads[:, :, :-1], model, nxt))
    from toylab.hooks import ActivationCache

    with pytest.raises(ValueError, match="made without a model"):
        ActivationCache(dict(cache)).decompose_resid()
