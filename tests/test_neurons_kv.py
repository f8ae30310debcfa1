"""The key-value view of neurons on a hand-built model whose answer is known.

One layer, one-hot embeddings (W_E = I), attention switched off (W_O = 0), W_U = I.
Neuron n has key e_n (W_in = 2 I, b_in = -1: pre-activation +1 on token n, -1 on any
other token) and value e_{(n+1) % V} (W_out = a cyclic shift): it fires on token n
only and raises the logit of token n + 1 only.
"""

import pytest
import torch

from toylab.causal.attribution import neuron_dla
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.neurons.kv import neuron_keys, neuron_values, top_activations, top_tokens

V = 6


def hand_built(**kw):
    cfg = ModelConfig(d_vocab=V, n_ctx=8, d_model=V, n_layers=1, n_heads=1, positional="none", d_mlp=V, **kw)
    model = AttnOnlyTransformer(cfg, seed=0)
    shift = torch.roll(torch.eye(V), 1, dims=1)  # row n = e_{(n+1) % V}
    with torch.no_grad():
        model.W_E.copy_(torch.eye(V))
        model.blocks[0].attn.W_O.zero_()
        model.blocks[0].mlp.W_in.copy_(2 * torch.eye(V))
        model.blocks[0].mlp.b_in.fill_(-1.0)
        model.blocks[0].mlp.W_out.copy_(shift)
        model.W_U.copy_(torch.eye(V))
    return model


def test_keys_values_and_top_tokens_are_the_planted_ones():
    model = hand_built()
    keys = neuron_keys(model, 0)
    assert keys.shape == (V, V)
    torch.testing.assert_close(keys, 2 * torch.eye(V) - 1)
    _, fire = top_tokens(keys.T, k=1)
    assert fire[:, 0].tolist() == list(range(V))  # neuron n is fired by token n
    values = neuron_values(model, 0)
    _, raised = top_tokens(values, k=1)
    assert raised[:, 0].tolist() == [(n + 1) % V for n in range(V)]  # and raises token n + 1
    lowest, _ = top_tokens(values, k=V - 1, largest=False)
    assert (lowest == 0).all()  # every other logit is untouched


def test_the_hand_built_model_predicts_the_next_token_through_its_neurons():
    model = hand_built()
    with torch.no_grad():  # the residual stream is e_t + value: a value of 2 beats the direct path's 1
        model.blocks[0].mlp.W_out.mul_(2.0)
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1]])
    assert model(tokens).argmax(-1).tolist() == [[(t + 1) % V for t in tokens[0].tolist()]]


def test_top_activations_find_the_positions_of_the_key_token():
    model = hand_built()
    tokens = torch.randint(0, V, (20, 8), generator=torch.Generator().manual_seed(0))
    top = top_activations(model, tokens, 0, neurons=[2, 4], k=5)
    assert top.values.shape == (2, 5) and (top.values == 1).all()
    assert (top.token[0] == 2).all() and (top.token[1] == 4).all()
    assert (tokens[top.batch, top.pos] == top.token).all()
    ctx = top.contexts(tokens, 0, before=2)
    assert all(c[-1] == 2 and len(c) <= 3 for c in ctx)
    pre = top_activations(model, tokens, 0, k=3, hook="pre")
    assert pre.values.shape == (V, 3) and (pre.values == 1).all()


def test_neuron_dla_credits_the_neuron_of_the_current_token():
    model = hand_built()
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1]])  # every next token is current + 1
    dla = neuron_dla(model, tokens, 0)
    for p in range(7):
        n = int(tokens[0, p])
        assert float(dla.attrs[n, 0, p]) == pytest.approx(1.0)  # activation 1 x value 1
        others = [m for m in range(V) if m != n]
        assert (dla.attrs[others, 0, p] == 0).all()


def test_keys_and_values_with_layernorm_keep_the_planted_rankings():
    model = hand_built(layernorm=True)
    _, fire = top_tokens(neuron_keys(model, 0).T, k=1)
    assert fire[:, 0].tolist() == list(range(V))
    _, raised = top_tokens(neuron_values(model, 0), k=1)
    assert raised[:, 0].tolist() == [(n + 1) % V for n in range(V)]


def test_the_neuron_view_refuses_what_does_not_apply():
    plain = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=8, d_model=V, n_layers=1), seed=0)
    for call in (lambda: neuron_keys(plain, 0), lambda: neuron_values(plain, 0)):
        with pytest.raises(ValueError, match="no MLPs"):
            call()
    model = hand_built()
    with pytest.raises(ValueError, match="positional='none'"):
        neuron_keys(model, 0, source="positions")
    with pytest.raises(ValueError, match="source must be"):
        neuron_keys(model, 0, source="heads")
    with pytest.raises(ValueError, match="layer 1 is out of range"):
        neuron_values(model, 1)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 6\]"):
        top_activations(model, tokens, 0, k=7)
    with pytest.raises(ValueError, match="neuron 6 is out of range"):
        top_activations(model, tokens, 0, neurons=[6])
    with pytest.raises(ValueError, match="k must be an integer"):
        top_tokens(torch.zeros(3, 4), k=5)
