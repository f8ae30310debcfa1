"""Hook points, run_with_hooks, run_with_cache and the activation cache."""

import pytest
import torch

from toylab.hooks import ActivationCache, act_name, names_regex
from toylab.model import AttnOnlyTransformer, ModelConfig

TOKENS = torch.tensor([[0, 3, 5, 7, 3, 5], [0, 1, 2, 1, 2, 4]])


@pytest.fixture
def model():
    cfg = ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=2, n_heads=2, positional="shortformer")
    return AttnOnlyTransformer(cfg, seed=1)


def test_hook_names_follow_transformerlens(model):
    per_layer = ["hook_resid_pre", "attn.hook_q_input", "attn.hook_k_input", "attn.hook_v_input",
                 "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                 "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_post"]
    expected = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.{n}" for l in range(2) for n in per_layer]
    assert sorted(model.hook_names) == sorted(expected)


def test_cache_holds_every_activation_with_shapes(model):
    logits, cache = model.run_with_cache(TOKENS)
    torch.testing.assert_close(logits, model(TOKENS))
    assert set(cache) == set(model.hook_names)
    assert cache["pattern", 1].shape == (2, 2, 6, 6)
    assert cache["q", 0].shape == (2, 6, 2, 4)
    assert cache["result", 0].shape == (2, 6, 2, 8)
    assert cache["embed"].shape == (2, 6, 8)
    assert cache["pattern", -1] is cache["blocks.1.attn.hook_pattern"]
    pattern = cache["pattern", 0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 6))
    assert torch.all(pattern.triu(diagonal=1) == 0)


def test_cache_is_consistent_with_the_residual_stream(model):
    logits, cache = model.run_with_cache(TOKENS)
    resid = cache["embed"]  # shortformer: positions do not enter the residual stream
    for l in range(2):
        torch.testing.assert_close(cache["resid_pre", l], resid)
        torch.testing.assert_close(cache["result", l].sum(2), cache["attn_out", l], atol=1e-6, rtol=1e-5)
        resid = resid + cache["attn_out", l]
        torch.testing.assert_close(cache["resid_post", l], resid)
    torch.testing.assert_close(resid @ model.W_U, logits, atol=1e-5, rtol=1e-5)


def test_names_filter(model):
    _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_pattern"))
    assert list(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    _, cache = model.run_with_cache(TOKENS, names_filter="hook_embed")
    assert list(cache) == ["hook_embed"]
    _, cache = model.run_with_cache(TOKENS, names_filter=names_regex(r"blocks\.1\.attn\.hook_[qk]$"))
    assert list(cache) == ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    with pytest.raises(KeyError, match="excluded by names_filter"):
        cache["pattern", 0]


def test_hook_can_replace_an_activation(model):
    def kill_head_0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    ablated = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_z", kill_head_0)])
    # the same ablation by hand: remove head L1H0's output from the final residual stream
    _, cache = model.run_with_cache(TOKENS)
    manual = (cache["resid_post", 1] - cache["result", 1][:, :, 0]) @ model.W_U
    torch.testing.assert_close(ablated, manual, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ablated, model(TOKENS))


def test_hooks_are_removed_after_a_run_and_after_an_error(model):
    seen = []
    model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, h: seen.append(h.name))])
    assert seen == ["hook_embed"]

    def boom(x, hook):
        raise RuntimeError("student bug")

    with pytest.raises(RuntimeError, match="student bug"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, h: None), ("blocks.0.attn.hook_z", boom)])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    model(TOKENS)  # still runs
    assert seen == ["hook_embed"]


def test_unknown_hook_name_lists_valid_names(model):
    with pytest.raises(KeyError, match=r"unknown hook name\(s\) \['blocks.0.hook_mlp_out'\]; valid names are") as e:
        model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, h: None), ("blocks.0.hook_mlp_out", print)])
    assert "blocks.1.attn.hook_pattern" in str(e.value)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_wrong_replacement_shape_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"returned shape \[2, 6\], expected the activation's shape \[2, 6, 8\]"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, h: x[..., 0])])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_act_name():
    assert act_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert act_name("embed") == "hook_embed"
    assert act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(KeyError, match="give a layer"):
        act_name("pattern")
    with pytest.raises(KeyError, match="unknown activation name"):
        act_name("mlp_hidden", 0)
    # the MLP's hook points (present only in models with d_mlp > 0), TransformerLens's short names
    assert act_name("mlp_out", 0) == "blocks.0.hook_mlp_out" and act_name("mlp_in", 1) == "blocks.1.hook_mlp_in"
    assert act_name("resid_mid", 1) == "blocks.1.hook_resid_mid"
    assert act_name("pre", 0) == "blocks.0.mlp.hook_pre" and act_name("post", 2) == "blocks.2.mlp.hook_post"


def test_cache_is_read_only_mapping(model):
    _, cache = model.run_with_cache(TOKENS)
    assert isinstance(cache, ActivationCache) and ("pattern", 0) in cache and ("mlp_out", 0) not in cache
    with pytest.raises(TypeError):
        cache["hook_embed"] = torch.zeros(1)
    assert not cache["hook_embed"].requires_grad


def test_zero_layer_model_has_embed_hooks_only():
    model = AttnOnlyTransformer(ModelConfig(d_vocab=5, n_ctx=4, d_model=4, n_layers=0, positional="none"))
    assert model.hook_names == ["hook_embed"]
    logits, cache = model.run_with_cache(torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(logits, cache["embed"] @ model.W_U)


def test_per_head_inputs_have_head_axis_and_include_shortformer_positions(model):
    _, cache = model.run_with_cache(TOKENS)
    for l in range(2):
        for kind in ("q", "k", "v"):
            assert cache[f"blocks.{l}.attn.hook_{kind}_input"].shape == (2, 6, 2, 8)
    resid = cache["blocks.0.hook_resid_pre"]
    pos = cache["hook_pos_embed"]
    for h in range(2):
        torch.testing.assert_close(cache["blocks.0.attn.hook_q_input"][:, :, h], resid + pos)
        torch.testing.assert_close(cache["blocks.0.attn.hook_k_input"][:, :, h], resid + pos)
        torch.testing.assert_close(cache["blocks.0.attn.hook_v_input"][:, :, h], resid)
    # q = per-head input @ W_Q, head by head
    W_Q = model.blocks[1].attn.W_Q
    q = torch.einsum("bphd,hde->bphe", cache["blocks.1.attn.hook_q_input"], W_Q)
    torch.testing.assert_close(q, cache["q", 1])


def test_identity_input_hooks_leave_logits_unchanged(model):
    plain = model(TOKENS)
    names = [f"blocks.{l}.attn.hook_{k}_input" for l in range(2) for k in ("q", "k", "v")]
    hooked = model.run_with_hooks(TOKENS, fwd_hooks=[(n, lambda x, hook: x) for n in names])
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_patching_one_heads_input_changes_only_that_head(model, kind):
    def scramble_head0(x, hook):
        x = x.clone()
        x[:, :, 0] = x[:, :, 0].flip(1) * 3.0
        return x

    _, clean = model.run_with_cache(TOKENS)
    with model.hooks([(f"blocks.1.attn.hook_{kind}_input", scramble_head0)]):
        _, patched = model.run_with_cache(TOKENS)
    assert not torch.allclose(patched[kind, 1][:, :, 0], clean[kind, 1][:, :, 0])
    torch.testing.assert_close(patched[kind, 1][:, :, 1], clean[kind, 1][:, :, 1])
    torch.testing.assert_close(patched["z", 1][:, :, 1], clean["z", 1][:, :, 1])
    assert not torch.allclose(patched["z", 1][:, :, 0], clean["z", 1][:, :, 0])
    torch.testing.assert_close(patched["resid_pre", 1], clean["resid_pre", 1])  # upstream untouched


def test_input_hooks_are_only_computed_when_hooked(model):
    seen = []
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_q", lambda x, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.attn.hook_q"]
    assert not model.any_hooks()


def test_short_names_reach_the_per_head_input_hooks():
    from toylab.hooks import act_name
    from toylab.model import AttnOnlyTransformer, ModelConfig

    model = AttnOnlyTransformer(ModelConfig(d_vocab=8, n_ctx=8, d_model=8, n_layers=2, n_heads=2))
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=lambda n: n.endswith("_input"))
    for short in ("q_input", "k_input", "v_input"):
        assert act_name(short, 1) == f"blocks.1.attn.hook_{short}"
        assert cache[short, -1].shape == (1, 3, 2, 8)  # [batch, pos, n_heads, d_model]
