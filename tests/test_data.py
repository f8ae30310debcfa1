"""Tests for toylab.data: synthetic languages with known rules, probes, offline text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from toylab.data import (BOS, BigramLanguage, CharTokenizer, InductionData, SkipTrigramLanguage,
                         TextData, TextWithRepeatsData, corpus_fingerprint, induction_targets, load_corpus,
                         make_dataset, repeated_tokens, repeated_tokens_with_gap)
from toylab.data.text import ALLOWED_CHARS


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_sequences(tokens: torch.Tensor, batch: int, n_ctx: int, d_vocab: int) -> None:
    assert tokens.dtype == torch.long
    assert tokens.shape == (batch, n_ctx)
    assert (tokens[:, 0] == BOS).all(), "every sequence must start with BOS"
    assert (tokens[:, 1:] != BOS).all(), "BOS must appear only at position 0"
    assert tokens.min() >= 0 and tokens.max() < d_vocab


# ---------------------------------------------------------------------- bigram
@pytest.fixture(scope="module")
def bigram() -> BigramLanguage:
    return BigramLanguage(d_vocab=64, n_ctx=32, seed=3)


@pytest.fixture(scope="module")
def bigram_sample(bigram: BigramLanguage) -> torch.Tensor:
    return bigram.sample(2000, gen(1))


def test_bigram_transition_structure(bigram: BigramLanguage) -> None:
    T = bigram.transition
    assert T.dtype == torch.float64 and T.shape == (64, 64)
    assert torch.allclose(T.sum(dim=1), torch.ones(64, dtype=torch.float64), atol=1e-12)
    assert (T[:, 0] == 0).all(), "nothing may transition to BOS"
    assert torch.allclose(T[0, 1:], torch.full((63,), 1 / 63, dtype=torch.float64))
    assert ((T[1:] > 0).sum(dim=1) == bigram.n_successors).all(), "rows must stay sparse"
    # Zipf weights 1/rank: every row a >= 1 holds the same sorted values.
    w = 1.0 / torch.arange(1, 9, dtype=torch.float64)
    sorted_rows = T[1:].sort(dim=1, descending=True).values[:, :8]
    assert torch.allclose(sorted_rows, (w / w.sum()).expand(63, 8))


def test_bigram_determinism() -> None:
    a, b, c = BigramLanguage(seed=5), BigramLanguage(seed=5), BigramLanguage(seed=6)
    assert torch.equal(a.transition, b.transition)
    assert torch.equal(a.sample(16, gen(2)), b.sample(16, gen(2)))
    assert not torch.equal(a.transition, c.transition)
    assert not torch.equal(a.sample(16, gen(2)), a.sample(16, gen(3)))


def test_bigram_sample_matches_transition(bigram: BigramLanguage,
                                          bigram_sample: torch.Tensor) -> None:
    check_sequences(bigram_sample, 2000, 32, 64)
    V = bigram.d_vocab
    pairs = bigram_sample[:, :-1] * V + bigram_sample[:, 1:]
    counts = torch.bincount(pairs.flatten(), minlength=V * V).view(V, V).double()
    n = counts.sum(dim=1, keepdim=True)
    P = bigram.transition
    assert (counts[P == 0] == 0).all(), "a zero-probability transition was sampled"
    seen = n.squeeze(1) > 0
    emp = counts[seen] / n[seen]
    tol = 5 * torch.sqrt(P[seen] * (1 - P[seen]) / n[seen]) + 1e-9
    assert ((emp - P[seen]).abs() <= tol).all()
    assert (emp - P[seen]).abs().max() < 0.06


def test_bigram_stationary_matches_frequencies(bigram: BigramLanguage,
                                               bigram_sample: torch.Tensor) -> None:
    w = bigram.stationary
    assert w.dtype == torch.float64 and w.shape == (64,)
    assert math.isclose(float(w.sum()), 1.0, abs_tol=1e-12)
    assert math.isclose(float(w[BOS]), 1 / 31, abs_tol=1e-12)
    freq = torch.bincount(bigram_sample[:, :-1].flatten(), minlength=64).double()
    freq /= freq.sum()
    assert (freq - w).abs().max() < 0.003


def test_frequency_weighted_kl(bigram: BigramLanguage) -> None:
    P = bigram.transition
    assert bigram.frequency_weighted_kl(P) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.full((64, 64), 1 / 64, dtype=torch.float64)
    kl = bigram.frequency_weighted_kl(uniform)
    w = bigram.stationary / bigram.stationary.sum()
    expected = sum(float(w[a]) * sum(float(P[a, b]) * math.log(float(P[a, b]) * 64)
                                     for b in range(64) if P[a, b] > 0) for a in range(64))
    assert kl > 0.5 and kl == pytest.approx(expected, rel=1e-9)
    Q = P.clone().float()  # float32 input is accepted
    Q[1] = torch.roll(Q[1], 1)  # row 1 now misses part of the true support
    assert bigram.frequency_weighted_kl(Q) == math.inf


# ---------------------------------------------------------------- skip-trigram
@pytest.fixture(scope="module")
def skip() -> SkipTrigramLanguage:
    return SkipTrigramLanguage(d_vocab=64, n_ctx=32, seed=1)


@pytest.fixture(scope="module")
def skip_sample(skip: SkipTrigramLanguage) -> torch.Tensor:
    return skip.sample(2000, gen(4))


def test_skip_trigram_rules_are_disjoint(skip: SkipTrigramLanguage) -> None:
    A = [r[0] for r in skip.rules]
    B = [r[1] for r in skip.rules]
    C = [r[2] for r in skip.rules]
    assert len(skip.rules) == 12
    assert len(set(A)) == 12 and len(set(C)) == 12, "each rule needs its own A and C"
    assert len(set(B)) == 4 and all(B.count(b) == 3 for b in set(B))
    assert not (set(A) & set(B)) and not (set(A) & set(C)) and not (set(B) & set(C))
    assert BOS not in set(A) | set(B) | set(C)
    assert all(isinstance(x, int) for r in skip.rules for x in r)
    assert skip.background.seed == skip.seed
    assert torch.allclose(skip.background.transition.sum(1), torch.ones(64, dtype=torch.float64))


def test_skip_trigram_determinism() -> None:
    a, b = SkipTrigramLanguage(seed=2), SkipTrigramLanguage(seed=2)
    assert a.rules == b.rules
    assert torch.equal(a.sample(32, gen(0)), b.sample(32, gen(0)))
    assert SkipTrigramLanguage(seed=3).rules != a.rules


def reference_active_rule(seq: list[int], t: int, rules: list[tuple[int, int, int]]) -> int:
    """Plain-Python reading of the rule: the rule for x_t whose A occurred last before t."""
    best, best_pos = -1, -1
    for i, (a, b, _) in enumerate(rules):
        if seq[t] == b:
            positions = [p for p in range(1, t) if seq[p] == a]
            if positions and positions[-1] > best_pos:
                best, best_pos = i, positions[-1]
    return best


def test_skip_trigram_active_rules_match_reference(skip: SkipTrigramLanguage,
                                                   skip_sample: torch.Tensor) -> None:
    tokens = skip_sample[:40]
    active = skip.active_rules(tokens)
    for i, seq in enumerate(tokens.tolist()):
        for t in range(len(seq)):
            assert active[i, t] == reference_active_rule(seq, t, skip.rules), (i, t)


def test_every_rule_fires(skip: SkipTrigramLanguage) -> None:
    tokens = skip.sample(256, gen(7))
    check_sequences(tokens, 256, 32, 64)
    active = skip.active_rules(tokens)[:, :-1]
    counts = torch.bincount(active[active >= 0], minlength=12)
    assert (counts >= 10).all(), f"rule firings per rule in 256 sequences: {counts.tolist()}"
    assert (active >= 0).sum(1).float().mean() > 1.5


def test_skip_trigram_rule_probability(skip: SkipTrigramLanguage,
                                       skip_sample: torch.Tensor) -> None:
    active = skip.active_rules(skip_sample)[:, :-1]
    nxt = skip_sample[:, 1:]
    hits, expected_hits, total = 0.0, 0.0, 0
    for i, (_, b, c) in enumerate(skip.rules):
        mask = active == i
        n = int(mask.sum())
        expected = skip.p_rule + (1 - skip.p_rule) * float(skip.background.transition[b, c])
        observed = float((nxt[mask] == c).double().mean())
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-9
        hits += observed * n
        expected_hits += expected * n
        total += n
    p = expected_hits / total
    assert abs(hits / total - p) < 4 * math.sqrt(p * (1 - p) / total)


def test_next_token_distribution_matches_samples(skip: SkipTrigramLanguage,
                                                 skip_sample: torch.Tensor) -> None:
    active = skip.active_rules(skip_sample)[:, :-1]
    for i in (0, 5):
        where = (active == i).nonzero().tolist()
        # every prefix in which rule i fires has the same exact next-token distribution
        truth = skip.next_token_distribution(skip_sample[where[0][0], :where[0][1] + 1])
        for seq, t in where[1:6]:
            assert torch.equal(skip.next_token_distribution(skip_sample[seq, :t + 1]), truth)
        assert truth.dtype == torch.float64 and math.isclose(float(truth.sum()), 1, abs_tol=1e-12)
        rows = torch.tensor(where)
        following = skip_sample[rows[:, 0], rows[:, 1] + 1]
        emp = torch.bincount(following, minlength=64).double() / len(rows)
        tol = 5 * torch.sqrt(truth * (1 - truth) / len(rows)) + 1e-9
        assert ((emp - truth).abs() <= tol).all()


def test_next_token_distribution_by_hand(skip: SkipTrigramLanguage) -> None:
    (a0, b0, c0), (a4, b4, c4) = skip.rules[0], skip.rules[4]
    assert b0 == b4  # rules 0 and 4 share a trigger (i mod n_triggers)
    filler = skip.rules[1][2]
    bg = skip.background.transition[b0]
    p = skip.p_rule

    def dist(*tokens: int) -> torch.Tensor:
        return skip.next_token_distribution(torch.tensor([BOS, *tokens]))

    fired = dist(a0, filler, b0)
    assert fired[c0] == pytest.approx(p + (1 - p) * bg[c0])
    assert torch.allclose(fired[torch.arange(64) != c0], (1 - p) * bg[torch.arange(64) != c0])
    assert torch.equal(dist(filler, b0), bg), "no A earlier: background"
    assert torch.equal(dist(b0, a0), skip.background.transition[a0]), "A after B: background"
    assert dist(a0, a4, b0)[c4] == pytest.approx(p + (1 - p) * bg[c4])
    assert dist(a0, a4, b0)[c4] > dist(a0, a4, b0)[c0], "the most recent A wins"
    assert dist(a4, a0, b0)[c0] > dist(a4, a0, b0)[c4]


# ------------------------------------------------------------------- induction
def test_induction_repeats_to_the_end_at_varying_offsets() -> None:
    ds = InductionData(d_vocab=64, n_ctx=32, min_offset=2, max_offset=20)
    batch = ds.sample_batch(256, gen(0))
    check_sequences(batch.tokens, 256, 32, 64)
    assert batch.has_repeat.all()
    o, d = batch.offset, batch.dst_start
    assert (o >= 2).all() and (o <= 20).all() and (d >= o + 1).all() and (d <= 30).all()
    assert o.unique().numel() > 5 and d.unique().numel() > 5
    for i in range(256):
        oi, di = int(o[i]), int(d[i])
        toks = batch.tokens[i]
        assert torch.equal(toks[di:], toks[di - oi:32 - oi])  # x_p = x_{p-o} from d on
        expected = torch.zeros(32, dtype=torch.bool)
        expected[di + 1:] = True
        assert torch.equal(batch.is_repeat[i], expected)
    # is_repeat positions are predictable: the previous token occurred o earlier, followed by this one
    rows, pos = batch.is_repeat.nonzero(as_tuple=True)
    off = batch.offset[rows]
    assert torch.equal(batch.tokens[rows, pos], batch.tokens[rows, pos - off])
    assert torch.equal(batch.tokens[rows, pos - 1], batch.tokens[rows, pos - 1 - off])
    # every position from 2 on is sometimes the target of an induction head (a key after an earlier token)
    big = ds.sample_batch(2048, gen(1))
    target_pos = (big.is_repeat.nonzero(as_tuple=True)[1] - big.offset[big.is_repeat.nonzero(as_tuple=True)[0]])
    assert set(range(2, 30)) <= set(target_pos.tolist())


def test_induction_periodic_fraction() -> None:
    batch = InductionData(p_periodic=0.5).sample_batch(2000, gen(2))
    periodic = batch.dst_start == batch.offset + 1
    assert 0.45 < periodic.double().mean() < 0.6  # p_periodic plus uniform starts that land on o+1
    always = InductionData(p_periodic=1.0).sample_batch(200, gen(2))
    assert torch.equal(always.dst_start, always.offset + 1)
    never = InductionData(p_periodic=0.0).sample_batch(2000, gen(2))
    assert (never.dst_start == never.offset + 1).double().mean() < 0.15


def test_induction_sample_consistency() -> None:
    ds = InductionData(seed=0)
    tokens, is_repeat = ds.sample_with_truth(8, gen(3))
    assert is_repeat.dtype == torch.bool and is_repeat.shape == tokens.shape
    assert torch.equal(ds.sample(8, gen(3)), tokens)
    assert not torch.equal(ds.sample(8, gen(4)), tokens)
    none = InductionData(p_repeat=0.0).sample_batch(64, gen(0))
    assert not none.is_repeat.any() and not none.has_repeat.any()
    half = InductionData(p_repeat=0.5).sample_batch(1000, gen(0))
    assert 0.4 < half.has_repeat.double().mean() < 0.6


def sequential_reference(tokens, bos, dst, offset, end):
    """The generating rule written the slow way: x_0 := BOS where has_bos, then
    x_p := x_{p-o} for p = d..e-1, in order (so short offsets make periodic tails)."""
    x = tokens.clone()
    for i in range(x.shape[0]):
        if bos[i]:
            x[i, 0] = BOS
        for p in range(int(dst[i]), int(end[i])):
            x[i, p] = x[i, p - int(offset[i])]
    return x


def test_induction_mixture_follows_its_rule() -> None:
    ds = InductionData(d_vocab=64, n_ctx=32, p_bos=0.7, p_end=0.4)
    b = ds.sample_batch(3000, gen(5))
    assert b.has_bos is not None and b.has_bos.dtype == torch.bool
    assert 0.65 < b.has_bos.double().mean() < 0.75
    assert torch.equal(b.tokens[:, 0] == BOS, b.has_bos), "BOS exactly where has_bos"
    assert (b.tokens[:, 1:] != BOS).all() and b.tokens.max() < 64
    first = b.has_bos.long()
    end = b.dst_start + b.length
    periodic = b.dst_start == first + b.offset
    assert (b.dst_start >= first + b.offset).all() and (b.length >= 2).all() and (end <= 32).all()
    # drawn periodic (p_periodic) runs to the end; a uniform start landing on f + o may stop
    assert (end[periodic] == 32).double().mean() > 0.85
    stops = end < 32
    assert 0.3 < stops.double().mean() < 0.55 and (b.length[stops] == 2).any()
    ref = sequential_reference(b.tokens, b.has_bos, b.dst_start, b.offset, end)
    assert torch.equal(ref, b.tokens), "re-applying the rule changes nothing"
    # ground truth: is_repeat exactly at d < p < e, and those positions are predictable
    pos = torch.arange(32)
    expected = (pos > b.dst_start[:, None]) & (pos < end[:, None])
    assert torch.equal(b.is_repeat, expected)
    rows, p = b.is_repeat.nonzero(as_tuple=True)
    o = b.offset[rows]
    assert torch.equal(b.tokens[rows, p], b.tokens[rows, p - o])
    assert torch.equal(b.tokens[rows, p - 1], b.tokens[rows, p - 1 - o])
    # a stopped copy is followed by fresh tokens: right after it, the copy rule mostly fails
    r = stops.nonzero().squeeze(1)
    e = end[r]
    after_matches = (b.tokens[r, e] == b.tokens[r, e - b.offset[r]]).double().mean()
    assert after_matches < 0.1, after_matches
    # every start position and every offset occurs (repeats start anywhere, with or without BOS)
    assert set(b.dst_start[~b.has_bos].tolist()) >= set(range(2, 30))
    assert set(b.offset.tolist()) == set(range(2, 21))


def test_induction_vectorised_rule_matches_the_sequential_one_on_fresh_noise() -> None:
    # build the noise independently, apply the generator's (d, o, e) sequentially, compare
    for kw in (dict(), dict(p_bos=0.5, p_end=0.5), dict(min_offset=1, max_offset=3, p_end=0.9, p_bos=0.0)):
        ds = InductionData(d_vocab=50, n_ctx=24, max_offset=min(kw.get("max_offset", 20), 21), **{
            k: v for k, v in kw.items() if k != "max_offset"})
        b = ds.sample_batch(400, gen(7))
        noise = torch.randint(1, 50, (400, 24), generator=gen(7))  # the generator's first draw
        ref = sequential_reference(noise, b.has_bos, b.dst_start, b.offset, b.dst_start + b.length)
        assert torch.equal(ref, b.tokens), kw


def test_induction_defaults_are_the_original_generator() -> None:
    legacy = {"kind": "induction", "d_vocab": 128, "n_ctx": 32, "seed": 0, "min_offset": 2,
              "max_offset": 20, "p_repeat": 1.0, "p_periodic": 0.5}
    ds = make_dataset(legacy)  # a spec written before p_bos / p_end existed still loads
    assert (ds.p_bos, ds.p_end) == (1.0, 0.0) and ds.spec == legacy
    b = ds.sample_batch(500, gen(1))
    assert (b.tokens[:, 0] == BOS).all() and (b.dst_start + b.length == 32).all()
    mixed = InductionData(p_bos=0.5, p_end=0.3)
    assert mixed.spec["p_bos"] == 0.5 and make_dataset(mixed.spec).spec == mixed.spec
    for bad in ({"p_bos": 1.5}, {"p_end": -0.1}, {"p_end": float("nan")}):
        with pytest.raises(ValueError, match="p_bos|p_end"):
            InductionData(**bad)


# ---------------------------------------------------------------------- probes
def test_repeated_tokens() -> None:
    x = repeated_tokens(50, 10, 7, gen(0))
    assert x.shape == (7, 21) and x.dtype == torch.long
    check_sequences(x, 7, 21, 50)
    assert torch.equal(x[:, 1:11], x[:, 11:])
    assert torch.equal(repeated_tokens(50, 10, 7, gen(0)), x)


def test_repeated_tokens_with_gap_and_targets() -> None:
    half, gap = 6, 3
    x = repeated_tokens_with_gap(50, half, gap, 5, gen(1))
    check_sequences(x, 5, 1 + 2 * half + gap, 50)
    offset = half + gap
    assert torch.equal(x[:, 1:1 + half], x[:, 1 + offset:])
    targets = induction_targets(half, gap)
    assert targets.shape == (1 + 2 * half + gap,) and targets.dtype == torch.long
    dest = (targets >= 0).nonzero().squeeze(1)
    assert dest.tolist() == list(range(1 + offset, 1 + 2 * half + gap))
    # the source is the token right after the earlier occurrence of the destination token
    src = targets[dest]
    assert torch.equal(src, dest - offset + 1)
    assert torch.equal(x[:, src - 1], x[:, dest])
    assert induction_targets(3).tolist() == [-1, -1, -1, -1, 2, 3, 4]


# ------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


def test_corpus(corpus: str) -> None:
    assert isinstance(corpus, str) and len(corpus) > 100_000
    assert set(corpus) <= ALLOWED_CHARS
    assert "\t" not in corpus and "\n\n\n" not in corpus
    assert not any(line.startswith((">>>", "...")) for line in corpus.splitlines())
    assert load_corpus() is corpus  # cached
    fp = corpus_fingerprint(corpus)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert corpus_fingerprint(corpus + " ") != fp
    assert " the " in corpus  # it is English


def test_char_tokenizer(corpus: str) -> None:
    tok = CharTokenizer(corpus)
    assert tok.vocab[0] == "<bos>" and tok.d_vocab == len(tok.alphabet) + 1
    assert list(tok.alphabet) == sorted(set(corpus))
    piece = corpus[5000:7000]
    ids = tok.encode(piece)
    assert ids.dtype == torch.long and ids.shape == (2000,) and ids.min() >= 1
    assert tok.decode(ids) == piece
    assert tok.decode(tok.encode(piece, bos=True)) == piece
    assert tok.encode("ab", bos=True)[0] == BOS
    assert CharTokenizer.from_alphabet(tok.spec["alphabet"]).vocab == tok.vocab
    json.dumps(tok.spec)
    with pytest.raises(ValueError, match="'\xe9' at position 3"):
        tok.encode("caf\xe9")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([1, tok.d_vocab])
    with pytest.raises(ValueError, match="outside"):
        tok.decode(torch.tensor([-1]))


def test_text_data(corpus: str) -> None:
    ds = TextData(n_ctx=48, seed=0)
    x = ds.sample(16, gen(0))
    check_sequences(x, 16, 48, ds.d_vocab)
    train_text = ds.tokenizer.decode(ds.splits["train"])
    val_text = ds.tokenizer.decode(ds.splits["validation"])
    assert train_text + val_text == corpus
    assert len(val_text) == len(corpus) - int(0.9 * len(corpus))
    for row in x:
        assert ds.tokenizer.decode(row) in train_text
    for row in ds.sample(4, gen(1), split="validation"):
        assert ds.tokenizer.decode(row) in val_text
    assert torch.equal(ds.sample(16, gen(0)), x)


def test_text_with_repeats() -> None:
    ds = TextWithRepeatsData(n_ctx=64, min_len=8, max_len=24, p_repeat=1.0)
    batch = ds.sample_batch(64, gen(0))
    check_sequences(batch.tokens, 64, 64, ds.d_vocab)
    assert batch.offset.unique().numel() > 5
    rows, pos = batch.is_repeat.nonzero(as_tuple=True)
    assert len(rows) == int((batch.length - 1).sum())
    assert torch.equal(batch.tokens[rows, pos], batch.tokens[rows, pos - batch.offset[rows]])
    tokens, is_repeat = ds.sample_with_truth(64, gen(0))
    assert torch.equal(tokens, batch.tokens) and torch.equal(is_repeat, batch.is_repeat)
    assert ds.tokenizer.decode(tokens[0]) != ds.tokenizer.decode(TextData(n_ctx=64).sample(1, gen(0))[0])


# ------------------------------------------------------------------------ spec
SPEC_DATASETS = [
    lambda: BigramLanguage(d_vocab=20, n_ctx=10, seed=4, zipf_exponent=1.5, n_successors=3),
    lambda: SkipTrigramLanguage(d_vocab=40, n_ctx=16, seed=9, n_rules=6, n_triggers=2,
                                p_rule=0.7),
    lambda: InductionData(d_vocab=30, n_ctx=40, seed=2, min_offset=3, max_offset=9, p_repeat=0.8),
    lambda: TextData(n_ctx=24, seed=1),
    lambda: TextWithRepeatsData(n_ctx=40, seed=0, min_len=5, max_len=15, p_repeat=0.9),
]


@pytest.mark.parametrize("build", SPEC_DATASETS,
                         ids=["bigram", "skip", "induction", "text", "text_repeats"])
def test_spec_round_trip(build) -> None:
    ds = build()
    spec = ds.spec
    assert json.loads(json.dumps(spec)) == spec
    assert spec["kind"] == ds.kind
    again = make_dataset(json.loads(json.dumps(spec)))
    assert type(again) is type(ds) and again.spec == spec
    assert (again.d_vocab, again.n_ctx) == (ds.d_vocab, ds.n_ctx)
    assert torch.equal(again.sample(8, gen(5)), ds.sample(8, gen(5)))
    if isinstance(ds, BigramLanguage):
        assert torch.equal(again.transition, ds.transition)
    if isinstance(ds, SkipTrigramLanguage):
        assert again.rules == ds.rules
        assert torch.equal(again.background.transition, ds.background.transition)


def test_text_spec_from_other_corpus_warns() -> None:
    spec = dict(TextData(n_ctx=24).spec, corpus_fingerprint="0" * 16)
    with pytest.warns(RuntimeWarning, match="differs"):
        make_dataset(spec)


def test_make_dataset_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset kind 'nope'.*bigram.*induction"):
        make_dataset({"kind": "nope"})
    with pytest.raises(ValueError, match="known kinds"):
        make_dataset({"d_vocab": 10})
    with pytest.raises(ValueError, match="spec dict"):
        make_dataset("bigram")
    spec = BigramLanguage().spec
    del spec["n_successors"]
    with pytest.raises(ValueError, match=r"missing \['n_successors'\]"):
        make_dataset(spec)
    with pytest.raises(ValueError, match=r"unexpected \['colour'\]"):
        make_dataset(dict(InductionData().spec, colour="red"))
    with pytest.raises(ValueError, match="p_rule must be a probability"):
        make_dataset(dict(SkipTrigramLanguage().spec, p_rule=2))


# ------------------------------------------------------------------- bad input
BAD_INPUTS = [
    (lambda: BigramLanguage(d_vocab=1), "d_vocab must be >= 2, got 1"),
    (lambda: BigramLanguage(n_ctx=1), "n_ctx must be >= 2, got 1"),
    (lambda: BigramLanguage(d_vocab=8, n_successors=8), "n_successors must be <= 7, got 8"),
    (lambda: BigramLanguage(seed=1.5), r"seed must be an int, got 1.5 \(float\)"),
    (lambda: BigramLanguage(seed=True), "seed must be an int"),
    (lambda: BigramLanguage(zipf_exponent=-1), "zipf_exponent must be >= 0"),
    (lambda: BigramLanguage(boost_tokens=[0], p_boost=0.1), r"boost_tokens\[0\] must be >= 1"),
    (lambda: BigramLanguage().sample(0, gen()), "batch_size must be >= 1, got 0"),
    (lambda: BigramLanguage().sample(4, 0), "generator must be a torch.Generator"),
    (lambda: BigramLanguage().frequency_weighted_kl(torch.ones(3, 3)), r"shape \[64, 64\]"),
    (lambda: SkipTrigramLanguage(p_rule=1.5), r"p_rule must be a probability in \[0, 1\], got 1.5"),
    (lambda: SkipTrigramLanguage(p_rule=float("nan")), "p_rule must be a probability"),
    (lambda: SkipTrigramLanguage(d_vocab=20), r"d_vocab must be >= 2 \* n_rules \+ n_triggers \+ 1 = 29"),
    (lambda: SkipTrigramLanguage(n_triggers=13), "n_triggers must be <= 12"),
    (lambda: SkipTrigramLanguage().next_token_distribution(torch.tensor([3, 4])), "start with BOS"),
    (lambda: SkipTrigramLanguage().next_token_distribution(torch.tensor([0, 64])), r"\[0, 63\]"),
    (lambda: SkipTrigramLanguage().next_token_distribution(torch.tensor([0.0])), "LongTensor"),
    (lambda: InductionData(n_ctx=20, max_offset=18), "max_offset must be <= n_ctx - 3 = 17"),
    (lambda: InductionData(min_offset=5, max_offset=4), "max_offset must be >= 5, got 4"),
    (lambda: InductionData(p_repeat=-0.1), "p_repeat must be a probability"),
    (lambda: InductionData(p_periodic=1.5), "p_periodic must be a probability"),
    (lambda: InductionData().sample_with_truth(-1, gen()), "batch_size must be >= 1"),
    (lambda: repeated_tokens(1, 4, 2, gen()), "d_vocab must be >= 2"),
    (lambda: repeated_tokens_with_gap(10, 4, -1, 2, gen()), "gap must be >= 0"),
    (lambda: induction_targets(0), "half_len must be >= 1"),
    (lambda: TextData(n_ctx=1), "n_ctx must be >= 2"),
    (lambda: TextData(n_ctx=8).sample(2, gen(), split="test"), "split must be one of"),
    (lambda: CharTokenizer(""), "non-empty str"),
    (lambda: TextWithRepeatsData(n_ctx=32, max_len=24), "n_ctx must be >= 1 \\+ 2 \\* max_len = 49"),
    (lambda: TextWithRepeatsData(p_repeat=3), "p_repeat must be a probability"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS, ids=[m[:30] for _, m in BAD_INPUTS])
def test_bad_input_raises_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
