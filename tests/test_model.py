"""The model computes exactly the attention-only transformer of the paper."""

import math

import pytest
import torch

from toylab.model import AttnOnlyTransformer, ModelConfig, next_token_loss
from toylab.training.optim import AdamW


def make(n_layers=2, positional="learned", **kw):
    cfg = ModelConfig(d_vocab=kw.pop("d_vocab", 11), n_ctx=kw.pop("n_ctx", 9), d_model=kw.pop("d_model", 8),
                      n_layers=n_layers, n_heads=kw.pop("n_heads", 2), positional=positional, **kw)
    return AttnOnlyTransformer(cfg, seed=3)


def reference_logits(model, tokens):
    """The paper's equations, written with explicit loops over heads and positions."""
    cfg = model.cfg
    B, T = tokens.shape
    x = model.W_E[tokens].clone()
    pos = model.W_pos[:T] if cfg.positional != "none" else torch.zeros(T, cfg.d_model)
    if cfg.positional == "learned":
        x = x + pos
    for block in model.blocks:
        a = block.attn
        out = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            qk_in = x + pos if cfg.positional == "shortformer" else x
            q, k, v = qk_in @ a.W_Q[h], qk_in @ a.W_K[h], x @ a.W_V[h]
            for b in range(B):
                for i in range(T):
                    s = torch.stack([q[b, i] @ k[b, j] for j in range(i + 1)]) / math.sqrt(cfg.d_head)
                    w = torch.softmax(s, 0)
                    out[b, i] += sum(w[j] * v[b, j] for j in range(i + 1)) @ a.W_O[h]
        x = x + out
    return x @ model.W_U


@pytest.mark.parametrize("positional", ["none", "learned", "shortformer"])
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_forward_matches_reference(n_layers, positional):
    model = make(n_layers, positional)
    tokens = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 7, 11)
    torch.testing.assert_close(logits, reference_logits(model, tokens), atol=1e-5, rtol=1e-5)


def test_parameter_names_and_shapes():
    model = make(2, "learned", d_model=8, n_heads=2)
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "W_E": [11, 8], "W_pos": [9, 8], "W_U": [8, 11],
        **{f"blocks.{l}.attn.{w}": [2, 8, 4] for l in range(2) for w in ("W_Q", "W_K", "W_V")},
        **{f"blocks.{l}.attn.W_O": [2, 4, 8] for l in range(2)},
    }
    assert list(model.W_Q.shape) == [2, 2, 8, 4] and list(model.W_O.shape) == [2, 2, 4, 8]
    assert "W_pos" not in dict(make(1, "none").named_parameters())


def test_causal():
    model = make(2)
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 9, 0]])
    torch.testing.assert_close(model(a)[:, :3], model(b)[:, :3])
    assert not torch.allclose(model(a)[:, 3:], model(b)[:, 3:])


def test_shortformer_values_see_tokens_only():
    model = make(1, "shortformer")
    _, cache = model.run_with_cache(torch.tensor([[4, 4, 4, 4]]))
    v = cache["v", 0][0]  # [pos, n_heads, d_head]: the same token at every position
    torch.testing.assert_close(v, v[:1].expand_as(v))
    _, cache = make(1, "learned").run_with_cache(torch.tensor([[4, 4, 4, 4]]))
    assert not torch.allclose(cache["v", 0][0, 0], cache["v", 0][0, 1])


def test_layernorm_option_runs_and_differs():
    plain, normed = make(2), make(2, layernorm=True)
    tokens = torch.tensor([[1, 2, 3]])
    assert not torch.allclose(plain(tokens), normed(tokens))
    assert "blocks.0.ln1.hook_normalized" in normed.hook_names


def test_seed_fixes_weights():
    a, b, c = make(2), make(2), AttnOnlyTransformer(make(2).cfg, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_E, c.W_E)


def test_loss_is_next_token_cross_entropy():
    model = make(1)
    tokens = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    logits, loss = model(tokens, return_type="both")
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, manual)
    assert model(tokens, return_type="loss_per_token").shape == (2, 3)
    torch.testing.assert_close(next_token_loss(logits, tokens).mean(), manual)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=10, n_heads=3), "not divisible"),
        (dict(d_model=8, n_heads=2, d_head=3), "must equal d_model"),
        (dict(positional="rotary"), "unknown positional mode"),
        (dict(d_vocab=0), "d_vocab must be a positive integer"),
        (dict(n_layers=-1), "n_layers must be an integer >= 0"),
        (dict(n_ctx=2.5), "n_ctx must be a positive integer"),
        (dict(init_std=0), "init_std"),
    ],
)
def test_config_rejects_inconsistent_sizes(kwargs, match):
    base = dict(d_vocab=11, n_ctx=9, d_model=8, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **kwargs})


def test_config_round_trip_and_unknown_field():
    cfg = make(2, "shortformer").cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "mlp": True})


@pytest.mark.parametrize(
    "tokens, error, match",
    [
        (torch.tensor([[1, 2, 11]]), ValueError, r"token id 11 is out of range: ids must be in \[0, 11\)"),
        (torch.tensor([[1, -1]]), ValueError, "token id -1 is out of range"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "integer ids"),
        (torch.zeros(1, 10, dtype=torch.long), ValueError, "longer than the model's n_ctx = 9"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "empty"),
        (torch.zeros(2, 2, 2, dtype=torch.long), ValueError, r"\[batch, pos\]"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_tokens_are_clear_errors(tokens, error, match):
    with pytest.raises(error, match=match):
        make(1)(tokens)


def test_single_sequence_accepted():
    model = make(1)
    torch.testing.assert_close(model(torch.tensor([1, 2, 3])), model(torch.tensor([[1, 2, 3]])))


def test_unknown_return_type():
    with pytest.raises(ValueError, match="unknown return_type"):
        make(1)(torch.tensor([[1, 2]]), return_type="probs")


# ---- the fused fast path (used only when no hook is attached) against the hooked reference ----

def _loss_and_grads(model, tokens):
    loss = model(tokens, return_type="loss")  # the fast path unembeds only the positions with a target
    logits = model(tokens)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)  # 0L shortformer: W_pos unused
    per_token = torch.stack([model(tokens, return_type="loss_per_token"), model(tokens, return_type="both")[0]
                             .log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).neg()])
    return (logits.detach(), per_token.detach()), [torch.zeros_like(p) if g is None else g
                                                   for p, g in zip(model.parameters(), grads)]


@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("positional", ["none", "learned", "shortformer"])
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_fast_and_hooked_paths_agree_on_logits_losses_and_gradients(n_layers, positional, layernorm):
    model = make(n_layers, positional, layernorm=layernorm, d_model=16)
    tokens = torch.randint(0, 11, (5, 9), generator=torch.Generator().manual_seed(0))
    assert model.fast_path and not model.any_hooks()
    fast_out, fast_grads = _loss_and_grads(model, tokens)
    model.fast_path = False
    ref_out, ref_grads = _loss_and_grads(model, tokens)
    # float32 with a different summation order: a few ulps of values of order 1
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)
    for (name, _), g_fast, g_ref in zip(model.named_parameters(), fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_fast_path_matches_the_paper_reference():
    model = make(2, "shortformer", d_model=16)
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(tokens), reference_logits(model, tokens), rtol=1e-4, atol=1e-5)


def test_any_hook_switches_to_the_hooked_path():
    model = make(2, "shortformer")
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.append(1))])
    assert seen == [1]
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert list(cache) == ["blocks.0.attn.hook_pattern"]


@pytest.mark.parametrize("fast", [True, False])
def test_two_trainings_in_one_process_are_bit_identical(fast):
    def run():
        torch.manual_seed(0)
        model = make(2, "shortformer", d_model=16, layernorm=False)
        model.fast_path = fast
        opt = AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(5)
        for _ in range(5):
            loss = model(torch.randint(0, 11, (8, 9), generator=g), return_type="loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# ---- masked positions contribute exactly nothing ----

@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("positional,layernorm", [("learned", False), ("shortformer", False), ("none", True)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_row_does_not_leak_to_earlier_positions(fast, positional, layernorm, bad):
    model = make(3, positional, layernorm=layernorm, d_model=16)
    model.fast_path = fast
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])  # token 6 is at position 5 only
    before = model(tokens).detach()
    with torch.no_grad():
        model.W_E[6] = bad
    after = model(tokens).detach()
    assert torch.isfinite(after[:, :5]).all()
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=1e-5, atol=1e-6)
    assert not torch.isfinite(after[:, 5:]).all()  # the bad value is still visible where it is read


@pytest.mark.parametrize("fast", [True, False])
def test_non_finite_position_row_does_not_leak(fast):
    model = make(2, "shortformer", d_model=16)
    model.fast_path = fast
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    before = model(tokens).detach()
    with torch.no_grad():
        model.W_pos[5] = float("nan")
    after = model(tokens).detach()
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init_std", [float("inf"), float("nan"), -1.0, 0.0, True, "1"])
def test_config_rejects_bad_init_std(init_std):
    with pytest.raises(ValueError, match="init_std"):
        ModelConfig(d_vocab=5, n_ctx=4, d_model=4, n_layers=1, init_std=init_std)


def test_tokens_on_another_device_is_a_clear_error():
    model = make(1)
    tokens = torch.zeros(1, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="tokens are on meta but the model is on cpu"):
        model(tokens)
