"""The known dictionaries inside the lab's models, and SAEs scored against them."""

import pytest
import torch

from toylab.data import InductionData
from toylab.features.ground_truth import random_init_control, true_features
from toylab.features.metrics import mcc, mmcs
from toylab.features.sae import ReluSAE
from toylab.features.train_sae import gather_activations, train_sae
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def tokens():
    return InductionData(d_vocab=128, n_ctx=32).sample(16, torch.Generator().manual_seed(0))


def test_families_reproduce_the_activations_exactly(model, tokens):
    _, cache = model.run_with_cache(tokens)
    tf = true_features(model, "blocks.0.hook_resid_pre")
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], tf["token"][tokens])
    torch.testing.assert_close(cache["hook_embed"], true_features(model, "hook_embed")["token"][tokens])
    pattern = cache["blocks.0.attn.hook_pattern"]  # [b, h, q, k]
    ov = true_features(model, "blocks.0.hook_attn_out")
    rebuilt = sum(torch.einsum("bqk,bkd->bqd", pattern[:, h], ov[f"ov_L0H{h}"][tokens]) for h in range(2))
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], rebuilt, atol=1e-5, rtol=1e-5)
    for h in range(2):
        v = true_features(model, "blocks.0.attn.hook_z", head=h)[f"v_L0H{h}"]
        torch.testing.assert_close(cache["blocks.0.attn.hook_z"][:, :, h],
                                   torch.einsum("bqk,bkd->bqd", pattern[:, h], v[tokens]), atol=1e-5, rtol=1e-5)
    post = true_features(model, "blocks.0.hook_resid_post")
    assert sorted(post) == ["ov_L0H0", "ov_L0H1", "token"]
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], tf["token"][tokens] + rebuilt, atol=1e-5,
                               rtol=1e-5)


def test_refusals(model):
    with pytest.raises(ValueError, match="compose"):
        true_features(model, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="head=h"):
        true_features(model, "blocks.0.attn.hook_z")
    with pytest.raises(KeyError, match="unknown hook"):
        true_features(model, "blocks.5.hook_resid_pre")
    ln = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=8, n_layers=1, layernorm=True,
                                         positional="shortformer"))
    with pytest.raises(ValueError, match="LayerNorm"):
        true_features(ln, "hook_embed")
    learned = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=8, n_layers=1, positional="learned"))
    assert true_features(learned, "hook_embed")["token"].shape == (16, 8)  # before W_pos is added
    with pytest.raises(ValueError, match="learned positions"):
        true_features(learned, "blocks.0.hook_resid_pre")


def test_random_init_control_is_untrained(model):
    ctrl = random_init_control(model, seed=3)
    assert ctrl.cfg == model.cfg and not torch.equal(ctrl.W_E, model.W_E)
    torch.testing.assert_close(ctrl.W_E, AttnOnlyTransformer(model.cfg, seed=3).W_E)


def _sae_on(model, tokens, steps):
    acts = gather_activations(model, "blocks.0.hook_resid_pre", tokens)
    sae = ReluSAE(64, 256, l1_coefficient=3.0, seed=0)
    train_sae(sae, acts, steps=steps, batch_size=1024, lr=3e-3, seed=0, resample_every=100, progress=False)
    return sae


@pytest.fixture(scope="module")
def sae_tokens():
    return InductionData(d_vocab=128, n_ctx=32).sample(1000, torch.Generator().manual_seed(1))


def test_sae_recovers_the_token_directions(model, sae_tokens):
    """127 token directions (BOS occurs only at the skipped position 0) in 64 dimensions, one active
    per position: an SAE on 31k activations finds them."""
    truth = true_features(model, "blocks.0.hook_resid_pre")["token"][1:]
    sae = _sae_on(model, sae_tokens, steps=600)
    score = mcc(sae.directions(), truth)
    assert score >= 0.95, f"MCC {score:.3f} against the 127 token directions"
    assert mmcs(sae.directions(), truth) >= score - 1e-12


def test_random_init_control_matches_worse(model, sae_tokens):
    """The same recipe on the untrained control's activations matches the trained W_E far worse
    (the control's own embedding is a token dictionary too, and the SAE finds that one)."""
    truth = true_features(model, "blocks.0.hook_resid_pre")["token"][1:]
    ctrl = random_init_control(model, seed=1)
    ctrl_sae = _sae_on(ctrl, sae_tokens, steps=600)
    ctrl_score = mcc(ctrl_sae.directions(), truth)
    assert ctrl_score < 0.6, f"control MCC {ctrl_score:.3f} against the trained model's token directions"
    assert mcc(ctrl_sae.directions(), ctrl.W_E.detach()[1:]) > 0.9


@pytest.mark.slow
def test_topk_sae_after_layer_0_recovers_the_previous_token_family(model, sae_tokens):
    """After layer 0 every position holds two known features: its token (W_E) and what the
    previous-token head wrote (W_E[t_{p-1}] W_OV of that head). A TopK SAE with k = 2 finds the
    second family; on the random-init control the same family (from its own weights) is not found."""
    from toylab.features.topk import TopKSAE
    from toylab.circuits.scores import head_detector_scores
    scores = {}
    for name, mdl in (("trained", model), ("control", random_init_control(model, seed=1))):
        head = int(head_detector_scores(mdl, sae_tokens[:64])["previous_token"][0].argmax())
        acts = gather_activations(mdl, "blocks.0.hook_resid_post", sae_tokens)
        sae = TopKSAE(64, 320, k=2, seed=0)  # 254 true directions (2 x 127) and some spare latents
        train_sae(sae, acts, steps=500, batch_size=1024, seed=0, resample_every=100, progress=False)
        scores[name] = mcc(sae.directions(), true_features(mdl, "blocks.0.hook_resid_post")[f"ov_L0H{head}"][1:])
    # measured: 0.96 on the first shipped model, 0.94 on the retrained one (31k activations, 500 steps;
    # 0.998 with 100k activations and 1000 steps); the control's own family about 0.47
    assert scores["trained"] >= 0.9, scores
    assert scores["control"] < scores["trained"] - 0.2, scores
