"""Graded tests of chapter 2, "One layer: skip-trigrams and copying".

Ground truth: the shipped one-layer models' own forward passes and caches
(patterns, logits with the heads switched off), the library's circuits
(:mod:`toylab.circuits.weights`, :mod:`toylab.circuits.copying`), the planted rules of the
skip-trigram language, brute-force loops over the definitions, matrices
whose eigenvalues are known in closed form, and one-head models the tests
build by hand (votes written into an OV circuit; a head implementing a set of
skip-trigram rules) whose logits are read off a real forward pass.
"""

import math

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers

CH = "ch02_one_layer"


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def skiptrigram():
    """The shipped ``skiptrigram-1l`` model, its language, and a batch of its text."""
    from toylab.data import make_dataset
    from toylab.training.presets import load_shipped

    ckpt = load_shipped("skiptrigram-1l")
    lang = make_dataset(ckpt.data_spec)
    tokens = lang.sample(16, torch.Generator().manual_seed(5))
    return ckpt.model, lang, tokens


@pytest.fixture(scope="module")
def induction_1l():
    from toylab.training.presets import load_model

    return load_model("induction-1l")


def _layer0(model):
    a = model.blocks[0].attn
    return a.W_Q.detach(), a.W_K.detach(), a.W_V.detach(), a.W_O.detach()


@pytest.mark.exercise("full_ov_circuit")
@pytest.mark.points(1)
def test_full_ov_circuit(skiptrigram, induction_1l):
    from toylab.circuits.weights import full_ov

    for model in (skiptrigram[0], induction_1l):
        _, _, W_V, W_O = _layer0(model)
        W_E, W_U = model.W_E.detach(), model.W_U.detach()
        want = full_ov(model, 0).AB
        got = answers().full_ov_circuit(W_E, W_V, W_O, W_U)
        expect_tensor(got, want, "full_ov_circuit(W_E, W_V, W_O, W_U)", "n_heads, d_vocab, d_vocab", atol=1e-3,
                      hints=[(want.mT, "rows are source tokens s and columns output tokens t: you have the "
                                       "transpose (W_U^T ... W_E^T?)"),
                             (W_E @ (W_V @ W_O).mT @ W_U, "you transposed W_OV = W_V W_O only: with row vectors "
                                                        "the product is W_E W_V W_O W_U, no transpose anywhere")])
    # what it means: attending to a source with weight 1 adds its OV row to the logits
    model, _, _ = skiptrigram
    s = 17
    tokens = torch.tensor([[0, s]])
    onto_s = lambda pattern, hook: torch.zeros_like(pattern).index_fill_(-1, torch.tensor([1]), 1.0)
    with_heads = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", onto_s)])[0, 1]
    direct = (model.W_E @ model.W_U)[s]
    got = answers().full_ov_circuit(model.W_E, *_layer0(model)[2:], model.W_U)
    expect_tensor(direct + got[:, s].sum(0), with_heads, "direct path + the OV rows of the attended token",
                  "d_vocab", atol=1e-3)


@pytest.mark.exercise("full_qk_circuit")
@pytest.mark.points(1)
def test_full_qk_circuit(skiptrigram, induction_1l):
    from toylab.circuits.weights import full_qk

    for model in (skiptrigram[0], induction_1l):
        W_Q, W_K, _, _ = _layer0(model)
        want = full_qk(model, 0).AB
        got = answers().full_qk_circuit(model.W_E.detach(), W_Q, W_K)
        expect_tensor(got, want, "full_qk_circuit(W_E, W_Q, W_K)", "n_heads, d_vocab, d_vocab", atol=1e-3,
                      hints=[(want.mT, "rows must be the query (destination) tokens and columns the keys: "
                                       "did you swap W_Q and W_K?"),
                             (want / math.sqrt(model.cfg.d_head),
                              "leave out the 1/sqrt(d_head) scale: the circuit is the bare bilinear form")])
    # the attention score of the model on a pair of tokens, minus the position terms, is the circuit entry
    model = skiptrigram[0]
    W_Q, W_K, _, _ = _layer0(model)
    got = answers().full_qk_circuit(model.W_E, W_Q, W_K)
    x = torch.tensor([[0, 21, 56]])
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_q") or n.endswith("hook_k"))
    q_pos, k_pos = model.W_pos[2] @ W_Q, model.W_pos[1] @ W_K           # [h, d_head]
    q = cache["q", 0][0, 2] - q_pos                                      # token part of the query at position 2
    k = cache["k", 0][0, 1] - k_pos
    expect_tensor(got[:, 56, 21], (q * k).sum(-1), "QK[h, 56, 21] (query token 56, key token 21)", "n_heads",
                  atol=1e-3)


@pytest.mark.exercise("direct_path_logits")
@pytest.mark.points(1)
def test_direct_path_logits(skiptrigram):
    model, _, tokens = skiptrigram
    # the truth: the model's own logits with every head's output switched off
    want = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: torch.zeros_like(a))])
    n = tokens.shape[1]
    with_pos = (model.W_E[tokens] + model.W_pos[:n]) @ model.W_U
    got = answers().direct_path_logits(model.W_E, model.W_U, tokens)
    expect_tensor(got, want, "direct_path_logits(W_E, W_U, tokens)", "batch, pos, d_vocab", atol=1e-4,
                  hints=[((model.W_E @ model.W_U).T[tokens], "rows of W_E W_U are the current token: you indexed "
                                                              "its transpose"),
                         (with_pos, "shortformer positions reach only queries and keys, never the residual "
                                    "stream: leave W_pos out")])


@pytest.mark.exercise("one_layer_path_expansion")
@pytest.mark.points(2)
def test_one_layer_path_expansion(skiptrigram, induction_1l):
    from toylab.circuits.weights import path_expansion
    from toylab.data import repeated_tokens

    ind_tokens = repeated_tokens(induction_1l.cfg.d_vocab, 10, 4, torch.Generator().manual_seed(0))
    for model, tokens in ((skiptrigram[0], skiptrigram[2]), (induction_1l, ind_tokens)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        pattern = cache["pattern", 0]
        _, _, W_V, W_O = _layer0(model)
        W_E, W_U = model.W_E.detach(), model.W_U.detach()
        want = torch.stack(list(path_expansion(model, tokens).values()))
        wrong_pattern = torch.stack([want[0]] + [torch.einsum("bkq,bkv->bqv", pattern[:, h],
                                                              (W_E @ W_V[h] @ W_O[h] @ W_U)[tokens])
                                                 for h in range(model.cfg.n_heads)])
        n = tokens.shape[1]
        x_pos = W_E[tokens] + model.W_pos.detach()[:n]
        with_pos = torch.stack([want[0]] + [torch.einsum("bqk,bkv->bqv", pattern[:, h], x_pos @ W_V[h] @ W_O[h] @ W_U)
                                            for h in range(model.cfg.n_heads)])
        got = answers().one_layer_path_expansion(W_E, W_V, W_O, W_U, tokens, pattern)
        expect_tensor(got, want, "one_layer_path_expansion(...)", "1 + n_heads, batch, pos, d_vocab", atol=1e-3,
                      hints=[(wrong_pattern, "pattern[b, h, q, k]: sum over the key (source) index k, the last one; "
                                             "you summed over the queries"),
                             (with_pos, "with shortformer positions the values see tokens only: do not add W_pos")])
        expect_tensor(got.sum(0), logits, "the sum of your terms (direct + every head)", "batch, pos, d_vocab",
                      atol=1e-3)


def _brute_force_triples(qk, ov, direct, k):
    """The definition in the docstring, pair by pair (slow but obviously right)."""
    V = qk.shape[0]
    rows = []
    for a in range(V):
        for b in range(V):
            att = float(qk[b, a] - qk[b].mean())
            boost = ov[a] - ov[a].mean()
            c = int((direct[b] + boost).argmax())
            if a == b or 0 in (a, b, c) or c in (a, b):
                continue
            rows.append((att * float(boost[c]), (a, b, c)))
    rows.sort(key=lambda r: -r[0])
    return [t for _, t in rows[:k]]


@pytest.mark.exercise("top_skip_trigrams")
@pytest.mark.points(3)
def test_top_skip_trigrams(skiptrigram):
    from toylab.circuits.weights import full_ov, full_qk

    f = answers().top_skip_trigrams
    g = torch.Generator().manual_seed(11)
    V = 9
    qk, ov, direct = (torch.randn(V, V, generator=g, dtype=torch.float64) for _ in range(3))
    want = _brute_force_triples(qk, ov, direct, 10)
    got = f(qk, ov, direct, 10)
    got = [tuple(int(x) for x in t) for t in got] if isinstance(got, (list, tuple)) else got
    if got == _brute_force_triples(qk.T, ov, direct, 10) and got != want:
        raise AssertionError("qk's rows are queries (B) and columns keys (A): att[B, A] is qk[B, A], not qk[A, B]")
    if got != want:
        got = list(got) if isinstance(got, (list, tuple)) else got
        i = next((j for j, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        raise AssertionError(f"on a random 9-token example, triple number {i + 1} should be "
                             f"{want[i] if i < len(want) else None}, you have {got[i] if i < len(got) else None} "
                             f"(expected {len(want)} triples, got {len(got)}): check C* = argmax_C(direct[B, C] + "
                             f"boost[A, C]) and the exclusions (A == B, BOS, C* in (A, B))")
    # on the trained model, the strongest triples of each head are planted rules of the language
    model, lang, _ = skiptrigram
    rules = set(lang.rules)
    qk_all = full_qk(model, 0).AB / math.sqrt(model.cfg.d_head)
    ov_all = full_ov(model, 0).AB
    d = model.W_E @ model.W_U
    found = set()
    for h in range(model.cfg.n_heads):
        top = [tuple(int(x) for x in t) for t in f(qk_all[h], ov_all[h], d, 5)]
        wrong = [t for t in top if t not in rules]
        assert not wrong, f"head L0H{h}: your top-5 triples {top} include {wrong}, which are not rules of the language"
        found |= set(top)
    assert len(found) == 10, f"the two heads' top-5 triples should be 10 distinct rules, got {sorted(found)}"


@pytest.mark.exercise("copying_score")
@pytest.mark.points(2)
def test_copying_score(induction_1l, skiptrigram):
    from toylab.circuits.copying import copying_scores

    f = answers().copying_score
    theta = 1.0
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    cases = [(torch.diag(torch.tensor([3.0, 1.0, 0.5])), 1.0, "a diagonal matrix with positive entries"),
             (-torch.eye(4), -1.0, "minus the identity"),
             (torch.diag(torch.tensor([2.0, -1.0])), 1.0 / 3.0, "diag(2, -1): (2 - 1) / (2 + 1)"),
             (2.0 * R, math.cos(theta), "a rotation by 1 radian (eigenvalues e^{+-i})")]
    for M, want, what in cases:
        before = M.clone()
        value = f(M)
        hint = "Re(sum lambda) / sum |lambda|"
        if what.startswith("a rotation"):
            hint = ("the eigenvalues are complex, 2 e^{+-i}: the numerator is the real part of their sum (2 cos 1 "
                    "each), the denominator the sum of their moduli |lambda| (2 each), not of the real parts")
        expect_number(value, want, f"the copying score of {what}", tol=1e-4, hint=hint)
        assert torch.equal(M, before), "copying_score changed its input in place"
    # batched: the full OV circuits of the shipped one-layer models, against the library
    for model in (induction_1l, skiptrigram[0]):
        a = model.blocks[0].attn
        M = model.W_E @ a.W_V @ a.W_O @ model.W_U
        want = copying_scores(model)[0]
        expect_tensor(f(M), want, "copying_score of the full OV circuits", "n_heads", atol=2e-3)


@pytest.mark.exercise("attention_pattern")
@pytest.mark.points(2)
def test_attention_pattern(skiptrigram, induction_1l):
    from toylab.data import repeated_tokens

    ind_tokens = repeated_tokens(induction_1l.cfg.d_vocab, 8, 3, torch.Generator().manual_seed(1))
    for model, tokens in ((skiptrigram[0], skiptrigram[2][:, :20]), (induction_1l, ind_tokens)):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        want = cache["pattern", 0]
        W_Q, W_K, _, _ = _layer0(model)
        W_E, W_pos = model.W_E.detach(), model.W_pos.detach()
        n = tokens.shape[1]
        x = W_E[tokens] + W_pos[:n]
        raw = torch.einsum("bid,hde->bhie", x, W_Q) @ torch.einsum("bid,hde->bhie", x, W_K).mT
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        soft = lambda s: torch.softmax(s.masked_fill(future, float("-inf")), -1)
        xt = W_E[tokens]
        tok_only = soft(torch.einsum("bid,hde->bhie", xt, W_Q) @ torch.einsum("bid,hde->bhie", xt, W_K).mT
                        / math.sqrt(model.cfg.d_head))
        hints = [(soft(raw), "divide the scores by sqrt(d_head) before the softmax"),
                 (tok_only, "the queries and keys read W_E[t] + W_pos[i]: you left out the positions"),
                 (torch.softmax(raw / math.sqrt(model.cfg.d_head), -1),
                  "apply the causal mask: a query may not attend to later keys (set their scores to -inf)")]
        got = answers().attention_pattern(W_E, W_pos, W_Q, W_K, tokens)
        expect_tensor(got, want, "attention_pattern(W_E, W_pos, W_Q, W_K, tokens)", "batch, n_heads, pos, pos",
                      atol=1e-4, hints=hints)


def _template(kind: str, n: int) -> torch.Tensor:
    """``[n, n]`` the pure pattern of a behaviour (causal rows summing to 1)."""
    q = torch.arange(n)
    if kind == "uniform":
        return torch.ones(n, n).tril() / (q + 1)[:, None]
    key = {"previous": (q - 1).clamp_min(0), "self": q, "first": torch.zeros_like(q)}[kind]
    return torch.zeros(n, n).index_put_((q, key), torch.ones(n))


@pytest.mark.exercise("classify_head")
@pytest.mark.points(2)
def test_classify_head(induction_model):
    from toylab.data import repeated_tokens
    from toylab.circuits.scores import previous_token_score

    f = answers().classify_head
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    n = 14
    noise = torch.rand(6, n, n, generator=g).tril()
    noise = noise / noise.sum(-1, keepdim=True)
    for kind in ("previous", "self", "first", "uniform"):
        w = 0.65 + 0.25 * float(torch.rand((), generator=g))  # the behaviour's share; the rest is noise
        pattern = w * _template(kind, n) + (1 - w) * noise
        before = pattern.clone()
        got = f(pattern)
        assert torch.equal(pattern, before), "classify_head changed the pattern in place: work on a copy"
        if got == kind:
            continue
        msg = f"a head that puts {w:.2f} of its attention on the {kind!r} key (the rest spread at random): you said {got!r}"
        if (kind, got) in (("previous", "self"), ("self", "previous")):
            msg += ": the previous position of query q is key q - 1, one column LEFT of the diagonal"
        elif kind == "uniform":
            msg += ": no behaviour gets more than half of the attention here, so the answer is 'uniform'"
        elif got == "uniform":
            msg += f": compare the mean weight on each key with 1/2, and average over the destinations q >= 1"
        raise AssertionError(msg)
    # the boundaries: exactly half is not "more than half", and position 0 is not a destination
    half = 0.5 * _template("previous", n) + 0.5 * _template("uniform", n)
    half[1:, :] = 0.0
    for q in range(1, n):
        half[q, q - 1] = 0.5
        others = [k for k in range(q + 1) if k != q - 1]
        half[q, others] = 0.5 / len(others)
    half[0, 0] = 1.0
    got = f(half[None].repeat(2, 1, 1).double())
    assert got == "uniform", (f"a head that puts exactly 0.5 of its attention on the previous key: you said {got!r}, "
                              "but 'previous' needs MORE than half (> 0.5, not >= 0.5): the boundary belongs to 'uniform'")
    m = 4
    selfish = torch.zeros(m, m, dtype=torch.float64)
    selfish[0, 0] = 1.0
    for q in range(1, m):
        selfish[q, q] = 0.45
        selfish[q, :q] = 0.55 / q
    got = f(selfish[None])
    assert got == "uniform", (f"a head that puts 0.45 on itself at every destination q >= 1: you said {got!r}; "
                              "position 0 (which can only attend to itself) is not a destination: average over "
                              "q >= 1 only")
    # the shipped model's layer-0 heads: the truth from the library's detectors
    toks = repeated_tokens(induction_model.cfg.d_vocab, 8, 8, g)
    _, cache = induction_model.run_with_cache(toks, names_filter="blocks.0.attn.hook_pattern")
    pat = cache["pattern", 0]
    prev = previous_token_score(pat)
    for h in range(pat.shape[1]):
        if float(prev[h]) > 0.6:
            got = f(pat[:, h])
            assert got == "previous", (f"head L0H{h} of induction-2l has previous-token score {float(prev[h]):.2f}, "
                                       f"but you classified it as {got!r}")


# ------------------------------------------------------------------ one_head_votes
def _separable_by_search(tables: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: can ``sign(b + x . w)`` match each table ``[n, 2^k]`` for an integer ``w`` in
    ``[-3, 3]^k`` (and a threshold ``b`` between the sums)? For ``k <= 3`` this grid holds every
    threshold function; the counts 14 of 16 (``k = 2``) and 104 of 256 (``k = 3``) check it."""
    import itertools

    k = int(round(math.log2(tables.shape[1])))
    xs = torch.tensor(list(itertools.product((0, 1), repeat=k)), dtype=torch.float64)         # [2^k, k]
    W = torch.tensor(list(itertools.product(range(-3, 4), repeat=k)), dtype=torch.float64)   # [n_w, k]
    S = xs @ W.T                                                                               # [2^k, n_w]
    out = []
    for t in tables.bool():
        hi = S.masked_fill(~t[:, None], float("inf")).min(0).values    # smallest sum where c1 must win
        lo = S.masked_fill(t[:, None], float("-inf")).max(0).values    # largest sum where c2 must win
        out.append(bool((lo < hi).any()))
    return torch.tensor(out)


def _all_tables(k: int) -> torch.Tensor:
    """``[2^(2^k), 2^k]`` every truth table of ``k`` inputs, rows in itertools.product order."""
    n = 2 ** k
    codes = torch.arange(2 ** n)
    return ((codes[:, None] >> torch.arange(n)) & 1).bool()


def _vote_logit_diffs(votes: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Write ``votes`` into a real one-layer, one-head model with uniform attention and return
    ``logit[c1] - logit[c2]`` at the trigger for every marker set ``x`` (``[2^k]``, product order).

    Tokens: 0 BOS, 1..k markers, k+1 filler, k+2 trigger, k+3 = c1, k+4 = c2; one-hot embeddings
    and unembeddings; W_Q = W_K = 0, so the trigger attends equally to every position. A sequence
    is [BOS, k slots (a marker or filler, the slots in a random order), trigger]."""
    import itertools

    from toylab.model import AttnOnlyTransformer, ModelConfig

    V = k + 5
    m = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=k + 2, d_model=V, n_layers=1, n_heads=1,
                                        positional="none"), seed=0)
    a = m.blocks[0].attn
    m.W_E.data = torch.eye(V)
    m.W_U.data = torch.eye(V)
    a.W_Q.data.zero_()
    a.W_K.data.zero_()
    a.W_V.data = torch.eye(V)[None]
    vote_of = torch.zeros(V)
    vote_of[1:k + 1] = votes[:k].float()
    vote_of[0] = float(votes[k])
    W_O = torch.zeros(1, V, V)
    W_O[0, :, k + 3] = vote_of / 2
    W_O[0, :, k + 4] = -vote_of / 2
    a.W_O.data = W_O
    rows = []
    for x in itertools.product((0, 1), repeat=k):
        slots = [i + 1 if x[i] else k + 1 for i in range(k)]
        slots = [slots[i] for i in torch.randperm(k, generator=g).tolist()]
        rows.append([0, *slots, k + 2])
    logits = m(torch.tensor(rows))[:, -1]
    return logits[:, k + 3] - logits[:, k + 4]


def _describe(x: tuple) -> str:
    present = [f"m_{i}" for i, xi in enumerate(x) if xi]
    return "{" + ", ".join(present) + "}" if present else "no marker"


@pytest.mark.exercise("one_head_votes")
@pytest.mark.points(3)
def test_one_head_votes():
    import itertools

    f = answers().one_head_votes
    # the ground truth: which tables a sum with one term per present token can split
    truth = {k: _separable_by_search(_all_tables(k)) for k in (1, 2, 3)}
    assert [int(truth[k].sum()) for k in (1, 2, 3)] == [4, 14, 104], "grader self-check: threshold counts"
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    cases = [(2, i) for i in range(16)]                                   # every table of two markers
    nonsep3 = torch.nonzero(~truth[3]).flatten()
    sep3 = torch.nonzero(truth[3]).flatten()
    cases += [(3, int(i)) for i in nonsep3[torch.randperm(len(nonsep3), generator=g)[:4]]]
    cases += [(3, int(i)) for i in sep3[torch.randperm(len(sep3), generator=g)[:8]]]
    cases += [(1, i) for i in range(4)]
    for k, code in cases:
        flat = _all_tables(k)[code]
        table = flat.reshape((2,) * k)
        before = table.clone()
        got = f(table)
        assert torch.equal(table, before), "one_head_votes changed truth_table in place"
        shown = ", ".join(f"{_describe(x)}: {'c1' if bool(v) else 'c2'}"
                          for x, v in zip(itertools.product((0, 1), repeat=k), flat))
        possible = bool(truth[k][code])
        if got is None:
            if possible:
                raise AssertionError(
                    f"for the table ({shown}) you answered None, but one head can compute it: its answer is "
                    "the sign of a sum with one vote per present marker plus a background vote, and some "
                    "votes split this table (every AND-, OR- or majority-like table can be split so; only "
                    "XOR-like tables cannot)")
            continue
        if not possible:
            raise AssertionError(
                f"for the table ({shown}) you returned votes, but no single head can compute it: it is "
                "XOR-like. Write the conditions for two markers whose mixed pairs win and pure pairs lose "
                "(or the reverse): the two sums that must be positive add up to the same number as the two "
                "that must be negative. Return None")
        assert isinstance(got, torch.Tensor) and tuple(got.shape) == (k + 1,), (
            f"expected None or a float tensor votes [k + 1] = [{k + 1}] (one vote per marker, then the "
            f"background vote), got {list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        diff = _vote_logit_diffs(got.detach(), k, g)
        wins = diff > 0
        if torch.equal(wins, ~flat) and bool((diff.abs() > 1e-6).all()):
            raise AssertionError(
                f"for the table ({shown}) your votes give the opposite winner everywhere: True means c1 "
                "must win, i.e. votes[k] + sum_i x_i votes[i] > 0")
        if k > 1:
            flipped = _vote_logit_diffs(torch.cat([got[:k].flip(0), got[k:]]).detach(), k, g) > 0
            if torch.equal(flipped, flat) and not torch.equal(wins, flat):
                raise AssertionError(
                    f"for the table ({shown}) your votes are in reversed marker order: dimension i of "
                    "truth_table is marker m_i, and votes[i] is its vote")
        for x, d, want in zip(itertools.product((0, 1), repeat=k), diff, flat):
            if abs(float(d)) <= 1e-6:
                raise AssertionError(
                    f"for the table ({shown}) with {_describe(x)} present the head's logit difference is "
                    f"{float(d):.2g}, a tie: no output wins. Choose votes whose sums are never 0 (e.g. a "
                    "background vote that is a half-integer when the marker votes are integers)")
            if bool(d > 0) != bool(want):
                raise AssertionError(
                    f"for the table ({shown}) the one-head model built from your votes {got.tolist()} "
                    f"predicts {'c1' if bool(d > 0) else 'c2'} when {_describe(x)} is present, but the "
                    f"table says {'c1' if bool(want) else 'c2'}. Check votes[k] (the background: it alone "
                    "decides when no marker is present) and the sum for this marker set")


# ------------------------------------------------------------------ skip_trigram_bugs
def _rule_head_raises(rules, V: int, filler: int) -> set:
    """Build the head that implements ``rules`` exactly (one-hot embeddings; QK[B, A] = 6 for every
    rule, OV[A, C] = 4) and measure, for every pair (A, B) of rule tokens, which tokens C the head
    raises by more than 2 logits when A is in the context [BOS, A, filler x 6, B] (against the same
    context with A replaced by filler). Returns the set of raised triples (A, B, C)."""
    from toylab.model import AttnOnlyTransformer, ModelConfig

    m = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=9, d_model=V, n_layers=1, n_heads=1,
                                        positional="none"), seed=0)
    a = m.blocks[0].attn
    m.W_E.data = torch.eye(V)
    m.W_U.data = torch.eye(V)
    QK, OV = torch.zeros(V, V), torch.zeros(V, V)
    for A, B, C in rules:
        QK[B, A] = 6.0 * math.sqrt(V)         # the model divides scores by sqrt(d_head)
        OV[A, C] = 4.0
    a.W_Q.data, a.W_K.data = QK[None].clone(), torch.eye(V)[None]
    a.W_V.data, a.W_O.data = OV[None].clone(), torch.eye(V)[None]
    tokens = sorted({t for r in rules for t in r})
    pairs = [(A, B) for A in tokens for B in tokens if A != B]
    with_a = torch.tensor([[0, A] + [filler] * 6 + [B] for A, B in pairs])
    without = with_a.clone()
    without[:, 1] = filler
    rise = m(with_a)[:, -1] - m(without)[:, -1]                      # [n_pairs, V]
    return {(A, B, int(C)) for (A, B), r in zip(pairs, rise) for C in torch.nonzero(r > 2.0).flatten()}


@pytest.mark.hidden
@pytest.mark.exercise("skip_trigram_bugs")
@pytest.mark.points(2)
def test_skip_trigram_bugs():
    f = answers().skip_trigram_bugs
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    for _ in range(4):
        # a small language: 3 sources, 4 destinations, 5 outputs, 5-7 rules (sources and
        # destinations shared between rules, as in "keep ... in -> mind", "keep ... at -> bay")
        perm = (torch.randperm(12, generator=g) + 2).tolist()      # 0 = BOS, 1 = filler
        srcs, dsts, outs = perm[:3], perm[3:7], perm[7:12]
        n_rules = int(torch.randint(5, 8, (), generator=g))
        pairs = [(a, b) for a in srcs for b in dsts]
        chosen = torch.randperm(len(pairs), generator=g)[:n_rules].tolist()
        rules = [(pairs[i][0], pairs[i][1], outs[int(torch.randint(0, 5, (), generator=g))]) for i in chosen]
        before = list(rules)
        got = f(rules)
        assert rules == before, "skip_trigram_bugs changed `rules` in place"
        try:
            got = {tuple(int(x) for x in t) for t in got}
        except (TypeError, ValueError):
            raise AssertionError(f"expected a set of (A, B, C) triples of ints, got {got!r}") from None
        want = _rule_head_raises(rules, 14, 1) - set(rules)
        if got == want:
            continue
        msg = f"for the rules {sorted(rules)} you predicted {sorted(got)}; the head raises {sorted(want)}"
        if got & set(rules):
            msg += f". {sorted(got & set(rules))} are rules, not mistakes: leave them out"
        elif not got:
            msg += (". The head does make mistakes: after attending to A it adds the same OV row of A, which "
                    "raises every output of A's rules, whichever B is asking")
        else:
            by_b = {}
            for a, b, c in rules:
                by_b.setdefault(b, set()).add(c)
            if got == {(a, b, c) for a, b, _ in rules for c in by_b[b]} - set(rules):
                msg += (". You grouped the rules by their destination B: but B only decides WHERE the head "
                        "looks; what it adds depends on the attended source A alone")
            elif got - want:
                msg += (f". {sorted(got - want)[:3]} ... are not raised: B attends to A only if some rule "
                        "(A, B, .) exists; otherwise A gets little attention and its OV row little weight")
            else:
                msg += f". Missing: {sorted(want - got)[:3]}: attending to A raises every output of A's rules"
        raise AssertionError(msg)
