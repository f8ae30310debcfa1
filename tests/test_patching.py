"""Activation patching, batched sweeps and path patching on the shipped induction-2l model.

clean = [BOS, r, r], corrupted = [BOS, r', r'] with an independent r' (same shape); metrics score
the clean next tokens on the repeated copy.
"""

import pytest
import torch

from toylab.data import repeated_tokens
from toylab.causal.interventions import make_metric
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.causal.patching import patch, patch_sweep, path_patch
from toylab.training.presets import load_model

H = 15
SECOND = list(range(1 + H, 2 * H))  # logit positions that predict the repeated copy


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(31)
    return repeated_tokens(128, H, 24, g), repeated_tokens(128, H, 24, g)


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("name", ["logprob", "prob", "logit_diff", "rank"])
def test_denoising_induction_heads_restores_clean(model, pair, name):
    clean, corr = pair
    metric = make_metric(name, clean, positions=SECOND, incorrect_tokens=corr)
    both = patch(model, clean, corr, "z", metric, layer=1)  # layer 1 = heads L1H0 and L1H1
    only = [patch(model, clean, corr, "z", metric, layer=1, head=h) for h in (0, 1)]
    print(f"denoise z of 1.0+1.1 ({name}): {both:.4f}; 1.0 alone {only[0]:.3f}, 1.1 alone {only[1]:.3f}")
    assert both >= 0.8
    # the normalised metric is exactly 0 / 1 for the corrupted / clean run
    with torch.no_grad():
        mc, mr = float(metric(model(clean))), float(metric(model(corr)))
    assert patch(model, clean, corr, "z", metric, layer=1, normalise=False) != mr
    assert (mr - mr) / (mc - mr) == 0.0 and (mc - mr) / (mc - mr) == 1.0
    # patching the whole input stream reproduces the other run
    assert patch(model, clean, corr, "hook_embed", metric) == pytest.approx(1.0, abs=1e-5)
    assert patch(model, clean, corr, "hook_embed", metric, direction="noise") == pytest.approx(0.0, abs=1e-5)
    assert no_hooks(model)


def test_batched_sweep_matches_naive_and_single_patches(model, pair):
    clean, corr = pair[0][:6], pair[1][:6]
    metric = make_metric("logprob", clean, positions=SECOND)
    vals, labels = patch_sweep(model, clean, corr, metric)
    naive, _ = patch_sweep(model, clean, corr, metric, cells_per_pass=1)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1"] and vals.shape == (4, 1 + 2 * H)
    torch.testing.assert_close(vals, naive, rtol=0, atol=1e-4)
    for (l, h), p in [((0, 0), 3), ((1, 1), 20), ((1, 0), 25)]:
        one = patch(model, clean, corr, f"blocks.{l}.attn.hook_z", metric, head=h, position=p)
        assert vals[2 * l + h, p].item() == pytest.approx(one, abs=1e-4)
    # a hand-written patch of one cell agrees
    _, cc = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")

    def by_hand(act, hook):
        act = act.clone()
        act[:, 20, 1] = cc["z", 1][:, 20, 1]
        return act
    with torch.no_grad():
        m_hand = float(metric(model.run_with_hooks(corr, fwd_hooks=[("blocks.1.attn.hook_z", by_hand)])))
        mc, mr = float(metric(model(clean))), float(metric(model(corr)))
    assert vals[3, 20].item() == pytest.approx((m_hand - mr) / (mc - mr), abs=1e-5)
    # denoising 1.1 at one position of the repeated copy helps; position 0 (BOS) never matters
    assert vals[3, 1 + H + 5] > 0.01 and vals[:, 0].abs().max() < 1e-4
    noise, _ = patch_sweep(model, clean, corr, metric, direction="noise", per_position=False)
    assert noise.shape == (4,) and noise[0] < 0.9  # 0.0 is necessary
    resid, rlabels = patch_sweep(model, clean, corr, metric, hook="resid_pre", per_head=False)
    assert rlabels == ["L0", "L1"] and resid.shape == (2, 1 + 2 * H)
    with pytest.raises(ValueError, match="head axis"):
        patch_sweep(model, clean, corr, metric, hook="resid_pre")
    assert no_hooks(model)


def test_pattern_cells(model, pair):
    """The corrupted [BOS, r', r'] has the same attention *structure* as the clean run: putting layer 1's
    corrupted patterns into the clean run changes little, while its corrupted outputs undo the induction."""
    clean, corr = pair
    metric = make_metric("logprob", clean, positions=SECOND)
    pat = patch(model, clean, corr, "pattern", metric, layer=1, direction="noise")
    z = patch(model, clean, corr, "z", metric, layer=1, direction="noise")
    print(f"noising layer 1: patterns {pat:.3f}, z {z:.3f}")
    assert pat > 0.9 and z < 0.1


def test_path_patching_previous_token_head_acts_through_keys(model, pair):
    clean, corr = pair
    out = {}
    for name in ("logprob", "prob"):
        metric = make_metric(name, clean, positions=SECOND)
        total = 1 - patch(model, clean, corr, "z", metric, layer=0, head=0, direction="noise")
        row = {"sender total": total}
        for recv, tag in (((1, 1), "L1H1"), ([(1, 0), (1, 1)], "L1H0+L1H1")):
            for inp in "qkv":
                row[f"{tag}.{inp}"] = (1 - path_patch(model, clean, corr, (0, 0), recv, inp, metric)) / total
        out[name] = row
        print(f"path patching L0H0 -> (fraction of L0H0's total effect, {name}):",
              {k: round(v, 3) for k, v in row.items()})
    lp = out["logprob"]
    assert lp["L1H0+L1H1.k"] > 0.8  # keys carry most of the effect
    assert lp["L1H0+L1H1.q"] < 0.3 and abs(lp["L1H0+L1H1.v"]) < 0.05
    assert lp["L1H1.k"] > 3 * max(lp["L1H1.q"], abs(lp["L1H1.v"]))
    assert out["prob"]["L1H0+L1H1.k"] > 0.9 and out["prob"]["L1H1.q"] < 0.05 and abs(out["prob"]["L1H1.v"]) < 0.05
    assert no_hooks(model)


@pytest.mark.parametrize("positional,layernorm", [("shortformer", False), ("learned", True), ("none", False)])
def test_path_patching_recomputes_the_receiver_input_exactly(positional, layernorm):
    """With corrupted == clean, the recomputed q/k/v must equal the model's own: no change."""
    cfg = ModelConfig(d_vocab=20, n_ctx=12, d_model=16, n_layers=3, n_heads=2, positional=positional,
                      layernorm=layernorm)
    m = AttnOnlyTransformer(cfg, seed=5)
    toks = torch.randint(1, 20, (3, 10), generator=torch.Generator().manual_seed(0))
    metric = make_metric("logprob", toks)
    with torch.no_grad():
        want = float(metric(m(toks)))
    for inp in "qkv":
        got = path_patch(m, toks, toks, (0, 1), [(1, 0), (2, 1)], inp, metric, normalise=False)
        assert got == pytest.approx(want, abs=1e-5)


def test_patching_bad_input_leaves_no_hooks(model, pair):
    clean, corr = pair
    metric = make_metric("logprob", clean, positions=SECOND)
    cases = [
        (ValueError, "same shape", lambda: patch(model, clean, corr[:, :20], "z", metric, layer=0)),
        (ValueError, "same shape", lambda: patch_sweep(model, clean, corr[:5], metric)),
        (ValueError, "position", lambda: patch(model, clean, corr, "z", metric, layer=0, head=0, position=31)),
        (ValueError, "position -40 is out of range", lambda: patch(model, clean, corr, "z", metric, layer=0,
                                                                   position=-40)),
        (KeyError, "hook", lambda: patch(model, clean, corr, "blocks.0.attn.hook_mlp", metric)),
        (ValueError, "layer 5 is out of range", lambda: patch(model, clean, corr, "z", metric, layer=5)),
        (KeyError, "unknown activation", lambda: patch_sweep(model, clean, corr, metric, hook="mlp_hidden")),
        # a TransformerLens name this attention-only model lacks
        (KeyError, r"no hook point named 'blocks.0.hook_mlp_out': this model has no MLPs \(d_mlp=0\)",
         lambda: patch_sweep(model, clean, corr, metric, hook="mlp_out")),
        (ValueError, "unknown metric", lambda: patch(model, clean, corr, "z", "accuracy", layer=0)),
        (ValueError, "head", lambda: patch(model, clean, corr, "z", metric, layer=0, head=2)),
        (ValueError, "no head dimension", lambda: patch(model, clean, corr, "resid_pre", metric, layer=0, head=0)),
        (ValueError, "out of range", lambda: path_patch(model, clean, corr, (0, 3), (1, 1), "k", metric)),
        (ValueError, "out of range", lambda: path_patch(model, clean, corr, (0, 0), (2, 1), "k", metric)),
        (ValueError, "later layer", lambda: path_patch(model, clean, corr, (1, 0), (1, 1), "k", metric)),
        (ValueError, "receiver_input", lambda: path_patch(model, clean, corr, (0, 0), (1, 1), "o", metric)),
        (ValueError, "direction", lambda: patch(model, clean, corr, "z", metric, layer=0, direction="up")),
        (ValueError, "metric", lambda: patch(model, clean, corr, "z", lambda lg: lg[:3].sum() * 0 +
                                             make_metric("prob", clean[:3])(lg), layer=0)),
    ]
    for exc, match, fn in cases:
        with pytest.raises(exc, match=match):
            fn()
        assert no_hooks(model), match
