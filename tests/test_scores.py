"""Head detectors: a perfect head scores 1, formulas as documented, clear errors."""

import pytest
import torch

from toylab.data import repeated_tokens
from toylab.circuits.scores import duplicate_token_score, induction_score, previous_token_score, without_bos

L = 6
TOKENS = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10]])  # [BOS, r, r] without chance repeats
N = TOKENS.shape[1]


def one_hot_pattern(targets):
    """A single-head pattern attending from q to targets[q] (itself if None)."""
    p = torch.zeros(1, 1, N, N)
    for q in range(N):
        p[0, 0, q, targets(q) if targets(q) is not None else q] = 1.0
    return p


def test_perfect_heads_score_one():
    prev = one_hot_pattern(lambda q: max(q - 1, 0))
    assert previous_token_score(prev).item() == pytest.approx(1.0)
    induction = one_hot_pattern(lambda q: q - L + 1 if q > L else None)
    assert induction_score(induction, TOKENS).item() == pytest.approx(1.0)
    dup = one_hot_pattern(lambda q: q - L if q > L else None)
    assert duplicate_token_score(dup, TOKENS).item() == pytest.approx(1.0)
    # and each detector gives the other heads about nothing
    assert induction_score(prev, TOKENS).item() == pytest.approx(0.0)
    assert duplicate_token_score(induction, TOKENS).item() == pytest.approx(0.0)


def test_uniform_head_scores_one_over_context():
    causal = torch.ones(N, N).tril()
    uniform = (causal / causal.sum(-1, keepdim=True))[None, None]
    expected = torch.tensor([1 / (q + 1) for q in range(1, N)]).mean()
    assert previous_token_score(uniform).item() == pytest.approx(expected.item())
    second_copy = torch.arange(N) > L
    expected_ind = torch.tensor([1 / (q + 1) for q in range(L + 1, N)]).mean()
    assert induction_score(uniform, TOKENS, second_copy).item() == pytest.approx(expected_ind.item())


def test_destinations_restrict_the_mean():
    tokens = torch.tensor([[0, 3, 3, 4, 3, 4]])  # chance repeat at q=2, true repeats later
    n = tokens.shape[1]
    p = torch.zeros(1, 1, n, n)
    p[0, 0, :, 0] = 1.0  # attends to BOS everywhere...
    p[0, 0, 4, :] = 0
    p[0, 0, 4, 2] = 0.5  # ...except q=4 (token 3), half on k=2 (after the 3 at 1) and half on k=3 (after the 3 at 2)
    p[0, 0, 4, 3] = 0.5
    everywhere = induction_score(p, tokens).item()
    only_q4 = induction_score(p, tokens, torch.arange(n) == 4).item()
    assert only_q4 == pytest.approx(1.0) and everywhere < 1.0
    with pytest.raises(ValueError, match="destinations must be a bool mask"):
        induction_score(p, tokens, torch.ones(3, dtype=torch.bool))


def test_inputs_are_not_modified():
    tokens = repeated_tokens(20, 5, 4, torch.Generator().manual_seed(0))
    pattern = torch.softmax(torch.randn(4, 2, 11, 11).masked_fill(torch.ones(11, 11).triu(1).bool(), -1e9), -1)
    before_p, before_t = pattern.clone(), tokens.clone()
    induction_score(pattern, tokens)
    duplicate_token_score(pattern, tokens)
    previous_token_score(pattern)
    assert torch.equal(pattern, before_p) and torch.equal(tokens, before_t)


def test_bad_input_is_a_clear_error():
    no_repeats = torch.arange(6)[None]
    p = torch.ones(1, 1, 6, 6).tril()
    p = p / p.sum(-1, keepdim=True)
    with pytest.raises(ValueError, match="needs tokens that repeat"):
        induction_score(p, no_repeats)
    with pytest.raises(ValueError, match="needs tokens that repeat"):
        duplicate_token_score(p, no_repeats)
    with pytest.raises(ValueError, match=r"pattern must have shape \[batch, n_heads, query_pos, key_pos\]"):
        previous_token_score(torch.ones(6, 6))
    with pytest.raises(ValueError, match="tokens must have shape"):
        induction_score(p, torch.zeros(1, 5, dtype=torch.long))


def test_exclude_bos_renormalises_over_the_other_keys():
    # a previous-token head that parks 0.6 of its attention on BOS
    p = torch.zeros(1, 1, N, N)
    p[0, 0, 0, 0] = 1.0
    for q in range(1, N):
        p[0, 0, q, 0] += 0.6
        p[0, 0, q, q - 1] += 0.4
    before = p.clone()
    plain = previous_token_score(p).item()
    # q = 1's previous token IS BOS: plain counts it fully; the rest get 0.4
    assert plain == pytest.approx((1.0 + 0.4 * (N - 2)) / (N - 1))
    assert previous_token_score(p, exclude_bos=True).item() == pytest.approx(1.0)
    assert torch.equal(p, before)
    # an induction head that parks half its attention on BOS
    ind = torch.zeros(1, 1, N, N)
    ind[0, 0, :, 0] = 1.0
    for q in range(L + 1, N):
        ind[0, 0, q, 0] = 0.5
        ind[0, 0, q, q - L + 1] = 0.5
    second = torch.arange(N) > L
    assert induction_score(ind, TOKENS, second).item() == pytest.approx(0.5)
    assert induction_score(ind, TOKENS, second, exclude_bos=True).item() == pytest.approx(1.0)
    dup = torch.zeros(1, 1, N, N)
    dup[0, 0, :, 0] = 1.0
    for q in range(L + 1, N):
        dup[0, 0, q, 0] = 0.75
        dup[0, 0, q, q - L] = 0.25
    assert duplicate_token_score(dup, TOKENS, exclude_bos=True).item() == pytest.approx(1.0)


def _causal_softmax(x):
    n = x.shape[-1]
    return torch.softmax(x.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), -1)


def test_detectors_refuse_what_is_not_a_causal_probability_pattern():
    tokens = repeated_tokens(20, 5, 3, torch.Generator().manual_seed(0))
    raw = torch.randn(3, 2, 11, 11, generator=torch.Generator().manual_seed(1)) * 3
    scores = raw.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), 0.0)  # pre-softmax, finite mask
    pattern = _causal_softmax(raw)
    cases = [
        (scores, "Did you pass the attention scores"),                          # scores instead of pattern
        (raw.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf")), "NaN or inf"),
        (pattern.transpose(-1, -2), "not causal.*transposed"),                 # [key, query]
        (pattern * 2, "row sums in"),                                          # not normalised
        (torch.full_like(pattern, float("nan")), "NaN or inf"),
    ]
    for bad, match in cases:
        for fn in (lambda p: induction_score(p, tokens), lambda p: duplicate_token_score(p, tokens),
                   previous_token_score, without_bos):
            with pytest.raises(ValueError, match=match):
                fn(bad)
    # the valid pattern scores inside [0, 1]
    for v in (induction_score(pattern, tokens), previous_token_score(pattern)):
        assert ((v >= 0) & (v <= 1)).all()


def test_transformerlens_style_normalisation_is_ours_times_the_share_of_target_rows():
    """TL's "mul" measure averages target attention over *all* query rows; ours over rows with a
    target. On any pattern the two differ exactly by that share of rows (the docstring's 0.51x)."""
    tokens = repeated_tokens(20, 7, 4, torch.Generator().manual_seed(2))
    n = tokens.shape[1]
    pattern = _causal_softmax(torch.randn(4, 3, n, n, generator=torch.Generator().manual_seed(3)))
    mask = torch.zeros(4, n, n, dtype=torch.bool)
    mask[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
    mask &= torch.ones(n, n, dtype=torch.bool).tril()
    tl = (pattern * mask[:, None]).sum(dim=(0, 2, 3)) / pattern.sum(dim=(0, 2, 3))
    share = mask.any(-1).float().mean()
    assert torch.allclose(tl, induction_score(pattern, tokens) * share, atol=1e-6)
