"""Cross-check against TransformerLens: the same weights loaded into a
HookedTransformer (by :func:`toylab.interop.transformer_lens.to_transformer_lens`) give
the same logits, OV/QK spectra, composition scores, folding and attributions, and
:func:`~toylab.interop.transformer_lens.from_transformer_lens` brings them back.

Runs only where ``transformer_lens`` is importable: ``make test-peer`` (``.venv-tl``).
"""

import pytest
import torch

tl = pytest.importorskip("transformer_lens", reason="transformer_lens is not installed: "
                         "this peer cross-check runs in an environment that has it")

from toylab.circuits.weights import OV, QK, full_ov  # noqa: E402
from toylab.circuits.composition import composition_scores  # noqa: E402
from toylab.circuits.copying import copying_scores  # noqa: E402
from toylab.interop.transformer_lens import from_transformer_lens, to_transformer_lens  # noqa: E402
from toylab.model import AttnOnlyTransformer, ModelConfig  # noqa: E402
from toylab.training.presets import load_model  # noqa: E402
from _helpers import randomise_norms_and_biases  # noqa: E402


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


# ---------------------------------------------------------------- the round trip, and what is refused

ROUND_TRIP = {
    "attn-only-none": dict(positional="none"),
    "attn-only-shortformer": dict(positional="shortformer"),
    "shortformer-ln-mlp": dict(positional="shortformer", layernorm=True, ln_affine=True, d_mlp=24),
    "lnpre-mlp-gelu": dict(layernorm=True, d_mlp=24, act_fn="gelu"),
    "ln-biases-mlp": dict(layernorm=True, ln_affine=True, biases=True, d_mlp=24),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip_through_transformer_lens(name):
    kw = dict(d_vocab=30, n_ctx=10, d_model=24, n_layers=2, n_heads=3, **ROUND_TRIP[name])
    m = randomise_norms_and_biases(AttnOnlyTransformer(ModelConfig(**kw), seed=3), seed=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ht = to_transformer_lens(m)
    toks = torch.randint(0, 30, (5, 10), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ht(toks), m(toks), atol=1e-4, rtol=1e-4)
    back = from_transformer_lens(ht)
    # positional="none" comes back as learned positions that are all zero: the same map
    positional = kw.get("positional", "learned")
    assert back.cfg == ModelConfig(**dict(kw, positional="learned" if positional == "none" else positional))
    torch.testing.assert_close(back(toks), m(toks), atol=0, rtol=0)
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), f"{k} changed on the way back"
        assert torch.equal(v, before[k]), "to_transformer_lens changed its input"


def test_a_transformer_lens_model_without_biases_comes_back_without_them():
    ht = to_transformer_lens(load_model("induction-2l"))
    back = from_transformer_lens(ht)
    assert back.cfg == load_model("induction-2l").cfg


def _tl(**kw):
    base = dict(n_layers=1, d_model=16, n_ctx=8, d_head=8, n_heads=2, d_vocab=20, act_fn="relu", d_mlp=32)
    base.update(kw)
    return tl.HookedTransformer(tl.HookedTransformerConfig(**base))


@pytest.mark.parametrize("kw, match", [
    (dict(positional_embedding_type="rotary", rotary_dim=8), "rotary"),
    (dict(normalization_type="RMS"), "normalization_type='RMS'"),
    (dict(act_fn="gelu_new"), "act_fn='gelu_new'"),
    (dict(gated_mlp=True), "gated MLP"),
    (dict(n_key_value_heads=1), "grouped-query"),
    (dict(use_attn_scale=False), "attention scale"),
])
def test_from_transformer_lens_refuses_what_the_lab_cannot_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        from_transformer_lens(_tl(**kw))


def test_from_transformer_lens_refuses_an_output_bias_and_a_foreign_object():
    ht = _tl()
    with torch.no_grad():
        ht.blocks[0].attn.b_O.fill_(0.1)
    with pytest.raises(ValueError, match="fold_value_biases=False"):
        from_transformer_lens(ht)
    with pytest.raises(TypeError, match="HookedTransformer"):
        from_transformer_lens(load_model("induction-2l"))


def test_our_safetensors_files_match_the_safetensors_package(tmp_path):
    """The lab writes and reads safetensors itself; the package (a TransformerLens dependency)
    reads what the lab writes and writes what the lab reads."""
    st = pytest.importorskip("safetensors.torch")
    from toylab.features.topk import TopKSAE
    from toylab.interop.saelens import WEIGHTS_FILENAME, read_safetensors, save_saelens
    sae = TopKSAE(8, 24, k=3)
    with torch.no_grad():
        sae.input_scale.fill_(1.7)
    folder = save_saelens(sae, tmp_path / "sae")
    theirs = st.load_file(str(folder / WEIGHTS_FILENAME))
    ours, _ = read_safetensors(folder / WEIGHTS_FILENAME)
    assert sorted(theirs) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    for k in theirs:
        assert torch.equal(theirs[k], ours[k])
    mixed = {"x": torch.randn(3, 5), "y": torch.arange(4), "z": torch.randn(2).to(torch.bfloat16)}
    st.save_file(mixed, str(tmp_path / "m.safetensors"), metadata={"a": "b"})
    back, meta = read_safetensors(tmp_path / "m.safetensors")
    assert meta == {"a": "b"} and all(torch.equal(back[k], mixed[k]) for k in mixed)
