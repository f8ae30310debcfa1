"""Graded tests of chapter 10, "The lab on text".

Ground truth: counts made here by plain loops over small random corpora (the
bigram table, the skip-trigram lift), the definitions checked entry by entry
on random causal patterns, attention heads built by hand whose kind is known
by construction (induction, previous-token, current-token, uniform,
BOS-resting) on windows of the docstring corpus, and models whose bigram
statistics sit where the test put them (the shipped ``bigram-0l`` and
``text-2l``, and hand-built one-layer models).
"""

import math

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.circuits.scores import induction_score

CH = "ch10_text"


def answers():
    return load_answers(CH)


def loop_bigram(ids: list[int], V: int) -> torch.Tensor:
    counts = torch.zeros(V, V, dtype=torch.float64)
    for a, b in zip(ids[:-1], ids[1:]):
        counts[a, b] += 1
    out = torch.zeros_like(counts)
    for a in range(V):
        if counts[a].sum() > 0:
            out[a] = counts[a] / counts[a].sum()
    return out


def random_ids(n: int, V: int, seed: int) -> torch.Tensor:
    """Ids in ``1..V-2`` (the last id never occurs, id 0 only at the start: empty rows to guard)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V - 1, (n,), generator=g)
    ids[0] = 0
    return ids


@pytest.mark.exercise("char_bigram_table")
@pytest.mark.points(1)
def test_char_bigram_table():
    f = answers().char_bigram_table
    for n, V, seed in ((300, 7, 0), (1000, 13, 1), (50, 5, 2)):
        ids = random_ids(n, V, seed)
        ids[-1] = V - 2  # a character whose only occurrence is the last place (if it occurs nowhere else)
        keep = ids.clone()
        want = loop_bigram(ids.tolist(), V)
        got = f(ids, V)
        assert torch.equal(ids, keep), "char_bigram_table changed its input ids in place: work on a copy"
        counts = loop_bigram(ids.tolist(), V) * 0
        for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
            counts[a, b] += 1
        joint = counts / counts.sum()

        def rows(c):
            t = c.sum(-1, keepdim=True)
            return torch.where(t > 0, c / t.clamp_min(1), torch.zeros_like(c))
        unseen = want.sum(-1, keepdim=True) == 0
        hints = [(want.T, "your table is transposed: row a must be the distribution of the character "
                  "AFTER a, P[a, b] = P(next = b | current = a)"),
                 (rows(counts.T), "your table is transposed: you counted (next, current) pairs; row a must "
                  "be the distribution of the character AFTER a, P[a, b] = P(next = b | current = a)"),
                 (rows(counts.T).T, "you divided each column by its total: normalise each ROW (a row sums to "
                  "1, the distribution of the next character)"),
                 (counts, "those are the counts: divide each row by its own total so that it sums to 1"),
                 (torch.where(unseen, torch.full_like(want, 1.0 / V), want), "a character that is never "
                  "followed by anything must get a row of zeros, not a uniform row"),
                 (rows(torch.diag(torch.bincount(ids, minlength=V).double())), "you paired each character "
                  "with itself: pair ids[t] with the NEXT character ids[t + 1]"),
                 (joint, "that is the joint frequency of the pairs; divide each row by its own total "
                  "(a conditional distribution, rows sum to 1)")]
        if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.isnan(got.double()).any():
            raise AssertionError("your table has NaN: a row of a character that is never followed by "
                                 "anything (0 / 0) must be all zeros, not NaN")
        expect_tensor(got, want, f"the bigram table of {n} ids with V = {V}", "V, V", atol=1e-6,
                      hints=hints)


@pytest.mark.exercise("bigram_fit")
@pytest.mark.points(2)
def test_bigram_fit():
    f = answers().bigram_fit
    for V, seed in ((6, 0), (11, 1), (20, 2)):
        g = torch.Generator().manual_seed(seed)
        P = torch.softmax(2.5 * torch.randn(V, V, generator=g, dtype=torch.float64), -1)
        P[0] = 0.0                                        # a character that never occurs
        P[1] = torch.nn.functional.one_hot(torch.tensor(2), V).double()  # a row with zeros in it
        logits = torch.randn(V, V, generator=g) * 2
        weights = torch.rand(V, generator=g) * 5
        weights[0] = 0.0
        args = [x.clone() for x in (logits, P, weights)]
        out = f(*args)
        assert all(torch.equal(a, x) for a, x in zip(args, (logits, P, weights))), \
            "bigram_fit changed an input in place: work on copies"
        assert isinstance(out, tuple) and len(out) == 2, "return the pair (kl, top1)"
        w = weights.double() / weights.double().sum()
        log_q = torch.log_softmax(logits.double(), -1)
        kl_rows = torch.zeros(V, dtype=torch.float64)
        for a in range(V):
            for b in range(V):
                if P[a, b] > 0:
                    kl_rows[a] += P[a, b] * (math.log(P[a, b]) - log_q[a, b])
        kl = float((w * kl_rows).sum())
        top1 = float((w * (P.argmax(-1) == logits.argmax(-1)).double()).sum())
        q = log_q.exp()
        reverse = float((w * (q * (log_q - torch.log(P.clamp_min(1e-300)))).sum(-1)).sum())
        unweighted = float(kl_rows[1:].mean())
        value = out[0]
        if isinstance(value, (float, int)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            v = float(value)
            if math.isnan(v):
                raise AssertionError("your KL is NaN: 0 ln 0 counts as 0 (rows and entries where P is 0)")
            if abs(v - kl / math.log(2)) < 1e-4:
                raise AssertionError("your KL is in bits (log2): use the natural log, nats")
            if abs(v - unweighted) < 1e-4 and abs(unweighted - kl) > 1e-3:
                raise AssertionError("you averaged the rows equally: weight each row by weights / sum(weights)")
            ent = float((w * torch.where(P > 0, P * torch.log(P.clamp_min(1e-300)), torch.zeros_like(P)).sum(-1)).sum())
            if abs(v - (kl - ent)) < 1e-4 and abs(ent) > 1e-3:
                raise AssertionError("that is the cross-entropy of P and Q: the KL subtracts P's own entropy, "
                                     "sum P (ln P - ln Q)")
            raw = float((w * torch.where(P > 0, P * (torch.log(P.clamp_min(1e-300)) - logits.double()),
                                         torch.zeros_like(P)).sum(-1)).sum())
            if abs(v - raw) < 1e-4 and abs(raw - kl) > 1e-3:
                raise AssertionError("you used the logits as log-probabilities: Q = softmax(logits) over the "
                                     "last dim, ln Q = log_softmax(logits, -1)")
            lq0 = torch.log_softmax(logits.double(), 0)
            by_col = float((w * torch.where(P > 0, P * (torch.log(P.clamp_min(1e-300)) - lq0),
                                            torch.zeros_like(P)).sum(-1)).sum())
            if abs(v - by_col) < 1e-4 and abs(by_col - kl) > 1e-3:
                raise AssertionError("you took the softmax over dim 0 (down the columns): each ROW of logits is "
                                     "the prediction after one character, log_softmax(logits, -1)")
            if math.isinf(v) or abs(v - reverse) < 1e-3 and abs(reverse - kl) > 1e-3:
                raise AssertionError("that is KL(Q || P), the wrong direction: the truth P comes first, "
                                     "KL(P || Q) = sum P (ln P - ln Q)")
        expect_number(out[0], kl, f"the weighted KL (V = {V})", tol=1e-5)
        expect_number(out[1], top1, f"the weighted top-1 agreement (V = {V})", tol=1e-6,
                      hint="the share of (weighted) rows where the argmax of P equals the argmax of the logits")


def loop_lift(ids: list[int], a: int, c: int, W: int) -> float:
    seen_next, seen, nxt = 0, 0, 0
    for t in range(len(ids) - 1):
        window = ids[max(0, t - W + 1): t + 1]
        hit = a in window
        seen += hit
        seen_next += hit and ids[t + 1] == c
        nxt += ids[t + 1] == c
    return (seen_next / seen) / (nxt / (len(ids) - 1))


@pytest.mark.exercise("skip_trigram_lift")
@pytest.mark.points(2)
def test_skip_trigram_lift():
    f = answers().skip_trigram_lift
    for n, V, a, c, W, seed in ((400, 6, 1, 2, 3, 0), (800, 9, 3, 4, 5, 1), (300, 5, 2, 2, 1, 2)):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, V, (n,), generator=g)
        # plant the rule: c often comes 2 places after a
        where = (ids[:-2] == a).nonzero().flatten()
        keep_mask = torch.rand(where.numel(), generator=g) < 0.6
        ids[where[keep_mask] + 2] = c
        keep = ids.clone()
        want = loop_lift(ids.tolist(), a, c, W)
        got = f(ids, a, c, W)
        assert torch.equal(ids, keep), "skip_trigram_lift changed its input ids in place"
        off_next = loop_lift(ids.tolist(), a, c, W + 1) if W + 1 < n else None
        v = float(got)
        if off_next is not None and abs(v - off_next) < 1e-6 and abs(off_next - want) > 1e-6:
            raise AssertionError(f"your lift is the one for a window of {W + 1}: the window is the last "
                                 f"W = {W} characters, ids[t-W+1 .. t], the current one included")
        if W > 1:
            shorter = loop_lift(ids.tolist(), a, c, W - 1)
            if abs(v - shorter) < 1e-6 and abs(shorter - want) > 1e-6:
                raise AssertionError(f"your lift is the one for a window of {W - 1}: the window is the "
                                     f"last W = {W} characters, the current one included")
        if abs(v - want) > 1e-6 and v != 0 and abs(1 / v - want) < 1e-6:
            raise AssertionError(f"your lift {v:.4g} is the inverse of the lift {want:.4g}: divide "
                                 "P(next = c | a in the window) by P(next = c), not the other way round")
        expect_number(got, want, f"the lift of {a} ... -> {c} with a window of {W}", tol=1e-6,
                      hint="P(next = c | a in the window) divided by P(next = c), both over the "
                      "N - 1 prediction places")
    with pytest.raises(ValueError):
        f(torch.tensor([1, 2, 1, 2, 1]), 3, 2, 2)


def causal_pattern(b: int, h: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, n, generator=g) * 2
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.exercise("attention_by_offset")
@pytest.mark.points(1)
def test_attention_by_offset():
    f = answers().attention_by_offset
    for b, h, n, D, seed in ((3, 2, 9, 3, 0), (2, 5, 12, 0, 1), (4, 3, 7, 6, 2)):
        pattern = causal_pattern(b, h, n, seed)
        keep = pattern.clone()
        got = f(pattern, D)
        assert torch.equal(pattern, keep), "attention_by_offset changed the pattern in place"
        want = torch.zeros(h, D + 1)
        with_bos = torch.zeros(h, D + 1)
        for head in range(h):
            for d in range(D + 1):
                vals = [pattern[i, head, q, q - d] for i in range(b) for q in range(max(d, 1), n)]
                want[head, d] = torch.stack(vals).mean()
                vals0 = [pattern[i, head, q, q - d] for i in range(b) for q in range(d, n)]
                with_bos[head, d] = torch.stack(vals0).mean()
        past = torch.zeros(h, D + 1)  # a common slip: A[q, q + d] is above the diagonal (0)
        n_q = torch.tensor([n - max(d, 1) for d in range(D + 1)], dtype=torch.float32)
        summed = want * n_q
        expect_tensor(got, want, f"attention by offset ({b}x{h} heads, {n} positions, D = {D})",
                      "n_heads, D + 1", atol=1e-5,
                      hints=[(with_bos, "you kept query 0 in the mean of offset 0: BOS can only attend "
                              "to itself (always 1), so leave it out (queries q >= max(d, 1))"),
                             (past, "all zeros: A[q, q + d] lies above the diagonal; the key of offset d "
                              "is q - d (a negative diagonal offset)"),
                             (summed, "you summed over the queries: take the mean over the batch and the "
                              "queries q >= max(d, 1)")])


# ------------------------------------------------------------ judgement: induction heads on text
def text_batch(seed: int, batch: int = 12) -> torch.Tensor:
    """``[BOS] + w[:16] + stretch(40) + w[:12]``: a docstring window ``w``, an underline-like
    stretch (a run or a period-2 pattern) and a repeat of the window's start."""
    from toylab.data import TextData
    data = TextData(n_ctx=17)
    w = data.sample(batch, torch.Generator().manual_seed(seed), split="validation")[:, 1:]
    tk = data.tokenizer
    kinds = ["=" * 40, "-=" * 20, "~" * 40, "+-" * 20]
    stretch = torch.stack([tk.encode(kinds[(i + seed) % len(kinds)]) for i in range(batch)])
    bos = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([bos, w, stretch, w[:, :12]], dim=1)


def targets_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``[b, q, k]``: key k is an induction target of query q."""
    n = tokens.shape[1]
    m = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
    m[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
    return m & torch.ones(n, n, dtype=torch.bool).tril()


def built_heads(tokens: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads of known kind on ``tokens``: ``(pattern [b, H, n, n], is_induction [H])``."""
    b, n = tokens.shape
    eye = torch.eye(n).expand(b, n, n)
    prev = torch.zeros(b, n, n)
    prev[:, 0, 0] = 1.0
    prev[:, torch.arange(1, n), torch.arange(n - 1)] = 1.0
    bos = torch.zeros(b, n, n)
    bos[..., 0] = 1.0
    uni = torch.ones(n, n).tril()
    uni = (uni / uni.sum(-1, keepdim=True)).expand(b, n, n)
    tgt = targets_mask(tokens).float()
    has = tgt.sum(-1, keepdim=True) > 0
    ind = torch.where(has, tgt / tgt.sum(-1, keepdim=True).clamp_min(1), bos)
    recent = torch.zeros(b, n, n)  # attends to the most recent target only
    last = torch.where(tgt.bool(), torch.arange(n).expand(b, n, n), torch.full((b, n, n), -1)).amax(-1)
    recent.scatter_(-1, last.clamp_min(0).unsqueeze(-1), 1.0)
    recent = torch.where(has, recent, bos)
    heads = [
        (ind, True), (0.5 * ind + 0.5 * bos, True), (0.5 * recent + 0.5 * bos, True), (recent, True),
        (prev, False), (0.8 * prev + 0.2 * bos, False), (eye, False), (uni, False), (bos, False),
        (0.5 * prev + 0.5 * eye, False), (0.7 * prev + 0.3 * uni, False),
    ]
    order = torch.randperm(len(heads), generator=torch.Generator().manual_seed(seed)).tolist()
    pattern = torch.stack([heads[i][0] for i in order], dim=1)
    truth = torch.tensor([heads[i][1] for i in order])
    return pattern, truth


@pytest.mark.exercise("is_induction_head")
@pytest.mark.points(3)
def test_is_induction_head():
    f = answers().is_induction_head
    names = {True: "an induction head", False: "not an induction head"}
    for seed in (0, 1, 2):
        tokens = text_batch(seed)
        pattern, truth = built_heads(tokens, seed)
        keep_p, keep_t = pattern.clone(), tokens.clone()
        got = f(pattern, tokens)
        assert torch.equal(pattern, keep_p) and torch.equal(tokens, keep_t), \
            "is_induction_head changed its inputs in place: work on copies"
        assert isinstance(got, torch.Tensor) and got.shape == truth.shape, \
            f"return a bool tensor [n_heads] = [{truth.numel()}], got {got!r}"
        raw = induction_score(pattern, tokens)
        wrong = (got.bool() != truth).nonzero().flatten().tolist()
        if wrong:
            h = wrong[0]
            raise AssertionError(
                f"batch {seed}: head {h} is {names[bool(truth[h])]}, you said {bool(got[h])}. Its raw "
                f"induction score on these tokens is {float(raw[h]):.2f}; raw scores of the induction "
                f"heads here run from {float(raw[truth].min()):.2f}, of the others up to "
                f"{float(raw[~truth].max()):.2f}. "
                + ("An induction head here puts at least half of its attention on the tokens after earlier "
                   "occurrences: is your threshold too strict? " if bool(truth[h]) else "")
                + "Where do a previous-token or current-token head get "
                "induction attention for free (runs like '====', stretches like '-=-=')? Leave "
                "those destinations out, and compare with a uniform head there.")


# ------------------------------------------------------------ judgement: where the bigram lives
def direct_model(P: torch.Tensor, n_layers: int, seed: int) -> AttnOnlyTransformer:
    """A model whose direct path is ln P and whose heads write nothing."""
    V = P.shape[0]
    cfg = ModelConfig(d_vocab=V, n_ctx=8, d_model=2 * V, n_layers=n_layers, n_heads=2, d_head=V,
                      positional="shortformer")
    m = AttnOnlyTransformer(cfg, seed=seed)
    with torch.no_grad():
        m.W_E.zero_()
        m.W_E[:, :V] = torch.eye(V)
        m.W_U.normal_(generator=torch.Generator().manual_seed(seed))
        m.W_U[:V] = torch.log(P.float() + 1e-4)
        for block in m.blocks:
            block.attn.W_O.zero_()
    return m


def heads_model(P: torch.Tensor, seed: int, junk: float, flat: float = 0.0) -> AttnOnlyTransformer:
    """A one-layer model whose direct path is junk and whose head carries ln P."""
    V = P.shape[0]
    cfg = ModelConfig(d_vocab=V, n_ctx=8, d_model=2 * V, n_layers=1, n_heads=2, d_head=V,
                      positional="none")  # head 1 writes nothing
    m = AttnOnlyTransformer(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.W_E.zero_()
        m.W_E[1:, :V] = torch.eye(V)[1:]                   # BOS embeds to 0
        m.W_U.zero_()
        m.W_U[V:] = torch.eye(V)
        m.W_U[:V] = junk * torch.randn(V, V, generator=g)  # the direct path: noise (or 0)
        m.W_U[:V] += flat * torch.log(P.float() + 1e-4)     # (or a flat copy of ln P: right top-1, poor fit)
        attn = m.blocks[0].attn
        attn.W_Q.zero_()
        attn.W_K.zero_()                                   # uniform attention: 1/2 on c at [BOS, c]
        attn.W_V.zero_()
        attn.W_V[0, :V] = torch.eye(V)
        attn.W_O.zero_()
        attn.W_O[0, :, V:] = 2 * torch.log(P.float() + 1e-4)
    return m


def random_bigram(V: int, seed: int, sharp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A random bigram table (``sharp`` small: close to uniform) and character weights."""
    g = torch.Generator().manual_seed(seed)
    P = torch.softmax(sharp * torch.randn(V, V, generator=g, dtype=torch.float64), -1)
    w = torch.rand(V, generator=g).double() + 0.1
    w[0] = 0.0
    return P, w


@pytest.mark.hidden
@pytest.mark.exercise("bigram_lives_in")
@pytest.mark.points(2)
def test_bigram_lives_in():
    from toylab.data import make_dataset
    from toylab.training.presets import load_shipped
    f = answers().bigram_lives_in
    cases = []
    ck = load_shipped("bigram-0l")
    lang = make_dataset(ck.data_spec)
    cases.append((ck.model, lang.transition, lang.stationary, "direct", "the shipped bigram-0l"))
    text = load_shipped("text-2l")
    data = make_dataset(text.data_spec)
    P = answers_free_bigram(data.splits["train"], data.d_vocab)
    w = torch.bincount(data.splits["train"], minlength=data.d_vocab).double()
    cases.append((text.model, P, w, "heads", "the shipped text-2l"))
    for V, seed, sharp in ((9, 0, 2.5), (14, 1, 2.5), (12, 2, 0.6)):
        P, w = random_bigram(V, seed, sharp)
        cases.append((direct_model(P, 1 + seed % 2, seed), P, w, "direct",
                      f"a {1 + seed % 2}-layer model whose heads write nothing (V = {V})"))
        cases.append((heads_model(P, seed, junk=float(seed % 2)), P, w, "heads",
                      f"a 1-layer model whose head carries the bigram (V = {V})"))
    P, w = random_bigram(10, 3, 2.5)
    cases.append((heads_model(P, 3, junk=0.0, flat=0.15), P, w, "heads",
                  "a 1-layer model whose direct path is a flat copy of ln P (the right top-1, a poor fit) and "
                  "whose head carries the rest (V = 10); compare the KL, not only the top-1 agreement"))
    for model, P, w, want, what in cases:
        got = f(model, P.clone(), w.clone())
        assert got in ("direct", "heads"), f"return 'direct' or 'heads', got {got!r}"
        if got != want:
            raise AssertionError(
                f"{what}: you said {got!r}, it is {want!r}. Measure both places with bigram_fit: the "
                "direct path W_E W_U alone, and the whole model's prediction at [BOS, c] for every c "
                "(one character of context); if only the second fits the table, the heads carry it. (If you "
                "use your bigram_fit, make sure its own test passes first.)")


def answers_free_bigram(ids: torch.Tensor, V: int) -> torch.Tensor:
    counts = torch.bincount(ids[:-1] * V + ids[1:], minlength=V * V).view(V, V).double()
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1), torch.zeros_like(counts))
