"""toylab.neurons.fourier recovers frequencies planted in tensors, and finds none in random ones."""

import math

import pytest
import torch

from toylab.neurons.fourier import (cluster_neurons, embedding_spectrum, excluded_loss, fourier_basis,
                                    frequency_shares, gini, key_frequencies, logit_fit,
                                    neuron_frequencies, neuron_frequency_shares, remove_frequencies, restricted_loss, top_share,
                                    wave_features)

P = 23
K = (P - 1) // 2


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _wave(k, phase=0.0):
    x = torch.arange(P, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * x / P + phase)


def _planted_embedding(freqs, d_model=16, seed=0):
    """W_E [P + 1, d_model]: each residue row sums cos/sin waves of ``freqs`` along random
    directions; the extra '=' row is large noise that the spectrum must ignore."""
    g = _gen(seed)
    E = torch.zeros(P, d_model, dtype=torch.float64)
    for i, k in enumerate(freqs):
        scale = 3.0 - i  # unequal strengths: the order of the result is checked too
        E += scale * _wave(k)[:, None] * torch.randn(d_model, generator=g, dtype=torch.float64)
        E += scale * _wave(k, math.pi / 2)[:, None] * torch.randn(d_model, generator=g, dtype=torch.float64)
    return torch.cat([E, 100 * torch.randn(1, d_model, generator=g, dtype=torch.float64)])


def test_basis_is_orthonormal_and_named():
    B, names = fourier_basis(P)
    assert B.shape == (P, P)
    assert torch.allclose(B @ B.T, torch.eye(P, dtype=torch.float64), atol=1e-12)
    assert names[0] == "const" and names[2 * 3 - 1] == "cos 3" and names[2 * 3] == "sin 3"
    assert torch.allclose(B[2 * 3 - 1] / B[2 * 3 - 1].abs().max(), _wave(3), atol=1e-12)


def test_spectrum_finds_the_planted_frequencies_in_order():
    W_E = _planted_embedding([3, 7])
    spec = embedding_spectrum(W_E, P)
    assert spec.shape == (K + 1,)
    # Parseval: the squared norms add up to the residue rows' Frobenius norm
    assert math.isclose(float(spec.pow(2).sum()), float(W_E[:P].pow(2).sum()), rel_tol=1e-10)
    shares = frequency_shares(spec)
    assert math.isclose(float(shares[3 - 1] + shares[7 - 1]), 1.0, abs_tol=1e-10)
    assert key_frequencies(spec) == [3, 7]
    assert top_share(spec, 2) == pytest.approx(1.0, abs=1e-10)
    # the '=' row is not part of the spectrum, and the input is untouched
    W2 = W_E.clone()
    W2[P] = 0
    assert torch.allclose(embedding_spectrum(W2, P), spec)


def test_random_embedding_has_no_key_frequency():
    for seed in range(5):
        W_E = torch.randn(P + 1, 64, generator=_gen(seed))
        spec = embedding_spectrum(W_E, P)
        assert key_frequencies(spec) == []
        assert frequency_shares(spec).max() < 2 / K
        assert gini(spec[1:]) < 0.2
    assert gini(embedding_spectrum(_planted_embedding([3, 7]), P)[1:]) > 0.8


def test_gini_extremes():
    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0, 0, 5])) == pytest.approx(1 - 1 / 4)


def test_neurons_are_clustered_by_the_frequency_they_read():
    x = torch.arange(P, dtype=torch.float64)
    a, b = x.repeat_interleave(P), x.repeat(P)
    g = _gen(1)
    planted = [3, 3, 7, 5, 7]
    cols = []
    for k in planted:
        w = 2 * math.pi * k / P
        phi = float(torch.rand(1, generator=g)) * 2 * math.pi
        # a ReLU of a wave of a + b: its Fourier content sits at k and its harmonics 2k, 3k, ...
        cols.append(torch.relu(torch.cos(w * (a + b) + phi)))
    pure = torch.cos(2 * math.pi * 4 * a / P) * torch.sin(2 * math.pi * 4 * b / P)
    cols.append(pure)
    cols.append(torch.randn(P * P, generator=g, dtype=torch.float64))  # noise: no frequency
    cols.append(torch.full((P * P,), 2.5, dtype=torch.float64))         # constant (dead) neuron
    acts = torch.stack(cols, 1)
    best, frac = neuron_frequencies(acts, P)
    assert best.tolist()[:6] == planted + [4]
    assert frac[5] == pytest.approx(1.0, abs=1e-10)           # a pure product wave is all frequency 4
    assert (frac[:5] > 0.5).all() and frac[6] < 0.2           # noise spreads over all frequencies
    assert best[7] == 0 and frac[7] == 0
    assert torch.allclose(neuron_frequencies(acts.reshape(P, P, -1), P)[1], frac)
    clusters = cluster_neurons(best, frac, threshold=0.5)
    assert clusters == {0: [6, 7], 3: [0, 1], 4: [5], 5: [3], 7: [2, 4]}
    shares = neuron_frequency_shares(acts, P)                   # [K, n]
    assert shares.shape == (K, acts.shape[1])
    assert torch.allclose(shares.max(0).values, frac) and torch.equal(shares.argmax(0)[:6] + 1, best[:6])
    assert (shares.sum(0) <= 1 + 1e-10).all() and shares[:, 7].abs().max() == 0
    cross = torch.cos(2 * math.pi * 2 * a / P) * torch.cos(2 * math.pi * 5 * b / P)
    assert neuron_frequency_shares(cross[:, None], P).abs().max() < 1e-10  # a product of two frequencies


def _planted_logits(betas, noise=0.0, seed=0):
    L = sum(beta * wave_features(P, [k])[..., 0] for k, beta in betas.items())
    L = L + 5.0 * torch.randn(P, P, 1, generator=_gen(seed), dtype=torch.float64)  # row offsets: ignored
    if noise:
        L = L + noise * torch.randn(P, P, P, generator=_gen(seed + 1), dtype=torch.float64)
    return L.reshape(P * P, P)


def test_logits_made_of_cos_terms_are_fully_explained():
    L = _planted_logits({3: 4.0, 7: 2.0})
    explained, beta = logit_fit(L, P, [3, 7])
    assert explained == pytest.approx(1.0, abs=1e-10)
    assert beta == pytest.approx({3: 4.0, 7: 2.0}, abs=1e-10)
    # one key alone explains its share of the variance: beta^2 / sum beta^2 (the waves are orthogonal)
    assert logit_fit(L, P, [3])[0] == pytest.approx(16 / 20, abs=1e-10)
    assert logit_fit(L, P, [5])[0] == pytest.approx(0.0, abs=1e-10)


def test_noisy_and_random_logits():
    explained, _ = logit_fit(_planted_logits({3: 4.0, 7: 2.0}, noise=1.0), P, [3, 7])
    # variance of the planted waves: (16 + 4) / 2 per entry; of the noise after centring ~ (P - 1) / P
    assert explained == pytest.approx(10 / (10 + (P - 1) / P), abs=0.02)
    rnd = torch.randn(P * P, P, generator=_gen(3))
    assert logit_fit(rnd, P, [3, 7])[0] < 0.01


def test_restricted_and_excluded_loss():
    L = _planted_logits({3: 6.0, 7: 6.0}, noise=0.5)
    answers = (torch.arange(P * P) // P + torch.arange(P * P) % P) % P
    full = restricted_loss(L, P, [3, 7])
    ce = float(torch.nn.functional.cross_entropy(L, answers))
    clean = float(torch.nn.functional.cross_entropy(_planted_logits({3: 6.0, 7: 6.0}), answers))
    assert full == pytest.approx(clean, abs=0.01)   # the restriction removes the noise, keeps the waves
    assert full < ce
    assert excluded_loss(L, P, [3, 7]) > math.log(P) - 0.2   # without the waves: about chance
    # keeping only a frequency that is not there is as bad as chance; excluding it changes nothing
    assert restricted_loss(L, P, [5]) == pytest.approx(math.log(P), abs=0.05)
    assert excluded_loss(L, P, [5]) == pytest.approx(ce, abs=0.05)
    rows = torch.tensor([0, 5, 100])
    # the key waves depend on a + b - c only: every pair has the same restricted loss
    assert restricted_loss(L, P, [3, 7], rows) == pytest.approx(full, abs=1e-9)
    assert restricted_loss(L, P, [3, 7], rows) == pytest.approx(
        float(torch.nn.functional.cross_entropy(_planted_logits({3: 6.0, 7: 6.0})[rows], answers[rows])), abs=0.05)


def test_remove_frequencies_takes_out_exactly_those_waves():
    W_E = _planted_embedding([3, 7])
    keep = W_E.clone()
    out = remove_frequencies(W_E, P, [3])
    assert torch.equal(W_E, keep), "the input must not be modified"
    assert out.shape == W_E.shape and out.dtype == torch.float64
    assert torch.equal(out[P:], W_E[P:])          # the '=' row is left alone
    before, after = embedding_spectrum(W_E, P), embedding_spectrum(out, P)
    assert float(after[3]) < 1e-10
    others = [k for k in range(K + 1) if k != 3]
    assert torch.allclose(after[others], before[others], atol=1e-10)
    # removing every planted frequency leaves only what was there besides them (nothing)
    assert float(remove_frequencies(W_E, P, [3, 7])[:P].abs().max()) < 1e-10
    assert torch.equal(remove_frequencies(W_E, P, []), W_E.double())


@pytest.mark.parametrize("call, message", [
    (lambda: fourier_basis(10), "odd int"),
    (lambda: embedding_spectrum(torch.zeros(5, 4), P), "at least p"),
    (lambda: embedding_spectrum(torch.full((P, 4), float("nan")), P), "non-finite"),
    (lambda: embedding_spectrum([[1.0]], P), "torch.Tensor"),
    (lambda: key_frequencies(torch.zeros(K + 1)), "no energy"),
    (lambda: key_frequencies(torch.ones(K + 1), ratio=0.5), "ratio"),
    (lambda: logit_fit(torch.zeros(P * P, P + 1), P, [1]), "logits must be"),
    (lambda: logit_fit(torch.randn(P * P, P), P, [K + 1]), "keys must be ints"),
    (lambda: logit_fit(torch.randn(P * P, P), P, [2, 2]), "distinct"),
    (lambda: logit_fit(torch.zeros(P * P, P), P, [2]), "no variance"),
    (lambda: restricted_loss(torch.randn(P * P, P), P, [1], rows=torch.tensor([P * P])), "grid indices"),
    (lambda: neuron_frequencies(torch.zeros(P, 4), P), "acts must be"),
    (lambda: cluster_neurons(torch.zeros(3), torch.zeros(3), threshold=0), "threshold"),
    (lambda: top_share(torch.ones(K + 1), 0), "n must be"),
    (lambda: gini(torch.tensor([-1.0, 2.0])), "non-negative"),
    (lambda: remove_frequencies(torch.zeros(5, 4), P, [1]), "at least p"),
    (lambda: neuron_frequency_shares(torch.zeros(P, 4), P), "acts must be"),
    (lambda: remove_frequencies(torch.zeros(P, 4), P, [0]), "keys must be ints"),
    (lambda: remove_frequencies(torch.zeros(P, 4), P, 3), "list of frequencies"),
])
def test_bad_input_raises_a_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call()
