"""Graded tests of chapter 1, "Zero layers: the model is a bigram table".

Ground truth: the bigram language's own transition matrix and samples (the
rules the lab wrote), the shipped ``bigram-0l`` model's forward pass, and
theorems (Eckart–Young) rather than numbers copied from a solution.
"""

import math

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers

CH = "ch01_zero_layers"


def answers():
    return load_answers(CH)


@pytest.mark.exercise("bigram_table_from_weights")
@pytest.mark.points(1)
def test_bigram_table_from_weights(bigram_checkpoint):
    model, _ = bigram_checkpoint
    V = model.cfg.d_vocab
    # the model's own prediction after each token, as a 1-token sequence
    want = torch.softmax(model(torch.arange(V)[:, None])[:, 0], dim=-1)
    logits = model.W_E @ model.W_U
    hints = [(logits, "Those are logits: turn each row into probabilities with a softmax."),
             (torch.softmax(logits, dim=0), "Normalise each row (dim -1), the distribution of the next token.")]
    got = answers().bigram_table_from_weights(model.W_E, model.W_U)
    expect_tensor(got, want, "bigram_table_from_weights(W_E, W_U)", "d_vocab, d_vocab", atol=1e-5, hints=hints)


@pytest.mark.exercise("empirical_bigram_counts")
@pytest.mark.points(2)
def test_empirical_bigram_counts(bigram_checkpoint):
    _, lang = bigram_checkpoint
    V = lang.d_vocab
    small = torch.tensor([[0, 3, 1, 3, 1], [0, 1, 3, 3, 2]])
    want = torch.zeros(5, 5, dtype=torch.long)
    for row in small.tolist():  # the definition, pair by pair
        for a, b in zip(row[:-1], row[1:]):
            want[a, b] += 1
    crossing = torch.zeros(5, 5, dtype=torch.long)
    flat = small.reshape(-1).tolist()
    for a, b in zip(flat[:-1], flat[1:]):
        crossing[a, b] += 1
    got = answers().empirical_bigram_counts(small, 5)
    expect_tensor(got, want, "empirical_bigram_counts on [[0,3,1,3,1], [0,1,3,3,2]]", "d_vocab, d_vocab",
                  hints=[(crossing, "A pair must not run from the end of one sequence into the next."),
                         (want.T, "counts[a, b] counts a followed by b: rows are the current token.")])
    assert not got.dtype.is_floating_point, f"counts should be integers (torch.long), got {got.dtype}"
    # on samples of the language, the normalised counts approach the true transition matrix
    tokens = lang.sample(2000, torch.Generator().manual_seed(7))
    counts = answers().empirical_bigram_counts(tokens, V)
    assert int(counts.sum()) == tokens.shape[0] * (tokens.shape[1] - 1), \
        f"the counts add up to {int(counts.sum())}, expected batch * (pos - 1) = {tokens.shape[0] * (tokens.shape[1] - 1)}"
    rows = counts.sum(1) >= 500
    freq = counts[rows].double() / counts[rows].sum(1, keepdim=True)
    err = (freq - lang.transition[rows]).abs().max().item()
    assert err < 0.08, f"the frequencies from your counts differ from the true transition matrix by {err:.3f}"


@pytest.mark.exercise("frequency_weighted_kl")
@pytest.mark.points(2)
def test_frequency_weighted_kl(bigram_checkpoint):
    model, lang = bigram_checkpoint
    Q = torch.softmax((model.W_E @ model.W_U).double(), dim=-1)
    P, w = lang.transition, lang.stationary
    f = answers().frequency_weighted_kl
    value = f(P, P, w)
    expect_number(value, 0.0, "KL(P || P)", tol=1e-9,
                  hint="a distribution is at distance 0 from itself; did you treat 0 log 0 as 0?")
    want = lang.frequency_weighted_kl(Q)
    got = f(P, Q, w)
    try:
        v = float(got)
    except (TypeError, ValueError):
        v = None
    wn = (w / w.sum()).double()
    reverse = float((wn[:, None] * torch.where(Q > 0, Q * (Q.log() - P.clamp_min(1e-300).log()), 0.0)).sum())
    if v is not None and abs(v - want) > 1e-6 + 1e-4 * want:
        if v == float("inf") and math.isfinite(want) or abs(v - reverse) < 1e-6 + 1e-4 * abs(reverse):
            raise AssertionError(f"your KL is {v:.4g}, expected {want:.4g}: that looks like KL(Q || P), the wrong "
                                 "direction — average log(P/Q) under the TRUE distribution P (and Q is the model)")
        if abs(v / want - 1 / math.log(2)) < 1e-3:
            raise AssertionError(f"your KL is {v:.4g}, expected {want:.4g}: a ratio of 1.4427 — you used log2 "
                                 "(bits); use the natural log (nats)")
    expect_number(got, want, "the frequency-weighted KL of bigram-0l", tol=1e-6 + 1e-4 * want,
                  hint="KL(P || Q) = sum_a w(a) sum_b P(b|a) log(P(b|a) / Q(b|a)), weighted by w = weights / sum")
    uniform = torch.full_like(P, 1.0 / lang.d_vocab)
    expect_number(f(P, uniform, 3.0 * w), lang.frequency_weighted_kl(uniform), "KL to a uniform model with "
                  "weights 3 w", tol=1e-6, hint="normalise the weights to sum to 1")
    Q0 = Q.clone()
    Q0[1, P[1] > 0] = 0.0
    Q0[1] /= Q0[1].sum() if Q0[1].sum() > 0 else 1.0
    assert f(P, Q0, w) == float("inf"), "a model that gives probability 0 to a possible pair has infinite KL"


@pytest.mark.exercise("top_k_successors")
@pytest.mark.points(1)
def test_top_k_successors(bigram_checkpoint):
    _, lang = bigram_checkpoint
    P = lang.transition
    f = answers().top_k_successors
    for a in (1, 5, 17, 42, 63):
        support = set(torch.nonzero(P[a] > 0).flatten().tolist())  # the language's successors of a
        got = f(P, a, lang.n_successors)
        assert isinstance(got, torch.Tensor) and got.shape == (lang.n_successors,), \
            f"expected a tensor of shape [k] = [{lang.n_successors}], got {getattr(got, 'shape', type(got).__name__)}"
        assert set(got.tolist()) == support, \
            f"the {lang.n_successors} successors of token {a} are {sorted(support)}, you gave {sorted(got.tolist())}"
        probs = P[a, got]
        assert bool((probs[:-1] >= probs[1:]).all()), \
            f"successors of token {a} must come most likely first; their probabilities were {probs.tolist()}"
        top2 = f(P, a, 2)
        assert top2.tolist() == got[:2].tolist(), f"top 2 successors of {a}: expected {got[:2].tolist()}"


@pytest.mark.exercise("conditional_entropy")
@pytest.mark.points(2)
def test_conditional_entropy(bigram_checkpoint):
    _, lang = bigram_checkpoint
    f = answers().conditional_entropy
    V = lang.d_vocab
    uniform = torch.full((V, V), 1.0 / V, dtype=torch.float64)
    expect_number(f(uniform, 3.0 * lang.stationary), math.log(V), "H of a uniform table (weights 3 w)", tol=1e-6,
                  hint="every row uniform over V tokens has entropy log V (natural log: nats); "
                       "did you normalise the weights to sum to 1?")
    # the truth: the mean loss of the true probabilities on sampled text
    tokens = lang.sample(2000, torch.Generator().manual_seed(3))
    p = lang.transition[tokens[:, :-1], tokens[:, 1:]]
    sampled = float(-p.log().mean())
    value = f(lang.transition, lang.stationary)
    expect_number(value, sampled, "the conditional entropy of the bigram language", tol=0.03,
                  hint="H_w(P) = -sum_a w(a) sum_b P(b|a) log P(b|a), with 0 log 0 = 0")


@pytest.mark.exercise("best_rank_r_approximation")
@pytest.mark.points(2)
def test_best_rank_r_approximation(bigram_checkpoint):
    model, _ = bigram_checkpoint
    M = (model.W_E @ model.W_U).double()
    before = M.clone()
    S = torch.linalg.svdvals(M)
    f = answers().best_rank_r_approximation
    for r in (1, 5, 20):
        got = f(M, r)
        assert isinstance(got, torch.Tensor) and got.shape == M.shape, \
            f"expected shape [m, n] = {list(M.shape)}, got {list(getattr(got, 'shape', []))}"
        rank = int(torch.linalg.matrix_rank(got.double(), rtol=1e-7))
        assert rank <= r, f"your rank-{r} approximation has rank {rank}"
        err = float(torch.linalg.matrix_norm(got.double() - M))
        best = float(S[r:].pow(2).sum().sqrt())  # Eckart–Young: the smallest error any rank-r matrix can have
        assert abs(err - best) <= 1e-6 * (1 + best), \
            (f"your rank-{r} approximation is at Frobenius distance {err:.4f} from M, the best possible is "
             f"{best:.4f}: keep the {r} largest singular values")
    expect_tensor(f(M, M.shape[0]), M, "best_rank_r_approximation(M, full rank)", "m, n", atol=1e-8)
    assert torch.equal(M, before), "best_rank_r_approximation changed its input in place"


def _rank_truth(M, tol):
    S = torch.linalg.svdvals(M.double())
    tail = (S ** 2).flip(0).cumsum(0).flip(0).tolist() + [0.0]  # tail[r] = sum_{i >= r} S_i^2
    return next(r for r in range(len(tail)) if tail[r] <= tol ** 2 * tail[0] + 1e-12), S


@pytest.mark.hidden
@pytest.mark.exercise("rank_needed")
@pytest.mark.points(2)
def test_rank_needed(bigram_checkpoint):
    model, _ = bigram_checkpoint
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))  # the planted rank changes every run
    cases = []
    for m, n in ((12, 9), (20, 30)):
        k = int(torch.randint(1, min(m, n), (), generator=g))
        M = torch.randn(m, k, generator=g, dtype=torch.float64) @ torch.randn(k, n, generator=g, dtype=torch.float64)
        M = M + 1e-6 * torch.randn(m, n, generator=g, dtype=torch.float64)
        cases.append((M, 1e-3, f"a {m}x{n} matrix of planted rank {k} (plus noise 1e-6), tolerance 1e-3"))
    logits = (model.W_E @ model.W_U).double()
    cases += [(logits, 0.1, "the bigram-0l logit table, tolerance 0.1"),
              (logits, 0.5, "the bigram-0l logit table, tolerance 0.5")]
    # an error exactly at the tolerance: singular values 3, 2, 1 (error of rank 2 = 1/sqrt(14))
    D = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    cases.append((D, 1 / math.sqrt(14), "diag(3, 2, 1) with the tolerance exactly the rank-2 error"))
    cases.append((torch.zeros(4, 5, dtype=torch.float64), 0.0, "the zero matrix"))
    for M, tol, name in cases:
        before = M.clone()
        got = answers().rank_needed(M, tol)
        assert torch.equal(M, before), "rank_needed changed M in place: work on a copy"
        want, S = _rank_truth(M, tol)
        assert isinstance(got, int) and not isinstance(got, bool), f"expected an int, got {type(got).__name__}"
        if got == want:
            continue
        tail = [float(S[r:].sum()) for r in range(len(S) + 1)]
        unsq = next(r for r in range(len(tail)) if tail[r] <= tol * tail[0] + 1e-12)
        msg = ""
        strict = next((r for r in range(len(S) + 1) if float((S[r:] ** 2).sum()) < tol ** 2 * float((S ** 2).sum())),
                      len(S))
        if got == strict:
            msg = ": an error exactly at the tolerance is good enough (<=, not <)"
        elif got == unsq:
            msg = (": the error of the best rank-r matrix is sqrt(sum of the remaining singular values SQUARED) "
                   "(Eckart–Young), not their plain sum")
        elif got == want - 1:
            msg = ": off by one — r counts the singular values you KEEP, so the answer is the first r that fits"
        raise AssertionError(f"rank_needed on {name}: you chose {got}, the smallest rank within the tolerance is "
                             f"{want}{msg}")
