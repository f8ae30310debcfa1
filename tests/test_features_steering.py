"""Steering: the exact logit shift after the last layer, vectors from prompts, SAEs and weights."""

import pytest
import torch

from toylab.data import InductionData, repeated_tokens
from toylab.features.sae import ReluSAE
from toylab.features.steering import (predicted_logit_shift, run_with_steering, vector_from_prompts,
                                      vector_from_sae, vector_from_weights)
from toylab.training.presets import load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def tokens():
    return InductionData(d_vocab=128, n_ctx=32).sample(8, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_attn_out"])
def test_predicted_equals_observed_after_the_last_layer(model, tokens, hook):
    v = vector_from_weights(model, 17, head=(0, 0))
    # the baseline runs through the same (hooked) code path, so untouched positions agree bit for bit
    clean = run_with_steering(model, tokens, hook, v, coeff=0.0)
    with torch.no_grad():
        torch.testing.assert_close(clean, model(tokens), atol=1e-4, rtol=1e-4)
    steered = run_with_steering(model, tokens, hook, v, coeff=2.5, from_pos=10)
    shift = steered - clean
    predicted = predicted_logit_shift(model, hook, v, coeff=2.5)
    torch.testing.assert_close(shift[:, 10:], predicted.expand_as(shift[:, 10:]), atol=1e-4, rtol=1e-4)
    assert float(shift[:, :10].abs().max()) == 0.0, "positions before from_pos must be untouched"


def test_earlier_hooks_have_no_exact_formula(model, tokens):
    v = vector_from_weights(model, 5)
    with pytest.raises(ValueError, match="softmax"):
        predicted_logit_shift(model, "blocks.0.hook_resid_post", v)
    # and indeed the observed shift is not c v W_U there (attention moves it)
    with torch.no_grad():
        clean = model(tokens)
    shift = run_with_steering(model, tokens, "blocks.0.hook_resid_post", v, coeff=3.0) - clean
    naive = 3.0 * (v @ model.W_U.detach())
    assert float((shift - naive).abs().max()) > 1e-2


def test_steering_the_query_token_redirects_induction(model):
    """At the last position of [BOS, r, r] add 2 W_E[A] (A = r_5) to layer 1's input: the induction
    head now looks for A, finds the key whose previous token is A, and copies what followed A."""
    toks = repeated_tokens(128, 15, 16, torch.Generator().manual_seed(1))
    p, a_pos = toks.shape[1] - 1, 5
    with torch.no_grad():
        base = model(toks)
    gains, hits = [], 0
    for b in range(toks.shape[0]):
        v = vector_from_weights(model, int(toks[b, a_pos]))
        steered = run_with_steering(model, toks[b:b + 1], "blocks.0.hook_resid_post", v, coeff=2.0, from_pos=p)
        target = int(toks[b, a_pos + 1])
        gains.append(float(steered[0, p, target] - base[b, p, target]))
        hits += int(steered[0, p].argmax()) == target
    assert min(gains) > 0, f"the logit of the token after A should rise everywhere, got {gains}"
    assert hits >= 10, f"the steered model should predict the token after A in most sequences, got {hits}/16"


def test_vectors(model):
    a = repeated_tokens(128, 5, 4, torch.Generator().manual_seed(2))
    b = repeated_tokens(128, 5, 4, torch.Generator().manual_seed(3))
    v = vector_from_prompts(model, "blocks.0.hook_resid_pre", a, b)
    torch.testing.assert_close(v, model.W_E[a[:, -1]].mean(0) - model.W_E[b[:, -1]].mean(0))
    sae = ReluSAE(64, 8)
    with torch.no_grad():
        sae.input_scale.fill_(2.0)
    f = torch.zeros(1, 8)
    f[0, 3] = 1.0
    torch.testing.assert_close(vector_from_sae(sae, 3), sae.decode(f)[0] - sae.decode(torch.zeros(1, 8))[0])


def test_bad_inputs(model, tokens):
    with pytest.raises(ValueError, match="d_model=64"):
        run_with_steering(model, tokens, "blocks.1.hook_resid_post", torch.zeros(63))
    with pytest.raises(KeyError, match="unknown hook"):
        run_with_steering(model, tokens, "blocks.3.hook_resid_post", torch.zeros(64))
    with pytest.raises(ValueError, match="residual hooks"):
        run_with_steering(model, tokens, "blocks.0.attn.hook_pattern", torch.zeros(64))
    with pytest.raises(ValueError, match="from_pos"):
        run_with_steering(model, tokens, "blocks.1.hook_resid_post", torch.zeros(64), from_pos=-1)
    with pytest.raises(ValueError, match="latent"):
        vector_from_sae(ReluSAE(64, 8), 8)
    with pytest.raises(ValueError, match="token"):
        vector_from_weights(model, 128)


def test_a_window_of_positions_and_one_vector_per_sequence(model, tokens):
    """``to_pos`` ends the window; a ``[batch, d_model]`` vector steers each sequence with its own row,
    exactly as steering the sequences one at a time does."""
    hook = "blocks.1.hook_resid_post"
    v = vector_from_weights(model, 9)
    clean = run_with_steering(model, tokens, hook, v, coeff=0.0)
    shift = run_with_steering(model, tokens, hook, v, coeff=1.5, from_pos=4, to_pos=7) - clean
    torch.testing.assert_close(shift[:, 4:7], predicted_logit_shift(model, hook, v, 1.5).expand(8, 3, -1),
                               atol=1e-4, rtol=1e-4)
    assert float(shift[:, :4].abs().max()) == 0.0 and float(shift[:, 7:].abs().max()) == 0.0
    V = torch.stack([vector_from_weights(model, int(t), head=(0, 0)) for t in tokens[:, -1]])
    early = "blocks.0.hook_resid_post"
    together = run_with_steering(model, tokens, early, V, coeff=2.0, from_pos=5, to_pos=6)
    for i in range(tokens.shape[0]):
        alone = run_with_steering(model, tokens[i:i + 1], early, V[i], coeff=2.0, from_pos=5, to_pos=6)
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one steering vector per sequence"):
        run_with_steering(model, tokens[:3], early, V)
    with pytest.raises(ValueError, match="to_pos"):
        run_with_steering(model, tokens, early, v, from_pos=5, to_pos=5)
    with pytest.raises(ValueError, match=r"\[batch, 64\]"):
        run_with_steering(model, tokens, early, torch.zeros(2, 3, 64))
