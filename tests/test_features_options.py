"""The keyword options of the feature metrics: |cos| matching, BOS-free families,
and CE loss recovered with position 0 left clean."""

import pytest
import torch

from toylab.features import metrics
from toylab.features.ground_truth import true_features
from toylab.features.sae import ReluSAE
from toylab.model import AttnOnlyTransformer, ModelConfig


def test_absolute_counts_a_flipped_latent_as_a_match():
    true = torch.eye(4)
    learned = torch.cat([-torch.eye(4)[:2], torch.eye(4)[2:]])   # two flipped
    assert metrics.mcc(learned, true) == pytest.approx(0.5)   # matched to 0s
    assert metrics.mcc(learned, true, absolute=True) == pytest.approx(1.0)
    assert metrics.mmcs(learned, true) == pytest.approx(0.5)      # best is 0 or 1
    assert metrics.mmcs(learned, true, absolute=True) == pytest.approx(1.0)


def test_absolute_changes_nothing_when_every_cosine_is_positive():
    g = torch.Generator().manual_seed(0)
    true = torch.rand(5, 8, generator=g)
    learned = torch.rand(9, 8, generator=g)
    assert metrics.mcc(learned, true, absolute=True) == metrics.mcc(learned, true)
    assert metrics.mmcs(learned, true, absolute=True) == metrics.mmcs(learned, true)


def test_absolute_must_be_a_bool():
    with pytest.raises(TypeError, match="absolute"):
        metrics.mcc(torch.eye(3), torch.eye(3), absolute=1)
    with pytest.raises(TypeError, match="absolute"):
        metrics.mmcs(torch.eye(3), torch.eye(3), absolute="yes")


def _model():
    cfg = ModelConfig(d_vocab=12, n_ctx=8, d_model=16, n_heads=2, d_head=8, n_layers=2,
                      positional="shortformer")
    return AttnOnlyTransformer(cfg, seed=0).eval()


def test_true_features_without_bos_drops_row_0_of_every_family():
    model = _model()
    hook = "blocks.0.hook_resid_post"
    full = true_features(model, hook)
    short = true_features(model, hook, include_bos=False)
    assert sorted(full) == sorted(short)
    for name in full:
        assert torch.equal(short[name], full[name][1:])
    with pytest.raises(TypeError, match="include_bos"):
        true_features(model, hook, include_bos=0)


def test_ce_loss_recovered_skip_first_leaves_position_0_clean():
    model = _model()
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(1, 12, (6, 8), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 0
    sae = ReluSAE(16, 32, l1_coefficient=1.0, seed=0)
    a = metrics.ce_loss_recovered(model, sae, hook, tokens)
    b = metrics.ce_loss_recovered(model, sae, hook, tokens, skip_first=True)
    assert a["clean"] == b["clean"]
    assert a["sae"] != b["sae"] and a["ablated"] != b["ablated"]
    # by hand: splice rows 1.. only, zero rows 1.. only

    def splice(act, hook):
        out = act.clone()
        out[:, 1:] = sae(act[:, 1:].reshape(-1, 16)).reshape(out[:, 1:].shape)
        return out

    def zero(act, hook):
        out = act.clone()
        out[:, 1:] = 0
        return out

    spliced = float(model.run_with_hooks(tokens, [(hook, splice)], return_type="loss"))
    ablated = float(model.run_with_hooks(tokens, [(hook, zero)], return_type="loss"))
    assert b["sae"] == pytest.approx(spliced, abs=1e-6)
    assert b["ablated"] == pytest.approx(ablated, abs=1e-6)
    with pytest.raises(TypeError, match="skip_first"):
        metrics.ce_loss_recovered(model, sae, hook, tokens, skip_first=None)
