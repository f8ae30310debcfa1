"""Graded tests of chapter 0, "A transformer from scratch".

Ground truth is the lab's own model: every answer is compared with the
activation toylab's ``AttnOnlyTransformer`` computes at the matching hook
point, on the shipped ``induction-2l`` model (and, for the full forward pass,
on other configurations too).
"""

import math

import pytest
import torch

from toylab.data import repeated_tokens
from toylab.course.answers import expect_tensor, load_answers
from toylab.model import AttnOnlyTransformer, ModelConfig

CH = "ch00_transformer"


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def probe(induction_model):
    """Tokens (repeated and random) and the model's cache on them."""
    g = torch.Generator().manual_seed(0)
    rep = repeated_tokens(induction_model.cfg.d_vocab, half_len=12, batch=3, generator=g)  # [3, 25]
    rnd = torch.randint(1, induction_model.cfg.d_vocab, (3, 25), generator=g)
    tokens = torch.cat([rep, rnd])
    with torch.no_grad():
        logits, cache = induction_model.run_with_cache(tokens)
    return tokens, logits, cache


@pytest.mark.exercise("embed")
@pytest.mark.points(1)
def test_embed(induction_model, probe):
    tokens, _, cache = probe
    got = answers().embed(tokens, induction_model.W_E)
    expect_tensor(got, cache["hook_embed"], "embed(tokens, W_E)", "batch, pos, d_model")


@pytest.mark.exercise("project")
@pytest.mark.points(1)
def test_project(induction_model, probe):
    tokens, _, cache = probe
    attn = induction_model.blocks[0].attn
    x = cache["blocks.0.hook_resid_pre"]
    qk_in = x + induction_model.W_pos[: tokens.shape[1]]  # shortformer: positions feed Q and K
    W = attn.W_V.detach()
    H = W.shape[0]
    expect_tensor(answers().project(x, attn.W_V), cache["blocks.0.attn.hook_v"], "project(x, W_V)",
                  "batch, pos, n_heads, d_head",
                  hints=[(torch.einsum("bpd,hde->bpe", x, W)[:, :, None].expand(-1, -1, H, -1),
                          "You summed over the heads: every head h has its own projection x @ W[h]"),
                         (torch.einsum("bpd,de->bpe", x, W[0])[:, :, None].expand(-1, -1, H, -1),
                          "Every head got head 0's projection: use x @ W[h] for each head h")])
    expect_tensor(answers().project(qk_in, attn.W_Q), cache["blocks.0.attn.hook_q"], "project(x + pos, W_Q)",
                  "batch, pos, n_heads, d_head")


@pytest.mark.exercise("attention_scores")
@pytest.mark.points(2)
def test_attention_scores(induction_model, probe):
    _, _, cache = probe
    d_head = induction_model.cfg.d_head
    for layer in range(induction_model.cfg.n_layers):
        q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]
        want = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        raw = torch.einsum("bqhe,bkhe->bhqk", q, k)
        n = q.shape[1]
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        hints = [
            (raw.masked_fill(future, float("-inf")), "Did you divide by sqrt(d_head)?"),
            (raw.masked_fill(future, float("-inf")) / d_head, "Divide by sqrt(d_head), not by d_head."),
            (raw / math.sqrt(d_head), "The causal mask is missing: scores of later (key) positions must be -inf."),
            (want.masked_fill(future, 0.0), "Mask the future with -inf, not 0: softmax(0) is not 0."),
            (want.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool)), float("-inf")),
             "Your mask also hides the diagonal: a position may attend to itself (use diagonal=1)."),
            (want.transpose(-1, -2), "Queries index the rows (dim -2) and keys the columns (dim -1)."),
            ((raw.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(future, float("-inf")),
             "You swapped the query and key positions (bhkq): row i must hold q_i . k_j for the keys j."),
            (raw.masked_fill(future, float("-inf")) / math.sqrt(q.shape[2] * d_head),
             "You divided by sqrt(d_model); the scale is sqrt(d_head), the length of one head's q and k."),
            ((raw / math.sqrt(d_head)).masked_fill(torch.tril(torch.ones(n, n, dtype=torch.bool), -1), float("-inf")),
             "You masked the PAST (below the diagonal, tril): the future keys j > i lie above it (triu, diagonal=1)."),
        ]
        got = answers().attention_scores(q, k)
        expect_tensor(got, want, f"attention_scores in layer {layer}", "batch, n_heads, query_pos, key_pos",
                      hints=hints)


@pytest.mark.exercise("attention_pattern")
@pytest.mark.points(1)
def test_attention_pattern(probe):
    _, _, cache = probe
    scores = cache["blocks.1.attn.hook_attn_scores"]
    before = scores.clone()
    hints = [(torch.softmax(scores, dim=-2),
              "You normalised over query positions (dim -2); each destination's row over keys must sum to 1."),
             (torch.softmax(scores.masked_fill(torch.isinf(scores), 0.0), dim=-1),
              "You replaced the masked -inf scores by 0: softmax(0) is not 0, so the future keys got weight; "
              "keep the -inf so that they get exactly 0")]
    got = answers().attention_pattern(scores)
    expect_tensor(got, cache["blocks.1.attn.hook_pattern"], "attention_pattern(scores)",
                  "batch, n_heads, query_pos, key_pos", hints=hints)
    assert torch.equal(scores, before), "attention_pattern changed its input in place: work on a copy"


@pytest.mark.exercise("head_outputs")
@pytest.mark.points(2)
def test_head_outputs(induction_model, probe):
    _, _, cache = probe
    for layer in range(induction_model.cfg.n_layers):
        pattern, v = cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_v"]
        out = answers().head_outputs(pattern, v, induction_model.blocks[layer].attn.W_O)
        assert isinstance(out, tuple) and len(out) == 2, \
            f"head_outputs must return a pair (z, result), got {type(out).__name__}"
        z, result = out
        wrong_z = torch.einsum("bhkq,bkhe->bqhe", pattern, v)
        expect_tensor(z, cache[f"blocks.{layer}.attn.hook_z"], f"z in layer {layer}", "batch, pos, n_heads, d_head",
                      hints=[(wrong_z, "Sum over the key (source) position j: z_i = sum_j A[i, j] v_j, "
                                       "not sum_j A[j, i] v_j.")])
        expect_tensor(result, cache[f"blocks.{layer}.attn.hook_result"], f"result in layer {layer}",
                      "batch, pos, n_heads, d_model")


@pytest.mark.exercise("attention_layer")
@pytest.mark.points(2)
def test_attention_layer(induction_model, probe):
    tokens, _, cache = probe
    n = tokens.shape[1]
    pos = induction_model.W_pos[:n]
    # the same weights with positions in the residual stream: what you get if positions reach the values too
    learned = AttnOnlyTransformer(ModelConfig(**{**induction_model.cfg.to_dict(), "positional": "learned"}), seed=None)
    learned.load_state_dict(induction_model.state_dict())
    _, lcache = learned.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
    for layer in range(induction_model.cfg.n_layers):
        a = induction_model.blocks[layer].attn
        x = cache[f"blocks.{layer}.hook_resid_pre"]
        got = answers().attention_layer(x, a.W_Q, a.W_K, a.W_V, a.W_O, qk_pos=pos)
        hints = [(cache[f"blocks.{layer}.attn.hook_result"][:, :, 0], "That is head 0 only: sum over all heads."),
                 (cache[f"blocks.{layer}.hook_resid_post"], "Return the layer's output only, without adding x.")]
        if layer == 0:
            hints.append((lcache["blocks.0.hook_attn_out"], "qk_pos goes into the queries and keys only, "
                                                            "not into the values."))
        with torch.no_grad():
            hints += [(_plain_layer(x, a, None), "You left qk_pos out: with shortformer positions, x + qk_pos "
                                                 "feeds the queries and keys"),
                      (_plain_layer(x, a, pos, a.W_Q), "Your keys come from W_Q: project x + qk_pos with W_K "
                                                       "for the keys")]
        expect_tensor(got, cache[f"blocks.{layer}.hook_attn_out"], f"attention_layer (layer {layer})",
                      "batch, pos, d_model", hints=hints)


def _plain_layer(x, a, qk_pos, key_weight=None):
    """One attention layer written out with einsums (no toylab code), for the hints."""
    W_K = a.W_K if key_weight is None else key_weight
    qk = x if qk_pos is None else x + qk_pos
    q, k = torch.einsum("bpd,hde->bphe", qk, a.W_Q), torch.einsum("bpd,hde->bphe", qk, W_K)
    v = torch.einsum("bpd,hde->bphe", x, a.W_V)
    n = x.shape[1]
    s = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    z = torch.einsum("bhqk,bkhe->bqhe", s.softmax(-1), v)
    return torch.einsum("bqhe,hed->bqd", z, a.W_O)


def _refuse_forward(act, hook):
    raise AssertionError("forward must compute the logits from the weights, not call model(tokens)")


@pytest.mark.exercise("forward")
@pytest.mark.points(3)
def test_forward(induction_model, probe):
    from toylab.training.presets import load_model

    tokens, logits, _ = probe
    g = torch.Generator().manual_seed(1)
    learned = AttnOnlyTransformer(ModelConfig(d_vocab=50, n_ctx=16, d_model=48, n_layers=3, n_heads=4,
                                              positional="learned"), seed=3)
    bigram = load_model("bigram-0l")
    cases = [
        ("induction-2l (2 layers, shortformer positions)", induction_model, tokens, logits),
        ("a random 3-layer, 4-head model with learned positions", learned,
         torch.randint(0, 50, (2, 16), generator=g), None),
        ("bigram-0l (0 layers, no positions)", bigram, torch.randint(0, 64, (2, 10), generator=g), None),
    ]
    for name, model, toks, want in cases:
        if want is None:
            want = model(toks)
        hints = []
        if model.cfg.n_layers:
            with torch.no_grad():
                x = model.W_E[toks] + (model.W_pos[: toks.shape[1]] if model.cfg.positional == "learned" else 0)
                qk_pos = model.W_pos[: toks.shape[1]] if model.cfg.positional == "shortformer" else None
                for block in model.blocks:
                    x = _plain_layer(x, block.attn, qk_pos)
                hints.append((x @ model.W_U, "No residual connection: each layer ADDS its output to the stream, "
                                             "x = x + attention_layer(x); the running sum is what the unembedding "
                                             "reads"))
                r = model.W_E[toks] + (model.W_pos[: toks.shape[1]] if model.cfg.positional == "learned" else 0)
                for block in model.blocks:
                    r = r + _plain_layer(r, block.attn, qk_pos)
                if model.W_E.shape[::-1] == model.W_U.shape:
                    hints.append((r @ model.W_E.T, "You unembedded with W_E transposed: the logits are x @ W_U, "
                                                   "the model's own unembedding"))
        with model.hooks([("hook_embed", _refuse_forward)]):
            got = answers().forward(model, toks)
        expect_tensor(got, want, f"forward on {name}", "batch, pos, d_vocab", atol=1e-3, hints=hints)


@pytest.mark.exercise("next_token_loss")
@pytest.mark.points(1)
def test_next_token_loss(induction_model, probe):
    tokens, logits, _ = probe
    want = induction_model(tokens, return_type="loss_per_token")
    shifted = -torch.log_softmax(logits[:, 1:], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    hints = [(shifted, "logits[:, p] predict tokens[:, p + 1]: compare logits[:, :-1] with tokens[:, 1:]."),
             (-want, "The loss is the *negative* log-probability."),
             (-torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, :-1, None]).squeeze(-1),
              "You scored the CURRENT token: logits[:, p] predict the NEXT token, tokens[:, p + 1]."),
             (want / math.log(2), "That is in bits (log2): the loss is in nats, the natural log (a ratio of 1.4427)."),
             (-torch.log_softmax(logits[:, :-1], 1).gather(-1, tokens[:, 1:, None]).squeeze(-1),
              "You took the log-softmax over the positions (dim 1): normalise over the vocabulary, the last dim")]
    got = answers().next_token_loss(logits, tokens)
    expect_tensor(got, want, "next_token_loss(logits, tokens)", "batch, pos - 1", hints=hints)
    # the repeated half of [BOS, r, r] is predictable by induction: its loss must be small
    assert float(got[:3, 13:].mean()) < 0.5, "the loss on the repeated half of [BOS, r, r] should be small"


@pytest.mark.hidden
@pytest.mark.exercise("predict_initial_loss")
@pytest.mark.points(1)
def test_predict_initial_loss():
    g = torch.Generator().manual_seed(2)
    for V in (7, 50, 128):
        model = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=12, d_model=16, n_layers=1, n_heads=2), seed=V)
        with torch.no_grad():
            model.W_U.zero_()  # every logit equal: the model knows nothing
        toks = torch.randint(0, V, (4, 12), generator=g)
        want = float(model(toks, return_type="loss_per_token").mean())  # measured, not written down
        got = answers().predict_initial_loss(V)
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"predict_initial_loss({V}): expected a float, got {type(got).__name__}") from None
        hints = [(want * 1.4426950408889634, "that is log2: the loss is in nats (natural log), a ratio of 1.4427"),
                 (want / math.log(10), "that is log10: the loss is in nats (natural log)"),
                 (1.0 / V, "that is the probability of the right token; the loss is its negative log"),
                 (-want, "the sign is flipped: the loss is the NEGATIVE log-probability"),
                 (math.log(V - 1), "the model spreads its probability over all V tokens, not V - 1")]
        for cand, msg in hints:
            if abs(value - cand) < 1e-4 and abs(value - want) > 1e-4:
                raise AssertionError(f"predict_initial_loss({V}) is {value:.4g}, measured {want:.4g}: {msg}")
        assert abs(value - want) < 1e-4, (f"predict_initial_loss({V}) is {value:.4g}, but a model with equal logits "
                                          f"measures {want:.4g}: what probability does it give the right token?")
