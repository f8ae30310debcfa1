"""The optional MLP, learned LayerNorm and biases: the model computes what its docstring says,
attention-only models stay as they were, and LayerNorm folds away exactly."""

import math
import warnings

import pytest
import torch

from toylab.circuits.folding import center_unembed, center_writing_weights, fold_layer_norm
from toylab.model import AttnOnlyTransformer, ModelConfig
from _helpers import randomise_norms_and_biases  # noqa: E402


def make(seed=3, **kw):
    base = dict(d_vocab=13, n_ctx=9, d_model=8, n_layers=2, n_heads=2, positional="learned")
    base.update(kw)
    return AttnOnlyTransformer(ModelConfig(**base), seed=seed)



def ln(x, w=None, b=None):
    x = x - x.mean(-1, keepdim=True)
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    return y if w is None else y * w + b


def reference_logits(model, tokens):
    """The block equations written out head by head, position by position."""
    cfg = model.cfg
    B, T = tokens.shape
    x = model.W_E[tokens] + (model.W_pos[:T] if cfg.positional == "learned" else 0)
    affine = cfg.ln_affine
    for block in model.blocks:
        a = block.attn
        h_in = ln(x, *((block.ln1.w, block.ln1.b) if affine else ())) if cfg.layernorm else x
        out = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            q, k, v = h_in @ a.W_Q[h], h_in @ a.W_K[h], h_in @ a.W_V[h]
            if cfg.biases:
                q, k, v = q + a.b_Q[h], k + a.b_K[h], v + a.b_V[h]
            for b in range(B):
                for i in range(T):
                    s = torch.stack([q[b, i] @ k[b, j] for j in range(i + 1)]) / math.sqrt(cfg.d_head)
                    out[b, i] += (torch.softmax(s, 0)[:, None] * v[b, :i + 1]).sum(0) @ a.W_O[h]
        x = x + out
        if cfg.d_mlp:
            m_in = ln(x, *((block.ln2.w, block.ln2.b) if affine else ())) if cfg.layernorm else x
            pre = m_in @ block.mlp.W_in + block.mlp.b_in
            post = torch.relu(pre) if cfg.act_fn == "relu" else 0.5 * pre * (1 + torch.erf(pre / math.sqrt(2)))
            x = x + post @ block.mlp.W_out + block.mlp.b_out
    if cfg.layernorm:
        x = ln(x, *((model.ln_final.w, model.ln_final.b) if affine else ()))
    return x @ model.W_U + (model.b_U if cfg.biases else 0)


CONFIGS = [
    dict(d_mlp=16),
    dict(d_mlp=16, act_fn="gelu"),
    dict(d_mlp=12, layernorm=True),
    dict(d_mlp=12, layernorm=True, ln_affine=True, act_fn="gelu"),
    dict(d_mlp=12, layernorm=True, ln_affine=True, biases=True),
    dict(layernorm=True, ln_affine=True, biases=True),  # attention-only with learned LayerNorm
]


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_forward_matches_the_written_out_equations(kw):
    model = randomise_norms_and_biases(make(**kw))
    tokens = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(tokens), reference_logits(model, tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_fast_and_hooked_paths_agree_with_mlps(kw):
    model = randomise_norms_and_biases(make(**kw))
    tokens = torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(1))
    grads = []
    for fast in (True, False):
        model.fast_path = fast
        model.zero_grad()
        loss = model(tokens, return_type="loss")
        loss.backward()
        grads.append((loss.detach(), model(tokens).detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, lg1, g1), (l2, lg2, g2) = grads
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lg1, lg2, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_parameter_names_shapes_and_stacks():
    model = make(d_mlp=20, layernorm=True, ln_affine=True, biases=True)
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    for l in range(2):
        assert shapes[f"blocks.{l}.mlp.W_in"] == [8, 20] and shapes[f"blocks.{l}.mlp.b_in"] == [20]
        assert shapes[f"blocks.{l}.mlp.W_out"] == [20, 8] and shapes[f"blocks.{l}.mlp.b_out"] == [8]
        for ln_ in ("ln1", "ln2"):
            assert shapes[f"blocks.{l}.{ln_}.w"] == [8] and shapes[f"blocks.{l}.{ln_}.b"] == [8]
        assert shapes[f"blocks.{l}.attn.b_Q"] == [2, 4]
    assert shapes["ln_final.w"] == [8] and shapes["b_U"] == [13]
    assert list(model.W_in.shape) == [2, 8, 20] and list(model.W_out.shape) == [2, 20, 8]
    assert list(model.b_in.shape) == [2, 20] and list(model.b_out.shape) == [2, 8]
    torch.testing.assert_close(model.W_in[1], model.blocks[1].mlp.W_in)
    with pytest.raises(ValueError, match="no MLPs"):
        make().W_in


def test_mlp_hook_points_exist_only_with_mlps():
    names = make(d_mlp=4).hook_names
    for l in range(2):
        for h in ("hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"):
            assert f"blocks.{l}.{h}" in names
    # forward order: attention, then the middle stream, then the MLP, then the block's output
    i = names.index
    assert i("blocks.0.hook_attn_out") < i("blocks.0.hook_resid_mid") < i("blocks.0.mlp.hook_pre") \
        < i("blocks.0.mlp.hook_post") < i("blocks.0.hook_mlp_out") < i("blocks.0.hook_resid_post")
    assert not any("mlp" in n or "resid_mid" in n for n in make().hook_names)
    model = make(d_mlp=4)
    _, cache = model.run_with_cache(torch.zeros(2, 5, dtype=torch.long))
    assert list(cache["post", 1].shape) == [2, 5, 4] and list(cache["mlp_out", 0].shape) == [2, 5, 8]
    torch.testing.assert_close(cache["resid_mid", 0] + cache["mlp_out", 0], cache["resid_post", 0])
    torch.testing.assert_close(cache["post", 0], torch.relu(cache["pre", 0]))


def test_mlp_init_comes_after_the_attention_weights():
    plain, mlp = make(seed=5), make(seed=5, d_mlp=16, layernorm=True, ln_affine=True, biases=True)
    for name, p in plain.named_parameters():  # same attention weights as the attention-only model
        assert torch.equal(p, dict(mlp.named_parameters())[name]), name
    for l in range(2):
        m = mlp.blocks[l].mlp
        assert (m.b_in == 0).all() and (m.b_out == 0).all() and (mlp.blocks[l].ln2.w == 1).all()
        assert abs(float(m.W_in.detach().std()) - 1 / math.sqrt(8)) < 0.1 and abs(float(m.W_out.detach().std()) - 0.25) < 0.08
    assert not torch.equal(mlp.blocks[0].mlp.W_in, mlp.blocks[1].mlp.W_in)


def test_attention_only_configs_print_and_save_as_before():
    cfg = ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1)
    assert repr(cfg) == ("ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=1, d_head=8, "
                         "positional='learned', layernorm=False, init_std=1.0)")
    assert "d_mlp" not in cfg.to_dict() and ModelConfig.from_dict(cfg.to_dict()) == cfg
    mlp = ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, d_mlp=32, act_fn="gelu")
    assert "d_mlp=32" in repr(mlp) and "act_fn='gelu'" in repr(mlp) and "biases" not in repr(mlp)
    assert ModelConfig.from_dict(mlp.to_dict()) == mlp
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items()}).d_mlp == 0


def test_mlp_model_round_trips_through_a_checkpoint(tmp_path):
    from toylab.training.checkpoint import load_checkpoint, save_checkpoint
    model = randomise_norms_and_biases(make(d_mlp=8, layernorm=True, ln_affine=True, biases=True))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, data_spec={}, train_spec={}, seed=0)
    back = load_checkpoint(path).model
    assert back.cfg == model.cfg
    tokens = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(back(tokens), model(tokens))


@pytest.mark.parametrize("kw, match", [
    (dict(d_mlp=-1), "d_mlp must be an integer >= 0"),
    (dict(d_mlp=2.5), "d_mlp must be an integer >= 0"),
    (dict(d_mlp=4, act_fn="tanh"), "act_fn must be one of"),
    (dict(ln_affine=True), "set layernorm=True as well"),
    (dict(biases=1), "biases must be True or False"),
])
def test_bad_options_are_refused_with_a_sentence(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


# ---------------------------------------------------------------- folding
FOLDABLE = [dict(d_mlp=12, layernorm=True, ln_affine=True), dict(d_mlp=12, layernorm=True, ln_affine=True,
                                                                  biases=True, act_fn="gelu"),
            dict(layernorm=True, ln_affine=True), dict(d_mlp=12, layernorm=True)]


@pytest.mark.parametrize("kw", FOLDABLE, ids=str)
def test_folded_model_gives_the_same_logits_and_log_probs(kw):
    model = randomise_norms_and_biases(make(**kw))
    before = {n: p.clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(3))
    logits = model(tokens)
    folded = fold_layer_norm(model)
    assert folded.cfg.layernorm and not folded.cfg.ln_affine and folded.cfg.biases == (kw.get("biases", False)
                                                                                       or kw.get("ln_affine", False))
    assert not any(n.endswith((".w", ".b")) for n, _ in folded.named_parameters())
    torch.testing.assert_close(folded(tokens), logits, atol=1e-5, rtol=1e-5)
    centred = center_writing_weights(folded)
    torch.testing.assert_close(centred(tokens), logits, atol=1e-5, rtol=1e-5)
    assert centred.W_E.mean(-1).abs().max() < 1e-6
    unembed = center_unembed(centred)
    assert unembed.W_U.mean(-1).abs().max() < 1e-6
    torch.testing.assert_close(unembed(tokens).log_softmax(-1), logits.log_softmax(-1), atol=1e-5, rtol=1e-5)
    shift = unembed(tokens) - logits  # a constant per position
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():  # the input model is untouched
        assert torch.equal(p, before[n]), n


def test_folding_refuses_what_it_cannot_do_exactly():
    with pytest.raises(ValueError, match="no LayerNorm"):
        fold_layer_norm(make(d_mlp=4))
    with pytest.raises(ValueError, match="every reader of the residual stream is a LayerNorm"):
        center_writing_weights(make(d_mlp=4))
    with pytest.raises(ValueError, match="shortformer"):
        fold_layer_norm(make(layernorm=True, ln_affine=True, positional="shortformer"))
    with pytest.raises(TypeError, match="AttnOnlyTransformer"):
        center_unembed(torch.nn.Linear(2, 2))
    # center_unembed is exact for any model, LayerNorm or not
    model = make(d_mlp=4)
    tokens = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(center_unembed(model)(tokens).log_softmax(-1), model(tokens).log_softmax(-1),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- non-finite and meta
@pytest.mark.parametrize("fast", [True, False])
def test_non_finite_logits_warn_once_naming_the_parameters(fast):
    model = make(d_mlp=4)
    model.fast_path = fast
    with torch.no_grad():
        model.W_E[3, 0] = float("nan")
        model.blocks[1].mlp.W_in[0, 0] = float("inf")
    tokens = torch.tensor([[1, 3, 2, 4]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(tokens)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "W_E (1 of 104 values)" in msgs[0] and "blocks.1.mlp.W_in (1 of 32 values)" in msgs[0]
    with torch.no_grad():
        model.blocks[1].mlp.W_in[0, 0] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.tensor([[1, 2, 4]]))  # the NaN row of W_E unused: finite logits, no warning
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_hook_that_writes_nan_gets_a_warning_that_says_the_weights_are_finite():
    model = make(d_mlp=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[("blocks.0.mlp.hook_post",
                                                                 lambda a, hook: a * float("nan"))])
    (w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "every parameter is finite" in str(w.message)


def test_a_model_on_the_meta_device_is_refused_with_a_sentence():
    with torch.device("meta"):
        model = AttnOnlyTransformer(ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, d_mlp=4), seed=None)
    with pytest.raises(ValueError, match="'meta' device, which holds shapes but no values"):
        model(torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- what assumes attention only
def test_weight_readings_refuse_models_with_mlps():
    from toylab.circuits.composition import composition_scores
    from toylab.circuits.copying import copying_scores, direct_copying_scores
    from toylab.circuits.weights import path_expansion, skip_trigram_triples
    model = make(d_mlp=4)
    one = make(d_mlp=4, n_layers=1)
    calls = [lambda: composition_scores(model, "K"), lambda: copying_scores(model, "full"),
             lambda: copying_scores(model, "ov"), lambda: direct_copying_scores(model),
             lambda: path_expansion(model, torch.zeros(1, 3, dtype=torch.long)),
             lambda: skip_trigram_triples(one, k=3)]
    for call in calls:
        with pytest.raises(ValueError, match="assumes an attention-only model, but this one has MLPs"):
            call()


def test_head_report_leaves_the_copying_score_out_for_mlp_models():
    from toylab.circuits.report import head_report
    model = make(d_mlp=4)
    report = head_report(model, torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(0)))
    assert any("MLP model" in n for n in report.notes)


def test_the_mlp_fast_path_is_bit_identical_to_its_hooked_path():
    for act_fn in ("relu", "gelu"):
        model = randomise_norms_and_biases(make(d_mlp=16, act_fn=act_fn, layernorm=True, ln_affine=True))
        x = torch.randn(3, 9, 8, generator=torch.Generator().manual_seed(0))
        block = model.blocks[1]
        assert torch.equal(block.mlp.forward_fast(x), block.mlp(x))
        assert torch.equal(block.ln2.norm(x), block.ln2(x))


def test_shipped_checkpoints_have_no_d_mlp_and_load_attention_only():
    import json
    from pathlib import Path

    from toylab.training.presets import load_model
    meta = json.loads((Path(__file__).resolve().parents[1] / "toylab/models/induction-2l.json").read_text())
    assert "d_mlp" not in json.dumps(meta)
    model = load_model("induction-2l")
    assert model.cfg.d_mlp == 0 and not any("mlp" in n for n in model.hook_names)


def test_weight_decay_reaches_the_mlp_matrices_only():
    from toylab.training.train import is_decayed
    model = make(d_mlp=4, layernorm=True, ln_affine=True, biases=True)
    decayed = sorted(n for n, _ in model.named_parameters() if is_decayed(n))
    assert decayed == sorted(f"blocks.{l}.{m}" for l in range(2) for m in
                             ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out"))


def test_meta_tokens_get_a_sentence_that_does_not_suggest_moving_them():
    with pytest.raises(ValueError, match="tokens are on meta but the model is on cpu: a meta tensor holds "
                                         "shapes but no values"):
        make(d_mlp=4)(torch.zeros(1, 3, dtype=torch.long, device="meta"))


def test_hook_mlp_in_patches_what_the_mlp_reads_and_nothing_else():
    model = randomise_norms_and_biases(make(d_mlp=6, layernorm=True, ln_affine=True))
    tokens = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(0))
    names = model.hook_names
    assert names.index("blocks.0.hook_resid_mid") < names.index("blocks.0.hook_mlp_in") \
        < names.index("blocks.0.mlp.hook_pre")
    _, clean = model.run_with_cache(tokens)
    torch.testing.assert_close(clean["mlp_in", 0], clean["resid_mid", 0])
    seen = {}

    def spy(act, hook):
        seen[hook.name] = act.clone()
    other = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(1))
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_in", lambda a, hook: other),
                                            ("blocks.0.hook_resid_mid", spy), ("blocks.0.hook_mlp_out", spy),
                                            ("blocks.0.hook_resid_post", spy)])
    torch.testing.assert_close(seen["blocks.0.hook_resid_mid"], clean["resid_mid", 0])  # the stream is untouched
    torch.testing.assert_close(seen["blocks.0.hook_mlp_out"], model.blocks[0].mlp(model.blocks[0].ln2(other)))
    torch.testing.assert_close(seen["blocks.0.hook_resid_post"],
                               clean["resid_mid", 0] + seen["blocks.0.hook_mlp_out"])
