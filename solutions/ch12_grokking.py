"""Chapter 12 — Grokking: modular addition, trained here. Reference answers.

A one-layer transformer trained on a + b mod p memorises its training pairs,
then, much later, generalises with an algorithm made of waves: a few key
frequencies in its embedding, neurons that read them, and logits of the form
sum_k beta_k cos(w_k (a + b - c)). These exercises read the curves of a run,
find the key frequencies and what a neuron reads, measure how much of the
logits the waves explain, compute a progress measure, and ask you to decide,
from the weights and the history alone, whether a model has grokked and
whether its circuit formed before its test accuracy moved.
Grade your own answers in ``exercises/ch12_grokking.py`` with
``toylab grade --chapter 12``.
"""

from __future__ import annotations

import math

import torch


def grokking_step(history: list[dict]) -> tuple[int | None, int | None, int | None]:
    """When a run memorised, when it generalised, and the delay.  ★  (about 10 min)

    Args:
        history: a training history (a checkpoint's ``history``): a list of dicts,
            in step order, each with ``"step"``, ``"train_acc"`` and ``"fresh_acc"``
            (and other keys); not modified.

    Returns:
        ``(memorised, grokked, delay)``: ``memorised`` is the ``"step"`` of the first
        entry whose ``train_acc`` is at least 0.99, ``grokked`` the ``"step"`` of the
        first entry whose ``fresh_acc`` (accuracy on the fresh test pairs) is at least
        0.99, and ``delay = grokked - memorised``. Any of them is ``None`` when it
        never happens (``delay`` is ``None`` if either step is).

    Hint: "at least" includes equality; return the entry's ``"step"``, not its
    position in the list; and the fresh test pairs, not the test pairs.
    """
    def first(key):
        return next((int(e["step"]) for e in history if e[key] >= 0.99), None)

    memorised, grokked = first("train_acc"), first("fresh_acc")
    delay = grokked - memorised if memorised is not None and grokked is not None else None
    return memorised, grokked, delay


def _waves(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, p]`` cos and sin of ``w_k x`` for ``k = 1..K``, ``x = 0..p-1`` (float64)."""
    K = (p - 1) // 2
    x = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi * torch.arange(1, K + 1, dtype=torch.float64) / p
    return torch.cos(w[:, None] * x), torch.sin(w[:, None] * x)


def find_key_frequencies(W_E: torch.Tensor, p: int, ratio: float = 2.0) -> list[int]:
    """The key frequencies of an embedding, from its Fourier transform.  ★★  (about 15 min)

    Args:
        W_E: ``[d_vocab, d_model]`` the embedding; rows ``0 .. p-1`` are the residues
            (the ``=`` row after them is not part of the analysis); not modified.
        p: the odd prime modulus; the frequencies are ``k = 1 .. K``, ``K = (p - 1) / 2``.
        ratio: how many times the even share a key frequency must exceed.

    Returns:
        the list of key frequencies (Python ints), strongest first. With
        ``E = W_E[:p]`` and ``w_k = 2 pi k / p``, frequency ``k``'s energy is
        ``e_k = sum_d (sum_x cos(w_k x) E[x, d])^2 + (sum_x sin(w_k x) E[x, d])^2``
        (both phases, every residual direction), its share is
        ``s_k = e_k / sum_j e_j`` over ``j = 1 .. K`` (the constant is not a
        frequency), and ``k`` is key iff ``s_k > ratio / K``.

    Hint: build the ``[K, p]`` cos and sin tables and multiply them into ``E``;
    shares of *energy* (squared norms), not of norms.
    """
    E = W_E[:p].detach().to(torch.float64)
    cos, sin = _waves(p)
    energy = (cos @ E).pow(2).sum(1) + (sin @ E).pow(2).sum(1)       # [K]
    share = energy / energy.sum()
    K = share.shape[0]
    order = torch.argsort(share, descending=True, stable=True).tolist()
    return [k + 1 for k in order if float(share[k]) > ratio / K]


def predict_neuron_frequency(key: torch.Tensor, p: int) -> tuple[int, float]:
    """Judgement: which frequency does a neuron read, and how clearly?  ★★  (about 15 min)

    A neuron's input weights, seen through the embedding, are a function of the
    residue: ``key[x] = W_E[x] @ W_in[:, n]``, how much residue ``x`` pushes the
    neuron. A neuron that reads frequency ``k`` has a ``key`` that is a wave of
    frequency ``k``, in any phase, on top of any constant.

    Args:
        key: ``[p]`` float, the neuron's key over the residues; not modified.
        p: the odd prime modulus.

    Returns:
        ``(k, share)``: ``k`` (an int in ``1 .. K``) the frequency with the largest
        energy ``(sum_x cos(w_k x) key[x])^2 + (sum_x sin(w_k x) key[x])^2``, ties to
        the lower ``k``, and ``share`` (a float) that energy over the sum of the
        energies of all frequencies ``1 .. K``; ``(0, 0.0)`` for a constant ``key``
        (no frequency at all).

    Hint: the cos part alone misses a wave whose phase puts it in the sin part;
    the constant is not a frequency.
    """
    f = key.detach().to(torch.float64)
    cos, sin = _waves(p)
    energy = (cos @ f).pow(2) + (sin @ f).pow(2)
    total = float(energy.sum())
    if total <= 1e-20 * (1.0 + float(f.pow(2).sum())):
        return 0, 0.0
    k = int(torch.argmax(energy))  # first maximum: the lower frequency
    return k + 1, float(energy[k]) / total


def _centred_grid(logits: torch.Tensor, p: int) -> torch.Tensor:
    L = logits.detach().to(torch.float64).reshape(p, p, p)
    return L - L.mean(-1, keepdim=True)


def _phase(p: int) -> torch.Tensor:
    x = torch.arange(p, dtype=torch.float64)
    return x[:, None, None] + x[None, :, None] - x[None, None, :]        # a + b - c


def logit_variance_explained(logits: torch.Tensor, p: int, keys: list[int]) -> float:
    """How much of the logits the cos terms of the key frequencies explain.  ★★  (about 20 min)

    Args:
        logits: ``[p * p, p]`` the answer logits of every pair, row ``a * p + b``,
            column ``c``; not modified.
        p: the odd prime modulus.
        keys: the frequencies to use (distinct ints in ``1 .. K``), possibly empty.

    Returns:
        a float: with ``L'(a, b, c) = L(a, b, c) - mean_c L(a, b, c)`` (each pair's
        logits centred over the answers: softmax ignores a constant per pair), the
        least-squares fit ``F = sum_k beta_k cos(w_k (a + b - c))`` of ``L'`` over the
        whole ``(a, b, c)`` grid (one ``beta_k`` per key, fitted together), and
        ``explained = 1 - sum (L' - F)^2 / sum L'^2``. ``0.0`` for no keys.

    Hint: reshape to ``[p, p, p]``; the features are ``[p^3, len(keys)]``;
    ``torch.linalg.lstsq`` fits them.
    """
    Lc = _centred_grid(logits, p)
    if not keys:
        return 0.0
    X = torch.stack([torch.cos(2 * math.pi * k / p * _phase(p)).reshape(-1) for k in keys], 1)
    beta = torch.linalg.lstsq(X, Lc.reshape(-1, 1)).solution
    resid = Lc.reshape(-1, 1) - X @ beta
    return 1.0 - float(resid.pow(2).sum()) / float(Lc.pow(2).sum())


def excluded_loss_of(logits: torch.Tensor, p: int, keys: list[int], rows: torch.Tensor) -> float:
    """A progress measure: the loss with the key waves taken out of the logits.  ★★★  (about 20 min)

    Args:
        logits: ``[p * p, p]`` the answer logits of every pair (row ``a * p + b``); not modified.
        p: the odd prime modulus.
        keys: the key frequencies (distinct ints in ``1 .. K``).
        rows: ``[n]`` LongTensor of grid indices ``a * p + b`` (the training pairs).

    Returns:
        a float, in nats: fit the centred logits ``L'`` (as in
        :func:`logit_variance_explained`) by least squares over the whole grid on
        *both* ``cos(w_k (a + b - c))`` and ``sin(w_k (a + b - c))`` for every ``k``
        in ``keys`` (``2 len(keys)`` features, fitted together), subtract that fit
        from the logits, ``X = L - fit``, and return the mean cross-entropy of
        ``X`` at the right answers ``(a + b) mod p`` over ``rows`` only.

    Hint: a wave of any phase is a cos plus a sin; fit on every pair, score on
    ``rows``; ``torch.nn.functional.cross_entropy`` takes ``[n, p]`` and answers ``[n]``.
    """
    L = logits.detach().to(torch.float64).reshape(p, p, p)
    Lc = _centred_grid(logits, p)
    feats = []
    for k in keys:
        ph = 2 * math.pi * k / p * _phase(p)
        feats += [torch.cos(ph).reshape(-1), torch.sin(ph).reshape(-1)]
    X = torch.stack(feats, 1)
    coef = torch.linalg.lstsq(X, Lc.reshape(-1, 1)).solution
    excluded = (L.reshape(-1) - (X @ coef)[:, 0]).reshape(p * p, p)
    grid = torch.arange(p * p)
    answers = (grid // p + grid % p) % p
    return float(torch.nn.functional.cross_entropy(excluded[rows], answers[rows]))


def has_grokked(W_E: torch.Tensor, logits: torch.Tensor, p: int) -> tuple[bool, float]:
    """Judgement: from the weights alone, has this checkpoint generalised?  ★★★  (about 20 min)

    No test data: only the embedding and the logits the model gives on every pair
    (which pairs were held out is not used). A memorising model can answer all of
    its training pairs, and its embedding may already show a Fourier peak; what a
    generalising one has is logits made of the waves of its key frequencies.

    Args:
        W_E: ``[d_vocab, d_model]`` the embedding (rows ``0 .. p-1`` the residues); not modified.
        logits: ``[p * p, p]`` the answer logits on every pair; not modified.
        p: the odd prime modulus.

    Returns:
        ``(grokked, explained)``: ``keys`` are the key frequencies of ``W_E``
        (:func:`find_key_frequencies`, ratio 2), ``explained`` the logit
        variance their cos terms explain (:func:`logit_variance_explained`; 0.0 when
        there is no key frequency), and ``grokked`` is ``True`` iff ``keys`` is not
        empty and ``explained >= 0.5``.

    Hint: neither "the training pairs are all right" nor "the spectrum has a
    peak" decides it; use your two functions above.
    """
    keys = find_key_frequencies(W_E, p)
    explained = logit_variance_explained(logits, p, keys) if keys else 0.0
    return bool(keys) and explained >= 0.5, explained


def circuit_lead(history: list[dict], factor: float = 2.0) -> tuple[bool, int | None]:
    """Judgement: did the circuit form before the test accuracy moved?  ★★  (about 15 min)

    Args:
        history: a grokking run's history (list of dicts in step order with
            ``"step"``, ``"train_acc"``, ``"fresh_acc"`` and ``"excluded_loss"``); not modified.
        factor: how many times its value at memorisation the excluded loss must reach.

    Returns:
        ``(before, lead)``: ``memorised`` is the first step with ``train_acc >= 0.99``;
        the circuit has formed at the first step ``>= memorised`` whose
        ``excluded_loss`` is at least ``factor`` times its value at ``memorised``;
        the test has moved at the first step with ``fresh_acc >= 0.5``.
        ``lead = test step - circuit step`` and ``before = lead > 0``. If any of the
        three steps never happens: ``(False, None)``.

    Hint: the restricted loss falls from the very start, memorisation included:
    it is not the event; the excluded loss rising after memorisation is.
    """
    mem = next((e for e in history if e["train_acc"] >= 0.99), None)
    if mem is None:
        return False, None
    target = factor * mem["excluded_loss"]
    circuit = next((e["step"] for e in history if e["step"] >= mem["step"] and e["excluded_loss"] >= target),
                   None)
    moved = next((e["step"] for e in history if e["fresh_acc"] >= 0.5), None)
    if circuit is None or moved is None:
        return False, None
    lead = int(moved) - int(circuit)
    return lead > 0, lead
