"""Graded tests of chapter 3, "Two layers: composition and virtual heads".

Ground truth: the library's own circuits (``toylab.circuits.weights``,
``toylab.circuits.composition``, computed independently through ``FactoredMatrix``), the
model's forward pass (the path expansion sums to its logits), and mathematical
facts (scale invariance, the exact ``1/d_model`` mean square of random scores,
identity matrices) rather than numbers copied from a solution.
"""

import math

import pytest
import torch

from toylab.circuits.weights import k_composition_circuit as lib_k_circuit
from toylab.circuits.weights import path_expansion, q_composition_circuit, virtual_weights
from toylab.circuits.composition import composition_scores, empirical_baseline
from toylab.data import repeated_tokens
from toylab.course.answers import expect_number, expect_tensor, load_answers
from toylab.model import AttnOnlyTransformer, ModelConfig

CH = "ch03_two_layers"
PAIRS = [((0, a), (1, b)) for a in range(2) for b in range(2)]


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def random_model(induction_model):
    """An untrained model with the shapes of ``induction-2l`` (its scores sit near the random baseline)."""
    return AttnOnlyTransformer(induction_model.cfg, seed=3)


def deep_model(positional: str = "learned"):
    """A random 3-layer, 3-head model: an answer that hard-codes the shipped model's layers 0 -> 1 fails on it."""
    return AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=12, d_model=24, n_layers=3, n_heads=3, d_head=8,
                                           positional=positional), seed=5)


DEEP_PAIRS = [((0, 2), (2, 1)), ((1, 0), (2, 2)), ((0, 1), (1, 2))]


@pytest.fixture(scope="module")
def probe(induction_model):
    """The induction probe ``[BOS, r, r]``, half length 10, 4 sequences."""
    return repeated_tokens(induction_model.cfg.d_vocab, 10, 4, torch.Generator().manual_seed(5))


def _frob_ratio(A, B):
    A, B = A.double(), B.double()
    return float(torch.linalg.matrix_norm(A @ B) / (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)))


@pytest.mark.exercise("composition_score")
@pytest.mark.points(1)
def test_composition_score():
    f = answers().composition_score
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(6, 4, generator=g), torch.randn(4, 5, generator=g)
    before = (A.clone(), B.clone())
    want = _frob_ratio(A, B)
    spectral = float(torch.linalg.matrix_norm(A @ B, ord=2)
                     / (torch.linalg.matrix_norm(A, ord=2) * torch.linalg.matrix_norm(B, ord=2)))
    value = f(A, B)
    if isinstance(value, (float, int, torch.Tensor)) and abs(float(value) - spectral) < 1e-6 < abs(spectral - want):
        raise AssertionError("composition_score: that is the ratio of spectral norms (ord=2); use the Frobenius norm")
    if isinstance(value, (float, int, torch.Tensor)) and abs(float(value) - float(torch.linalg.matrix_norm(
            (A @ B).double()))) < 1e-6:
        raise AssertionError("composition_score: you returned ||W_A W_B||_F; divide by ||W_A||_F ||W_B||_F")
    expect_number(value, want, "C(W_A, W_B) of two random matrices", tol=1e-6,
                  hint="C = ||W_A W_B||_F / (||W_A||_F ||W_B||_F) with Frobenius norms")
    expect_number(f(3.0 * A, 0.5 * B), want, "C(3 W_A, 0.5 W_B)", tol=1e-6,
                  hint="the score must not depend on the scale of either matrix")
    assert torch.equal(A, before[0]) and torch.equal(B, before[1]), "composition_score changed its inputs"
    # a rank-1 pair: C(a u^T, v b^T) = |cos(u, v)|
    u, v = torch.randn(4, generator=g), torch.randn(4, generator=g)
    a, b = torch.randn(3, generator=g), torch.randn(2, generator=g)
    cos = float((u @ v).abs() / (u.norm() * v.norm()))
    expect_number(f(torch.outer(a, u), torch.outer(v, b)), cos, "C(a u^T, v b^T)", tol=1e-6,
                  hint="for rank-1 matrices the score is |cos| of the angle between u and v")
    expect_number(f(torch.eye(5), torch.eye(5)), 1 / math.sqrt(5), "C(I_5, I_5)", tol=1e-6)


@pytest.mark.exercise("k_composition_score")
@pytest.mark.points(2)
def test_k_composition_score(induction_model, random_model):
    f = answers().k_composition_score
    for model, which, pairs in ((induction_model, "induction-2l", PAIRS), (random_model, "a random model", PAIRS),
                                (deep_model(), "a random 3-layer, 3-head model", DEEP_PAIRS)):
        K = composition_scores(model, "K")
        Q = composition_scores(model, "Q")
        V = composition_scores(model, "V")
        for (la, ha), (lb, hb) in pairs:
            value = f(model, (la, ha), (lb, hb))
            want = float(K[la, ha, lb, hb])
            name = f"the K-composition score L{la}H{ha} -> L{lb}H{hb} of {which}"
            try:
                v = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise AssertionError(f"{name}: expected a number (float), got {type(value).__name__}") from None
            if abs(v - want) > 1e-4:
                if abs(v - float(Q[la, ha, lb, hb])) < 1e-4:
                    raise AssertionError(f"{name} is {v:.4f}, expected {want:.4f}: that is the Q-composition "
                                         "score C(W_OV^a, W_QK^b); K-composition uses the transpose W_QK^{bT}")
                if abs(v - float(V[la, ha, lb, hb])) < 1e-4:
                    raise AssertionError(f"{name} is {v:.4f}, expected {want:.4f}: that is V-composition "
                                         "(you used the later head's W_OV, not its W_QK)")
            expect_number(v, want, name, tol=1e-4,
                          hint="C(W_V^a W_O^a, (W_Q^b W_K^{bT})^T); did you transpose W_K, and W_QK?")


@pytest.mark.exercise("random_composition_baseline")
@pytest.mark.points(2)
def test_random_composition_baseline():
    f = answers().random_composition_baseline
    # with d_head = 1 the score is |cos| of two random directions: its mean is well below 1/sqrt(d_model)
    for d_model, d_head, n in ((64, 32, 300), (16, 1, 2000), (32, 4, 300)):
        value = f(d_model, d_head, n, torch.Generator().manual_seed(11))
        mean, std = empirical_baseline(d_model, d_head, "K", n_samples=4 * n, seed=1)
        tol = 4 * std / math.sqrt(n) + 4 * std / math.sqrt(4 * n)
        expect_number(value, mean, f"the mean random K-composition score for d_model={d_model}, d_head={d_head}",
                      tol=tol, hint=(f"1/sqrt(d_model) = {1 / math.sqrt(d_model):.4f} is only the root mean square; "
                                     f"average C(W_V W_O, (W_Q W_K^T)^T) over Gaussian W_Q, W_K, W_V "
                                     f"[d_model, d_head] and W_O [d_head, d_model]"))
    again = f(8, 2, 400, torch.Generator().manual_seed(11))
    assert float(again) == float(f(8, 2, 400, torch.Generator().manual_seed(11))), \
        "random_composition_baseline must draw all its randomness from `generator` (same seed, same answer)"


@pytest.mark.exercise("virtual_weight")
@pytest.mark.points(1)
def test_virtual_weight(induction_model):
    model = induction_model
    f = answers().virtual_weight
    deep = deep_model()
    cases = [(model, w, r) for w in ((0, 0), (0, 1)) for r in ((1, 1, "k"), (1, 0, "q"), (1, 1, "v"))]
    cases += [(deep, (1, 2), (2, 0, "k")), (deep, (0, 1), (2, 2, "q")), (deep, (0, 0), (1, 2, "v"))]
    for model, writer, reader in cases:
        want = virtual_weights(model, writer, reader).AB
        got = f(model, writer, reader)
        W_read = getattr(model, "W_" + reader[2].upper())[reader[0], reader[1]]
        hints = [(want.T, "transposed: rows belong to the writer's d_head (W_O^{writer} @ W_read)"),
                 (W_read.T @ model.W_O[writer].T, "you multiplied in the wrong order; the writer's W_O "
                                                  "comes first: W_O^{writer} @ W_read")]
        expect_tensor(got, want, f"virtual_weight({writer}, {reader})", "d_head, d_head", atol=1e-5, hints=hints)
    for model, writer, reader in ((induction_model, (1, 0), (0, 1, "q")), (induction_model, (1, 0), (1, 1, "k")),
                                  (deep, (2, 1), (2, 0, "k"))):
        try:
            f(model, writer, reader)
        except ValueError:
            continue
        raise AssertionError(f"virtual_weight({writer}, {reader}) should raise ValueError: a head reads only "
                             "what heads in earlier layers wrote")


@pytest.mark.exercise("virtual_head_term")
@pytest.mark.points(3)
def test_virtual_head_term(induction_model, probe):
    f = answers().virtual_head_term
    deep = deep_model("shortformer")
    deep_probe = repeated_tokens(20, 5, 3, torch.Generator().manual_seed(6))
    cases = [(induction_model, probe, pair) for pair in [((0, 0), (1, 1)), ((0, 1), (1, 0))]]
    cases += [(deep, deep_probe, pair) for pair in DEEP_PAIRS[:2]]
    for model, probe, ((la, ha), (lb, hb)) in cases:
        terms = path_expansion(model, probe)
        _, cache = model.run_with_cache(probe)
        x0 = model.W_E[probe].double()
        want = terms[f"L{la}H{ha}->L{lb}H{hb}"]
        A_a, A_b = cache["pattern", la][:, ha].double(), cache["pattern", lb][:, hb].double()
        W = (model.W_V[la, ha] @ model.W_O[la, ha] @ model.W_V[lb, hb] @ model.W_O[lb, hb] @ model.W_U).double()
        hints = [((A_a @ A_b @ x0 @ W).float(), "the patterns are in the wrong order: head a moves first, "
                                                 "so the term is A^b (A^a x0 W_OV^a) W_OV^b W_U"),
                 ((x0 @ W).float(), "you left out the attention patterns: each head also moves its input "
                                    "from the key positions (A^b A^a ...)"),
                 ((A_b @ x0 @ W).float(), "head a's pattern A^a is missing"),
                 ((A_a @ x0 @ W).float(), "head b's pattern A^b is missing")]
        got = f(model, probe, (la, ha), (lb, hb))
        expect_tensor(got, want, f"virtual_head_term L{la}H{ha} -> L{lb}H{hb}", "batch, pos, d_vocab",
                      atol=1e-4, rtol=1e-4, hints=hints)


@pytest.mark.exercise("k_composition_circuit")
@pytest.mark.points(2)
def test_k_composition_circuit(induction_model, random_model):
    f = answers().k_composition_circuit
    deep = deep_model()
    for model, pair in ((induction_model, ((0, 0), (1, 1))), (random_model, ((0, 1), (1, 0))),
                        (deep, DEEP_PAIRS[0]), (deep, DEEP_PAIRS[1])):
        want = lib_k_circuit(model, *pair).AB
        q_circ = q_composition_circuit(model, *pair).AB
        hints = [(want.T, "transposed: rows are the later head's query token, columns the token head a "
                          "moved into the key"),
                 (q_circ, "that is the Q-composition circuit W_E W_OV^a W_QK^b W_E^T; for K-composition "
                          "head a's output enters the key side")]
        got = f(model, *pair)
        expect_tensor(got, want, f"k_composition_circuit{pair}", "d_vocab, d_vocab", atol=1e-3, rtol=1e-4,
                      hints=hints)


@pytest.mark.exercise("diagonal_accuracy")
@pytest.mark.points(1)
def test_diagonal_accuracy(induction_model):
    f = answers().diagonal_accuracy
    expect_number(f(torch.eye(7)), 1.0, "diagonal_accuracy(identity)", tol=1e-9)
    expect_number(f(torch.eye(7)[torch.roll(torch.arange(7), 1)]), 0.0, "diagonal_accuracy(a shifted identity)",
                  tol=1e-9)
    M = torch.tensor([[2.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expect_number(f(M), 2 / 3, "diagonal_accuracy([[2,1,0],[3,1,0],[0,0,1]])", tol=1e-9,
                  hint="take the maximum of each row (argmax over dim -1): rows 0 and 2 peak on the diagonal")
    C = lib_k_circuit(induction_model, (0, 0), (1, 1)).AB
    want = float((C.argmax(-1) == torch.arange(C.shape[0])).double().mean())
    expect_number(f(C), want, "the diagonal accuracy of the K-composition circuit L0H0 -> L1H1", tol=1e-9)


def _planted(kind: str, seed: int):
    """A random 2-layer, 2-head model in which head L1H{hb} reads head L0H{ha} by ``kind``-composition only."""
    ha, hb = seed % 2, (seed // 2) % 2
    m = AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=10, d_model=32, n_layers=2, n_heads=2, d_head=16,
                                        positional="learned"), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W_OV = m.blocks[0].attn.W_V[ha] @ m.blocks[0].attn.W_O[ha]     # [d_model, d_model]
        top = torch.linalg.svd(W_OV).Vh[:2]                           # [2, d_model]: a's two main output directions
        aligned = top.T @ torch.randn(2, 16, generator=g)              # [d_model, d_head]: reads only those
        if kind == "Q":
            m.blocks[1].attn.W_Q[hb] = aligned / aligned.norm() * 4
        elif kind == "K":
            m.blocks[1].attn.W_K[hb] = aligned / aligned.norm() * 4
        else:
            m.blocks[1].attn.W_V[hb] = aligned / aligned.norm() * 4
    return m, (0, ha), (1, hb)


def _kind_truth(model, a, b):
    """The library's verdict: the kind with the largest score relative to the empirical baseline, if >= 1.5."""
    from toylab.circuits.composition import composition_scores as cs

    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    rel = {k: float(cs(model, k)[a[0], a[1], b[0], b[1]]) / empirical_baseline(d_model, d_head, k)[0]
           for k in "QKV"}
    best = max(rel, key=rel.get)
    return (best if rel[best] >= 1.5 else None), rel


@pytest.mark.hidden
@pytest.mark.exercise("composition_kind")
@pytest.mark.points(2)
def test_composition_kind(induction_model, random_model):
    f = answers().composition_kind
    seed = int(torch.randint(0, 1000, ()))
    cases = [(f"a model with planted {k}-composition", *_planted(k, seed + i)) for i, k in enumerate("QKV")]
    cases += [("induction-2l", induction_model, a, b) for a, b in PAIRS]
    cases += [("a random model", random_model, (0, 0), (1, 1))]
    for which, model, a, b in cases:
        want, rel = _kind_truth(model, a, b)
        if 1.3 < max(rel.values()) < 1.7:
            continue  # too close to the line to grade a judgement on
        got = f(model, a, b)
        if got == want:
            continue
        ratios = ", ".join(f"{k}: {v:.1f}x" for k, v in rel.items())
        msg = f"{which}, heads {a} -> {b}: you said {got!r}, expected {want!r} (scores / random baseline: {ratios})"
        if got == {"Q": "K", "K": "Q"}.get(want):
            msg += ": Q- and K-composition differ by a transpose — Q: C(W_OV^a, W_QK^b), K: C(W_OV^a, W_QK^bT)"
        elif want is None:
            msg += ": no kind reaches 1.5 times the random baseline, so the answer is None (chance-level composition)"
        elif got is None:
            msg += ": compare each score with what random heads of the same shape score, not with 1"
        raise AssertionError(msg)
