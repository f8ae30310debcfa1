"""Cross-check against TransformerLens: the same weights loaded into a
HookedTransformer give the same logits, OV/QK spectra and composition scores.

Runs only where ``transformer_lens`` is importable, e.g.
``/tmp/venv/tl/bin/python -m pytest tests/test_peer_transformerlens.py``.
"""

import pytest
import torch

tl = pytest.importorskip("transformer_lens", reason="transformer_lens is not installed: "
                         "this peer cross-check runs in an environment that has it")

from toylab.circuits.weights import OV, QK, full_ov  # noqa: E402
from toylab.circuits.composition import composition_scores  # noqa: E402
from toylab.circuits.copying import copying_scores  # noqa: E402
from toylab.model import AttnOnlyTransformer, ModelConfig  # noqa: E402
from toylab.training.presets import load_model  # noqa: E402
from _helpers import randomise_norms_and_biases  # noqa: E402


TL_POSITIONAL = {"learned": "standard", "shortformer": "shortformer"}


def to_transformer_lens(model):
    """A HookedTransformer holding ``model``'s weights (zero where toylab has no bias)."""
    c = model.cfg
    if c.positional not in TL_POSITIONAL or (c.layernorm and c.positional != "learned"):
        raise ValueError("only learned/shortformer positions (learned only with LayerNorm) map onto "
                         "TransformerLens here")
    norm = ("LN" if c.ln_affine else "LNPre") if c.layernorm else None
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads,
        d_vocab=c.d_vocab, attn_only=c.d_mlp == 0, d_mlp=c.d_mlp or None, normalization_type=norm,
        positional_embedding_type=TL_POSITIONAL[c.positional], act_fn=c.act_fn, device="cpu", seed=0)
    ht = tl.HookedTransformer(cfg)
    ours = dict(model.named_parameters())
    state = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos, "unembed.W_U": model.W_U,
             "unembed.b_U": ours.get("b_U", torch.zeros(c.d_vocab))}
    if c.ln_affine:
        state["ln_final.w"], state["ln_final.b"] = model.ln_final.w, model.ln_final.b
    for layer, block in enumerate(model.blocks):
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            state[f"blocks.{layer}.attn.{name}"] = getattr(block.attn, name)
        for name in ("b_Q", "b_K", "b_V"):
            state[f"blocks.{layer}.attn.{name}"] = ours.get(f"blocks.{layer}.attn.{name}",
                                                            torch.zeros(c.n_heads, c.d_head))
        state[f"blocks.{layer}.attn.b_O"] = torch.zeros(c.d_model)
        if c.d_mlp:
            for name in ("W_in", "b_in", "W_out", "b_out"):
                state[f"blocks.{layer}.mlp.{name}"] = getattr(block.mlp, name)
        if c.ln_affine:
            for ln in ("ln1", "ln2") if c.d_mlp else ("ln1",):
                state[f"blocks.{layer}.{ln}.w"] = getattr(block, ln).w
                state[f"blocks.{layer}.{ln}.b"] = getattr(block, ln).b
    missing, unexpected = ht.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    # what is left are TransformerLens's buffers (causal mask, IGNORE value), not weights
    assert all(k.endswith(("mask", "IGNORE")) for k in missing), missing
    ht.eval()
    return ht


def models():
    rand = AttnOnlyTransformer(ModelConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4,
                                           positional="learned"), seed=11)
    return {"induction-2l": load_model("induction-2l"), "random-2l-learned": rand}


@pytest.fixture(scope="module", params=["induction-2l", "random-2l-learned"])
def pair(request):
    m = models()[request.param]
    return m, to_transformer_lens(m)


def test_same_logits(pair):
    m, ht = pair
    toks = torch.randint(1, m.cfg.d_vocab, (8, m.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = 0
    torch.testing.assert_close(ht(toks), m(toks), atol=1e-4, rtol=1e-4)


def test_same_ov_and_qk_spectra(pair):
    m, ht = pair
    for ours, theirs in ((OV(m), ht.OV), (QK(m), ht.QK)):
        torch.testing.assert_close(ours.svd()[1], theirs.S, atol=1e-4, rtol=1e-4)
        ev, tev = ours.eigenvalues, theirs.eigenvalues
        # same multiset: compare sorted by magnitude, then the sums (order of equal magnitudes may differ)
        torch.testing.assert_close(ev.abs(), tev.abs().sort(-1, descending=True).values, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(ev.sum(-1), tev.sum(-1), atol=1e-3, rtol=1e-3)
    # full OV circuit: TransformerLens's W_E @ OV @ W_U, our factored version
    theirs = ht.W_E @ ht.OV @ ht.W_U
    torch.testing.assert_close(full_ov(m).svd()[1], theirs.S, atol=1e-3, rtol=1e-3)
    tev = theirs.eigenvalues
    tscore = tev.sum(-1).real / tev.abs().sum(-1)
    torch.testing.assert_close(copying_scores(m), tscore.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_same_composition_scores(pair, kind):
    m, ht = pair
    ours = composition_scores(m, kind)
    theirs = ht.all_composition_scores(kind)
    defined = ~torch.isnan(ours)
    torch.testing.assert_close(ours[defined], theirs[defined], atol=1e-5, rtol=1e-4)
    assert (theirs[~defined] == 0).all()  # TransformerLens fills undefined pairs with 0, we with NaN


# ---------------------------------------------------------------- MLP models

MLP_CONFIGS = {
    "mlp-relu": dict(d_mlp=64, act_fn="relu"),
    "mlp-gelu-shortformer": dict(d_mlp=48, act_fn="gelu", positional="shortformer"),
    "mlp-lnpre": dict(d_mlp=64, layernorm=True),
    "mlp-ln-learned": dict(d_mlp=64, act_fn="gelu", layernorm=True, ln_affine=True),
    "mlp-ln-learned-biases": dict(d_mlp=64, layernorm=True, ln_affine=True, biases=True),
}


def mlp_model(name):
    kw = dict(d_vocab=40, n_ctx=12, d_model=32, n_layers=2, n_heads=4, positional="learned")
    kw.update(MLP_CONFIGS[name])
    return randomise_norms_and_biases(AttnOnlyTransformer(ModelConfig(**kw), seed=5), seed=6)


@pytest.mark.parametrize("name", sorted(MLP_CONFIGS))
def test_mlp_models_give_transformer_lens_logits(name):
    m = mlp_model(name)
    ht = to_transformer_lens(m)
    toks = torch.randint(0, m.cfg.d_vocab, (6, m.cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ht(toks), m(toks), atol=1e-4, rtol=1e-4)
    # the MLP's activations too, hook for hook
    _, ours = m.run_with_cache(toks)
    _, theirs = ht.run_with_cache(toks)
    for key in ("blocks.1.hook_resid_mid", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post",
                "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"):
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp-ln-learned", "mlp-ln-learned-biases"])
def test_fold_layer_norm_matches_transformer_lens_processing(name):
    from toylab.circuits.folding import center_unembed, center_writing_weights, fold_layer_norm
    m = mlp_model(name)
    ht = to_transformer_lens(m)
    theirs = tl.HookedTransformer(ht.cfg)  # TransformerLens folds the same state dict on loading
    # fold_value_biases=False: TransformerLens would move b_V W_O into b_O, a bias toylab has no place for
    theirs.load_and_process_state_dict(ht.state_dict(), fold_ln=True, center_writing_weights=True,
                                       center_unembed=True, fold_value_biases=False)
    ours = center_unembed(center_writing_weights(fold_layer_norm(m)))
    ts = theirs.state_dict()
    assert theirs.cfg.normalization_type == "LNPre" and ours.cfg.layernorm and not ours.cfg.ln_affine
    tl_name = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
    for name_, p in ours.named_parameters():
        torch.testing.assert_close(p.detach(), ts[tl_name.get(name_, name_)], atol=1e-5, rtol=1e-5,
                                   msg=lambda s, n=name_: f"{n}: {s}")
    toks = torch.randint(0, m.cfg.d_vocab, (4, m.cfg.n_ctx), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(theirs(toks), ours(toks), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-ln-learned"])
def test_decomposition_and_neuron_dla_match_transformer_lens(name):
    """Our per-layer DLA and neuron DLA against TransformerLens's cache.decompose_resid /
    stack_neuron_results + logit_attrs (a LayerNorm model is folded first on both sides, since
    TransformerLens's logit_attrs applies only the final scale, as our folded model does)."""
    from toylab.causal.attribution import direct_logit_attribution, neuron_dla
    from toylab.circuits.folding import fold_layer_norm
    m = mlp_model(name)
    ht = to_transformer_lens(m)
    if m.cfg.layernorm:
        theirs = tl.HookedTransformer(ht.cfg)
        theirs.load_and_process_state_dict(ht.state_dict(), fold_ln=True, center_writing_weights=False,
                                           center_unembed=False, fold_value_biases=False)
        m, ht = fold_layer_norm(m, center_weights=False), theirs
    toks = torch.randint(0, m.cfg.d_vocab, (3, m.cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    _, cache = ht.run_with_cache(toks)
    # TransformerLens scales every position by the cached final scale: give it a target at every
    # position (the last one is a dummy) and drop the last position afterwards
    targets = torch.cat([toks[:, 1:], toks[:, :1]], dim=1)
    resid, labels = cache.decompose_resid(return_labels=True)
    ours = direct_logit_attribution(m, toks, per="layer")
    assert ours.labels[:len(labels)] == labels
    theirs = cache.logit_attrs(resid, tokens=targets, has_batch_dim=True)[..., :-1]
    torch.testing.assert_close(ours.attrs[:len(labels)], theirs, atol=1e-4, rtol=1e-4)
    stack, nlabels = cache.stack_neuron_results(m.cfg.n_layers, return_labels=True)
    theirs = cache.logit_attrs(stack, tokens=targets, has_batch_dim=True)[..., :-1]
    per_layer = [neuron_dla(m, toks, l) for l in range(m.cfg.n_layers)]
    assert sum((d.labels[:-1] for d in per_layer), []) == nlabels
    torch.testing.assert_close(torch.cat([d.attrs[:-1] for d in per_layer]), theirs, atol=1e-4, rtol=1e-4)
