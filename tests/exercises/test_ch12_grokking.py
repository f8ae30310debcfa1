"""Graded tests of chapter 12, "Grokking: modular addition, trained here".

Ground truth: the shipped ``grokking-1l`` model and its recorded history (read with the
library's :mod:`toylab.neurons.fourier` and :func:`toylab.training.full_batch.first_step`),
and hand-built cases whose answer is known by construction: embeddings made of waves of
chosen energies, logits made of chosen cos terms, a planted memoriser (right on every
training pair, with a Fourier peak in its embedding, and no waves in its logits), and
short histories whose events sit exactly on the boundaries.
"""

import copy
import math

import pytest
import torch

from toylab.course.answers import expect_number, load_answers

CH = "ch12_grokking"


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def grok():
    """The shipped ``grokking-1l`` model, its dataset, its answer logits on every pair, its history."""
    from toylab.data import make_dataset
    from toylab.training.full_batch import answer_logits
    from toylab.training.presets import load_shipped

    ckpt = load_shipped("grokking-1l")
    data = make_dataset(ckpt.data_spec)
    with torch.no_grad():
        logits = answer_logits(ckpt.model, data.tokens, data.p)
    return ckpt.model, data, logits, ckpt.history


def _x(p):
    return torch.arange(p, dtype=torch.float64)


def _w(k, p):
    return 2 * math.pi * k / p


def _phase(p):
    x = _x(p)
    return x[:, None, None] + x[None, :, None] - x[None, None, :]


def _fit_r2(Lc, feats):
    """1 - SSR / SST of the least-squares fit of ``Lc [p, p, p]`` on ``feats`` (list of [p, p, p])."""
    X = torch.stack([f.reshape(-1) for f in feats], 1)
    coef = torch.linalg.lstsq(X, Lc.reshape(-1, 1)).solution
    return 1.0 - float((Lc.reshape(-1, 1) - X @ coef).pow(2).sum()) / float(Lc.pow(2).sum())


# ------------------------------------------------------------------ grokking_step
HIST = [{"step": 20, "train_acc": 0.5, "test_acc": 0.10, "fresh_acc": 0.00},
        {"step": 40, "train_acc": 0.99, "test_acc": 0.30, "fresh_acc": 0.01},
        {"step": 60, "train_acc": 1.0, "test_acc": 0.40, "fresh_acc": 0.02},
        {"step": 80, "train_acc": 1.0, "test_acc": 0.995, "fresh_acc": 0.30},
        {"step": 100, "train_acc": 1.0, "test_acc": 1.0, "fresh_acc": 0.99},
        {"step": 120, "train_acc": 1.0, "test_acc": 0.99, "fresh_acc": 0.97},
        {"step": 140, "train_acc": 1.0, "test_acc": 1.0, "fresh_acc": 1.0}]


@pytest.mark.exercise("grokking_step")
@pytest.mark.points(1)
def test_grokking_step(grok):
    from toylab.training.full_batch import first_step

    f = answers().grokking_step
    keep = copy.deepcopy(HIST)
    got = f(HIST)
    assert HIST == keep, "grokking_step changed the history in place"
    got = tuple(got)
    assert got != (60, 140, 80), ("you used '>' 0.99: 'at least 0.99' includes equality (step 40 has "
                                  "train_acc exactly 0.99, step 100 fresh_acc exactly 0.99)")
    assert got[1] != 80, ("you read test_acc: the test pairs whose swap was trained on are answered by "
                          "memorising; grokking is the fresh test pairs' accuracy")
    assert got != (1, 4, 3), "you returned positions in the list, not the entries' \"step\""
    assert got[1] != 140, "the first step that reaches 0.99, not the last time it is reached again"
    assert got[:2] != (40, 100) or got[2] == 60, f"delay = grokked - memorised = 100 - 40 = 60, got {got[2]}"
    assert got == (40, 100, 60), f"expected (40, 100, 60), got {got}"
    never = [dict(e, fresh_acc=min(e["fresh_acc"], 0.5)) for e in HIST]
    got = tuple(f(never))
    assert got == (40, None, None), f"a run that never generalises: expected (40, None, None), got {got}"
    hist = grok[3]
    m, g = first_step(hist, "train_acc", 0.99), first_step(hist, "fresh_acc", 0.99)
    got = tuple(f(hist))
    assert got == (m, g, g - m), f"on grokking-1l's history: expected {(m, g, g - m)}, got {got}"


# --------------------------------------------------- find_key_frequencies
def _planted_embedding(p, energies, d=8, const=0.0, eq_row=0.0):
    """[p + 1, d]: frequency k's wave (its phase fixed per k, one sin-only) along its own
    column, with squared amplitude ``energies[k]``; a constant column; a loud '=' row."""
    E = torch.zeros(p + 1, d, dtype=torch.float64)
    for col, (k, e) in enumerate(energies.items()):
        phase = {0: 0.0, 1: math.pi / 2, 2: 0.7}.get(col % 3)  # col 1: a pure sin wave
        E[:p, col] = math.sqrt(e) * torch.cos(_w(k, p) * _x(p) + phase)
    E[:p, -1] += const
    E[p] = eq_row * torch.linspace(-1, 1, d, dtype=torch.float64)
    return E


@pytest.mark.exercise("find_key_frequencies")
@pytest.mark.points(2)
def test_find_key_frequencies(grok):
    from toylab.neurons.fourier import embedding_spectrum, key_frequencies

    f = answers().find_key_frequencies
    p = 11
    # energies 1, 0.5 (a pure sin wave), 0.35, 0.1: shares 0.51, 0.26, 0.18, 0.05 (K = 5)
    E = _planted_embedding(p, {1: 1.0, 2: 0.5, 3: 0.35, 4: 0.1}, const=3.0, eq_row=50.0)
    keep = E.clone()
    got = f(E, p, 1.0)
    assert torch.equal(E, keep), "find_key_frequencies changed W_E in place"
    got = [int(k) for k in got]
    assert got != [1], ("frequency 2 is a pure sin wave here: a frequency's energy is its cos part plus "
                        "its sin part (a wave of any phase)")
    assert 0 not in got, "the constant is not a frequency: leave row 0 of the basis (k = 0) out"
    assert got != [2, 1], "strongest first: frequency 1 holds the larger share"
    assert got != [], ("nothing passes ratio 1? The constant's energy is not part of the total: shares are "
                       "over the frequencies 1..K only")
    assert got != [1, 2, 3], ("frequency 3 passed ratio 1: shares are of energy (squared norms), 0.18 < 1/5; "
                              "shares of the norms would be 0.23")
    quiet = E.clone()
    quiet[p] = 0.0
    assert [int(k) for k in f(quiet, p, 1.0)] == got, ("your answer changes with the '=' row (index p): it is "
                                                      "not a residue, use W_E[:p] only")
    assert got == [1, 2], f"ratio 1 (threshold 1/5): expected [1, 2], strongest first; got {got}"
    got = [int(k) for k in f(E, p, 2.0)]
    assert got != [], ("no key frequency at ratio 2? Shares are of energy (squared norms): 0.51 > 2/5; "
                       "shares of the norms would be 0.38")
    assert got == [1], f"ratio 2 (threshold 2/5): expected [1], got {got}"
    # a spike at x = 0 has the same energy at every frequency; with p = 5 (K = 2) each share
    # is exactly 1/2 whatever the basis' normalisation, and ratio 1 asks for *more* than 1/2
    spike = torch.zeros(5 + 1, 3, dtype=torch.float64)
    spike[0, 0] = 1.0
    got = [int(k) for k in f(spike, 5, 1.0)]
    assert got == [], (f"every share equals 1/K exactly here, and a key frequency must hold *more* than "
                       f"ratio / K (>, not >=); got {got}")
    got = [int(k) for k in f(E, p, 0.5)]
    assert got == [1, 2, 3], (f"ratio 0.5: expected [1, 2, 3] strongest first; got {got}"
                              + (" (you sorted by frequency, not by share)" if got == sorted(got) != [1, 2, 3]
                                 else ""))
    W_E = grok[0].W_E.detach().clone()
    want = key_frequencies(embedding_spectrum(W_E, grok[1].p))
    got = f(W_E, grok[1].p)
    assert all(isinstance(k, int) for k in got), "return a list of Python ints (use int(...) or .tolist())"
    if sorted(got) == sorted(want) and got != want:
        raise AssertionError(f"the key frequencies of grokking-1l are {want}, strongest first; got {got}")
    assert got == want, (f"grokking-1l: expected {want}, got {got}; did the '=' row (index p) enter your "
                         f"transform? Use W_E[:p] only")


# ------------------------------------------------------------ predict_neuron_frequency
@pytest.mark.exercise("predict_neuron_frequency")
@pytest.mark.points(2)
def test_predict_neuron_frequency(grok):
    from toylab.neurons.fourier import embedding_spectrum, frequency_shares

    f = answers().predict_neuron_frequency
    p = 23
    x = _x(p)
    # frequency 5: a cos of amplitude 0.9 (energy 0.81); frequency 8: amplitude 1 at phase pi/4
    # (cos and sin parts 0.71 each, energy 1); a large constant
    key = 3.0 + 0.9 * torch.cos(_w(5, p) * x) + torch.cos(_w(8, p) * x + math.pi / 4)
    keep = key.clone()
    k, share = f(key, p)
    assert torch.equal(key, keep), "predict_neuron_frequency changed key in place"
    assert int(k) != 5, ("you compared the cos parts only: frequency 8's wave (amplitude 1) is split between "
                         "cos and sin by its phase and beats frequency 5's 0.9")
    assert int(k) != 0, "the constant is not a frequency: a neuron's bias-like offset reads nothing"
    assert int(k) != 7, "frequencies start at k = 1: position 0 of your table is k = 1 (off by one)"
    assert int(k) == 8, f"expected frequency 8, got {k}"
    expect_number(share, 1 / 1.81, "the share of frequency 8", tol=1e-6,
                  hint="the share of *energy* (squared amplitudes: 1 / (1 + 0.81)), not of amplitudes"
                  if abs(float(share) - 1 / 1.9) < 1e-6 else
                  "energy of frequency 8 over the energy of all frequencies 1..K (the constant left out)")
    k, share = f(torch.full((p,), 2.0, dtype=torch.float64), p)
    assert (int(k), float(share)) == (0, 0.0), "a constant key reads no frequency: return (0, 0.0) for it"
    model, data = grok[0], grok[1]
    keys = (model.W_E.detach()[:data.p] @ model.blocks[0].mlp.W_in.detach()).double()   # [p, d_mlp]
    for n in (0, 17, 100, 255):
        spec = embedding_spectrum(keys[:, n:n + 1], data.p)
        s = frequency_shares(spec)
        want_k = int(torch.argmax(s)) + 1
        k, share = f(keys[:, n].clone(), data.p)
        assert int(k) == want_k, f"grokking-1l neuron {n}: its key reads frequency {want_k}, you said {k}"
        expect_number(share, float(s.max()), f"the share of neuron {n}'s frequency", tol=1e-6)


# ------------------------------------------------------------ logit_variance_explained
def _planted_logits(p, seed=0, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    ph = _phase(p)
    L = (4 * torch.cos(_w(2, p) * ph) + 2 * torch.cos(_w(5, p) * ph) + 1.5 * torch.sin(_w(2, p) * ph)
         + 5 * torch.randn(p, p, 1, generator=g, dtype=torch.float64)
         + noise * torch.randn(p, p, p, generator=g, dtype=torch.float64))
    return L.reshape(p * p, p)


@pytest.mark.exercise("logit_variance_explained")
@pytest.mark.points(2)
def test_logit_variance_explained(grok):
    from toylab.neurons.fourier import logit_fit

    f = answers().logit_variance_explained
    p = 13
    L = _planted_logits(p)
    keep = L.clone()
    got = f(L, p, [2, 5])
    assert torch.equal(L, keep), "logit_variance_explained changed the logits in place"
    want = logit_fit(L, p, [2, 5])[0]
    G = L.reshape(p, p, p)
    Lc = G - G.mean(-1, keepdim=True)
    ph = _phase(p)
    x = _x(p)
    cos = [torch.cos(_w(k, p) * ph) for k in (2, 5)]
    sin = [torch.sin(_w(k, p) * ph) for k in (2, 5)]
    plus = x[:, None, None] + x[None, :, None] + x[None, None, :]
    hints = [(_fit_r2(G, cos), "you did not centre each pair's logits over c first: the row means are "
                                "variance no wave can explain, and softmax ignores them"),
             (_fit_r2(Lc, cos + sin), "you fitted the sin terms too: the measure is the cos(w_k (a + b - c)) "
                                      "terms only"),
             (_fit_r2(Lc, [torch.cos(_w(k, p) * plus) for k in (2, 5)]), "the waves are in a + b - c, "
                                                                        "not a + b + c")]
    for value, hint in hints:
        if abs(float(got) - value) < 1e-6 and abs(value - want) > 1e-4:
            raise AssertionError(f"variance explained {float(got):.4f}, expected {want:.4f}: {hint}")
    expect_number(got, want, "the variance explained on planted logits", tol=1e-6)
    none = f(L, p, [])
    assert none is not None and float(none) == 0.0, "no keys explain nothing: return 0.0"
    _, data, logits, _ = grok
    keys = [18, 19, 11]
    expect_number(f(logits.clone(), data.p, keys), logit_fit(logits, data.p, keys)[0],
                  "grokking-1l's logit variance explained by its three keys", tol=1e-5)


# ------------------------------------------------------------------ excluded_loss_of
def _excluded_mistakes(logits, p, keys, rows):
    """(value, hint) for the plausible wrong answers of excluded_loss_of on these logits."""
    from toylab.neurons.fourier import excluded_loss, restricted_loss

    answers_ = (torch.arange(p * p) // p + torch.arange(p * p) % p) % p
    G = logits.double().reshape(p, p, p)
    Lc = G - G.mean(-1, keepdim=True)
    X = torch.stack([torch.cos(_w(k, p) * _phase(p)).reshape(-1) for k in keys], 1)
    cos_only = (G.reshape(-1) - (X @ torch.linalg.lstsq(X, Lc.reshape(-1, 1)).solution)[:, 0]).reshape(p * p, p)
    ce = torch.nn.functional.cross_entropy
    return [(excluded_loss(logits, p, keys), "you scored every pair: the excluded loss is taken on the "
                                             "training pairs, `rows`"),
            (float(ce(cos_only[rows], answers_[rows])),
             "you removed the cos terms only: a wave of any phase is a cos plus a sin; fit and remove both"),
            (float(ce(logits[rows].double(), answers_[rows])), "that is the plain loss on `rows`: nothing was "
                                                               "removed"),
            (restricted_loss(logits, p, keys, rows), "that is the restricted loss (the waves kept, the rest "
                                                     "removed): the excluded loss removes the waves")]


def _check_excluded(got, want, mistakes, what):
    tol = 1e-4 * max(1.0, abs(want))
    for value, hint in mistakes:
        if abs(float(got) - value) < tol and abs(value - want) > tol:
            raise AssertionError(f"{what}: excluded loss {float(got):.4f}, expected {want:.4f}: {hint}")
    expect_number(got, want, what, tol=tol)


@pytest.mark.exercise("excluded_loss_of")
@pytest.mark.points(3)
def test_excluded_loss_of(grok):
    from toylab.neurons.fourier import excluded_loss

    f = answers().excluded_loss_of
    # planted logits with a sin part, where every wrong answer gives a different number
    L = _planted_logits(11, seed=2)
    r = torch.tensor([0, 5, 17, 60, 120])
    keep = L.clone()
    got = f(L, 11, [2], r)
    assert torch.equal(L, keep), "excluded_loss_of changed the logits in place"
    _check_excluded(got, excluded_loss(L, 11, [2], r), _excluded_mistakes(L, 11, [2], r),
                    "planted logits")
    _, data, logits, _ = grok
    p, keys, rows = data.p, [18, 19, 11], data.train_idx.clone()
    _check_excluded(f(logits.clone(), p, keys, rows), excluded_loss(logits, p, keys, data.train_idx),
                    _excluded_mistakes(logits, p, keys, rows), "grokking-1l on its training pairs")


# ------------------------------------------------------------------------ has_grokked
def _memoriser(p=23, d=32, seed=0):
    """A planted memoriser: a random embedding with one strong wave (a clear Fourier peak),
    logits right on every training pair by a large margin and random elsewhere."""
    g = torch.Generator().manual_seed(seed)
    W_E = torch.randn(p + 1, d, generator=g, dtype=torch.float64)
    W_E[:p] += 3.0 * torch.cos(_w(4, p) * _x(p) + 0.3)[:, None] * torch.randn(d, generator=g, dtype=torch.float64)
    logits = torch.randn(p * p, p, generator=g, dtype=torch.float64)
    train = torch.randperm(p * p, generator=g)[:int(0.35 * p * p)]
    answers_ = (torch.arange(p * p) // p + torch.arange(p * p) % p) % p
    logits[train, answers_[train]] += 12.0
    return W_E, logits, train, answers_


def _generaliser(p=23, d=32, seed=1, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    W_E = 0.1 * torch.randn(p + 1, d, generator=g, dtype=torch.float64)
    for k in (3, 7):
        for ph in (0.0, math.pi / 2):
            W_E[:p] += torch.cos(_w(k, p) * _x(p) + ph)[:, None] * torch.randn(d, generator=g, dtype=torch.float64)
    L = sum(6.0 * torch.cos(_w(k, p) * _phase(p)) for k in (3, 7))
    L = L + noise * torch.randn(p, p, p, generator=g, dtype=torch.float64)
    return W_E, L.reshape(p * p, p)


@pytest.mark.exercise("has_grokked")
@pytest.mark.points(3)
def test_has_grokked(grok):
    from toylab.neurons.fourier import embedding_spectrum, key_frequencies, logit_fit

    f = answers().has_grokked
    p = 23
    W_E, logits, train, ans = _memoriser(p)
    keep = (W_E.clone(), logits.clone())
    decision, explained = f(W_E, logits, p)
    assert torch.equal(W_E, keep[0]) and torch.equal(logits, keep[1]), "has_grokked changed an input in place"
    keys = key_frequencies(embedding_spectrum(W_E, p))
    assert keys, "the planted memoriser must show a Fourier peak (test setup)"
    assert bool((logits[train].argmax(-1) == ans[train]).all()), "the memoriser is right on every training pair"
    want = logit_fit(logits, p, keys)[0]
    assert not bool(decision), (f"a memoriser: every training pair right, and a key frequency {keys} in its "
                                f"embedding, but its logits are no waves (cos terms explain {want:.2f}). "
                                f"Neither shortcut decides: the explained variance does")
    expect_number(explained, want, "the memoriser's explained variance", tol=1e-6)
    W_E, logits = _generaliser(p)
    keys = key_frequencies(embedding_spectrum(W_E, p))
    decision, explained = f(W_E, logits, p)
    expect_number(explained, logit_fit(logits, p, keys)[0], "the planted generaliser's explained variance",
                  tol=1e-6, hint="the cos terms of the embedding's own key frequencies")
    assert bool(decision), f"waves in the embedding and {float(explained):.2f} of the logits explained: grokked"
    model, data, logits, _ = grok
    decision, explained = f(model.W_E.detach().clone(), logits.clone(), data.p)
    expect_number(explained, logit_fit(logits, data.p, [18, 19, 11])[0], "grokking-1l's explained variance",
                  tol=1e-5)
    assert bool(decision), (f"grokking-1l has grokked (fresh-test accuracy 0.999): it has key frequencies "
                            f"and its cos terms explain {float(explained):.2f} >= 0.5")
    # a random embedding: no key frequency, so no evidence of waves, whatever the logits
    g = torch.Generator().manual_seed(5)
    decision, explained = f(torch.randn(p + 1, 64, generator=g, dtype=torch.float64), _generaliser(p)[1], p)
    assert not bool(decision) and float(explained) == 0.0, \
        "an embedding with no key frequency gives no keys to fit: (False, 0.0)"


# ----------------------------------------------------------------------- circuit_lead
def _run(excluded, fresh, train=None, restricted=None):
    n = len(excluded)
    train = train or [0.5] + [0.99] + [1.0] * (n - 2)
    restricted = restricted or [4.0 / (i + 1) for i in range(n)]
    return [{"step": 20 * (i + 1), "train_acc": train[i], "fresh_acc": fresh[i], "excluded_loss": excluded[i],
             "restricted_loss": restricted[i], "test_acc": fresh[i]} for i in range(n)]


@pytest.mark.exercise("circuit_lead")
@pytest.mark.points(2)
@pytest.mark.hidden
def test_circuit_lead(grok):
    from toylab.training.full_batch import first_step

    f = answers().circuit_lead
    # memorised at step 40 (train_acc 0.99) with excluded loss 2.0; it is exactly 4.0 at step 80;
    # the excluded loss of step 20 (before memorisation) is 5.0; fresh acc is exactly 0.5 at step 140
    h = _run(excluded=[5.0, 2.0, 3.0, 4.0, 4.5, 6.0, 8.0, 9.0],
             fresh=[0.0, 0.0, 0.01, 0.02, 0.1, 0.3, 0.5, 0.9])
    keep = copy.deepcopy(h)
    before, lead = f(h)
    assert h == keep, "circuit_lead changed the history in place"
    assert lead != 40, "'at least factor times' includes equality: 4.0 = 2 x 2.0 at step 80 counts"
    assert lead != 80, "the test moved when fresh_acc is at least 0.5: step 140 has exactly 0.5 (>=)"
    assert lead != 20, ("memorised is the first step with train_acc at least 0.99: step 40 has exactly 0.99 "
                        "(>=), and the excluded loss there is 2.0")
    assert lead != 120, ("the circuit is the excluded loss rising *after* memorisation (step >= 40), against its "
                         "value there; step 20 precedes memorisation")
    assert lead != -60, "lead = test step - circuit step: positive when the circuit came first"
    assert (bool(before), lead) == (True, 60), f"expected (True, 60): circuit at 80, test at 140; got {(before, lead)}"
    # the restricted loss falls from the start, but the excluded loss rises only after the test moved
    h = _run(excluded=[3.0, 2.0, 2.2, 2.5, 3.0, 3.5, 4.5, 9.0],
             fresh=[0.0, 0.0, 0.1, 0.6, 0.9, 1.0, 1.0, 1.0])
    before, lead = f(h)
    assert not bool(before), ("the excluded loss doubles only at step 140, after fresh acc reached 0.5 at step "
                              "80: the circuit did not lead, whatever the restricted loss did")
    assert lead == -60, (f"lead = test step - circuit step = 80 - 140 = -60, got {lead}: the circuit is the "
                         f"excluded loss doubling, not the restricted loss falling")
    h = _run(excluded=[3.0, 2.0, 2.2, 2.5, 3.0, 3.5, 3.0, 3.9], fresh=[0.0] * 8)
    assert tuple(f(h)) == (False, None), "nothing happened (no circuit, no test movement): (False, None)"
    hist = grok[3]
    m = first_step(hist, "train_acc", 0.99)
    ex = next(e for e in hist if e["step"] == m)["excluded_loss"]
    want = first_step(hist, "fresh_acc", 0.5) - first_step(hist, "excluded_loss", 2 * ex, after=m)
    before, lead = f(hist)
    assert (bool(before), lead) == (want > 0, want), f"grokking-1l: expected {(want > 0, want)}, got {(before, lead)}"
