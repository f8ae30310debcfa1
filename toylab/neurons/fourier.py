"""The Fourier analysis of a model that adds mod p: key frequencies, neuron clusters, progress measures.

A model that has grokked ``a + b mod p`` (Nanda et al. 2023) embeds each residue ``x``
as waves ``cos(w_k x), sin(w_k x)`` with ``w_k = 2 pi k / p`` for a few *key*
frequencies ``k``, multiplies them in its MLP neurons, and writes logits of the form
``sum_k beta_k cos(w_k (a + b - c))``, which peak at ``c = (a + b) mod p``. Everything
here works on plain tensors (an embedding matrix, neuron activations or logits over the
full ``(a, b)`` grid), so it needs no model class.

Conventions: ``p`` is odd, the frequencies are ``k = 1 .. K`` with ``K = (p - 1) / 2``,
and the grid is ordered ``i = a * p + b`` (as :class:`toylab.data.modular.ModularAddition`
orders it), so ``[p * p, ...]`` and ``[p, p, ...]`` tensors are the same data.
All computations are in float64; inputs are never modified.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def _check_p(p: Any) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 3 or p % 2 == 0:
        raise ValueError(f"p must be an odd int >= 3 (the analysis uses frequencies 1..(p-1)/2), got {p!r}")
    return p


def _check_tensor(name: str, x: Any, ndims: Sequence[int]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"{name} must be a real torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dims, got shape {list(x.shape)}")
    x = x.detach().to(torch.float64)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf); the analysis needs finite ones")
    return x


def _check_keys(keys: Any, p: int) -> list[int]:
    K = (p - 1) // 2
    if isinstance(keys, (str, bytes, torch.Tensor)) or not isinstance(keys, Sequence):
        raise ValueError(f"keys must be a list of frequencies in 1..{K}, got {keys!r}")
    out = []
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= K:
            raise ValueError(f"keys must be ints in 1..{K} (the frequencies of Z_{p}), got {k!r}")
        out.append(k)
    if len(set(out)) != len(out):
        raise ValueError(f"keys must be distinct, got {out}")
    return out


def _grid(name: str, x: Any, p: int, last: int | None) -> torch.Tensor:
    """``x`` as ``[p, p, last]`` float64, from ``[p * p, last]`` or ``[p, p, last]``."""
    x = _check_tensor(name, x, (2, 3))
    if x.ndim == 2 and x.shape[0] == p * p:
        x = x.reshape(p, p, x.shape[1])
    if x.shape[:2] != (p, p) or (last is not None and x.shape[2] != last):
        want = f"[{p * p}, {last if last is not None else 'n'}] or [{p}, {p}, {last if last is not None else 'n'}]"
        raise ValueError(f"{name} must be {want} (the (a, b) grid, a * p + b order), got {list(x.shape)}")
    return x


# --------------------------------------------------------------------------- the basis
def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """The orthonormal Fourier basis of functions on ``Z_p``: ``[p, p]`` rows, and their names.

    Row 0 is the constant ``1 / sqrt(p)``; rows ``2k - 1`` and ``2k`` (``k = 1 .. K``) are
    ``sqrt(2 / p) cos(w_k x)`` and ``sqrt(2 / p) sin(w_k x)`` for ``x = 0 .. p - 1``,
    ``w_k = 2 pi k / p``. The rows are orthonormal, so for any ``f`` on ``Z_p`` the
    coefficients are ``basis @ f`` and ``f = basis.T @ (basis @ f)``.
    """
    p = _check_p(p)
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.full((p,), 1.0 / math.sqrt(p), dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * math.pi * k / p
        rows += [math.sqrt(2 / p) * torch.cos(w * x), math.sqrt(2 / p) * torch.sin(w * x)]
        names += [f"cos {k}", f"sin {k}"]
    return torch.stack(rows), names


# ------------------------------------------------------------------ the embedding
def embedding_spectrum(W_E: torch.Tensor, p: int) -> torch.Tensor:
    """``[K + 1]`` norms of the embedding's Fourier components; entry 0 is the constant.

    With ``E = W_E[:p]`` (the residues' rows, ``[p, d_model]``; an ``=`` row beyond them
    is ignored) and ``C = basis @ E`` (``[p, d_model]``), entry ``k >= 1`` is
    ``sqrt(|C[cos k]|^2 + |C[sin k]|^2)``, the norm of the part of ``E`` that varies with
    ``x`` as a wave of frequency ``k`` (any phase); entry 0 is ``|C[const]|``. Since the
    basis is orthonormal, the squared entries sum to ``|E|_F^2``.
    """
    p = _check_p(p)
    W = _check_tensor("W_E", W_E, (2,))
    if W.shape[0] < p:
        raise ValueError(f"W_E must have at least p = {p} rows [d_vocab, d_model], got {list(W.shape)}")
    C = fourier_basis(p)[0] @ W[:p]
    energy = C.pow(2).sum(-1)
    spec = torch.cat([energy[:1], energy[1::2] + energy[2::2]])
    return spec.sqrt()


def frequency_shares(spectrum: torch.Tensor) -> torch.Tensor:
    """``[K]`` share of the non-constant energy at each frequency: ``s_k = n_k^2 / sum_j n_j^2``
    (``k, j = 1 .. K``) for a spectrum ``n`` from :func:`embedding_spectrum`. Sums to 1."""
    s = _check_tensor("spectrum", spectrum, (1,))
    if s.shape[0] < 2 or (s < 0).any():
        raise ValueError(f"spectrum must be [K + 1] non-negative norms, got shape {list(s.shape)}")
    e = s[1:].pow(2)
    if float(e.sum()) == 0.0:
        raise ValueError("spectrum has no energy outside the constant: no frequency can be chosen")
    return e / e.sum()


def key_frequencies(spectrum: torch.Tensor, ratio: float = 2.0) -> list[int]:
    """The key frequencies: those whose energy share is over ``ratio`` times the even share.

    Rule: ``k`` is key iff ``s_k > ratio / K`` (``s`` from :func:`frequency_shares``,
    ``K`` the number of frequencies), i.e. frequency ``k`` holds more than ``ratio`` times
    the ``1 / K`` it would hold if the energy were spread evenly. Returned strongest first.
    A random embedding spreads its energy about evenly (each share is ``1/K`` give or take
    a relative ``1 / sqrt(d_model)``: the energy is a sum of ``2 d_model`` squared normal
    numbers), so for ``d_model`` of 32 or more no frequency passes the default ``ratio = 2``.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (1.0 <= ratio < math.inf):
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio!r}")
    s = frequency_shares(spectrum)
    keep = [k + 1 for k in torch.argsort(s, descending=True, stable=True).tolist()
            if float(s[k]) > ratio / s.shape[0]]
    return keep


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative ``values`` (a sparsity score in ``[0, 1 - 1/n]``).

    ``G = sum_i sum_j |v_i - v_j| / (2 n sum_i v_i)``: 0 when all are equal, ``1 - 1/n``
    when one value holds everything. For the embedding, pass ``spectrum[1:]`` (the
    frequency norms): a grokked embedding is sparse in frequency, a random one is not.
    """
    v = _check_tensor("values", values, (1,))
    if v.shape[0] == 0 or (v < 0).any() or float(v.sum()) == 0.0:
        raise ValueError("values must be a non-empty 1-D tensor of non-negative numbers, not all zero")
    n = v.shape[0]
    return float((v[:, None] - v[None, :]).abs().sum() / (2 * n * v.sum()))


def top_share(spectrum: torch.Tensor, n: int) -> float:
    """Share of the non-constant energy in the ``n`` strongest frequencies: the sum of the
    ``n`` largest ``s_k`` of :func:`frequency_shares`."""
    s = frequency_shares(spectrum)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= s.shape[0]:
        raise ValueError(f"n must be an int in 1..{s.shape[0]}, got {n!r}")
    return float(s.sort(descending=True).values[:n].sum())


# -------------------------------------------------------------------- the neurons
def _frequency_energy(acts: Any, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(parts [K, n], var [n], const [n])``: each frequency's energy in each neuron, the
    neuron's variance over the grid, and its squared constant coefficient."""
    p = _check_p(p)
    A = _grid("acts", acts, p, None)
    B = fourier_basis(p)[0]
    F2 = torch.einsum("ia,abn,jb->ijn", B, A, B).pow(2)          # [p, p, n]
    var = F2.sum((0, 1)) - F2[0, 0]
    parts = []
    for k in range(1, (p - 1) // 2 + 1):
        idx = [0, 2 * k - 1, 2 * k]
        parts.append(F2[idx][:, idx].sum((0, 1)) - F2[0, 0])
    return torch.stack(parts), var, F2[0, 0]


def neuron_frequency_shares(acts: torch.Tensor, p: int) -> torch.Tensor:
    """``[K, n]``: for each frequency ``k`` (row ``k - 1``) and neuron ``j``, the share of
    the neuron's variance over the grid in frequency ``k``'s part (the 8 terms of
    :func:`neuron_frequencies`); 0 for a neuron constant over the grid.

    ``acts`` is ``[p * p, n]`` or ``[p, p, n]``. A column's maximum is the ``fraction``
    that :func:`neuron_frequencies` returns. The products of two different frequencies
    belong to no row, so a column sums to at most 1.
    """
    parts, var, const = _frequency_energy(acts, p)
    live = var > 1e-12 * (1 + float(const.max()))
    return torch.where(live, parts / var.clamp_min(1e-300), torch.zeros_like(parts))


def neuron_frequencies(acts: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each neuron, the frequency it reads and the share of its variance at that frequency.

    ``acts`` is ``[p * p, n]`` or ``[p, p, n]``: neuron ``j``'s activation ``A_j(a, b)``
    over the grid. Its 2-D Fourier coefficients are ``F_j = basis A_j basis^T`` (rows
    index the ``a`` wave, columns the ``b`` wave). Frequency ``k``'s part of ``F_j`` is
    the 8 coefficients whose ``a`` wave and ``b`` wave are each either the constant or
    ``cos k / sin k``, except constant-constant: the terms ``cos/sin(w_k a)``,
    ``cos/sin(w_k b)`` and their 4 products. The neuron's variance over the grid is
    ``sum F_j^2 - F_j[const, const]^2``.

    Returns:
        ``best [n]`` LongTensor, the ``k`` with the largest part (0 for a neuron that is
        constant over the grid, e.g. dead), and ``fraction [n]`` float64, that part's
        energy over the neuron's variance (0 for a constant neuron).
    """
    parts, var, const = _frequency_energy(acts, p)
    frac, best = parts.max(0)
    live = var > 1e-12 * (1 + float(const.max()))
    frac = torch.where(live, frac / var.clamp_min(1e-300), torch.zeros_like(frac))
    return torch.where(live, best + 1, torch.zeros_like(best)), frac


def cluster_neurons(best: torch.Tensor, fraction: torch.Tensor, threshold: float = 0.5) -> dict[int, list[int]]:
    """Group neurons by the frequency they read: ``{k: [neuron, ...]}``, ``k`` ascending.

    A neuron joins cluster ``best[j]`` when ``fraction[j] >= threshold`` (from
    :func:`neuron_frequencies`); the others (mixed or constant neurons) join cluster 0.
    """
    if not isinstance(best, torch.Tensor) or not isinstance(fraction, torch.Tensor) \
            or best.ndim != 1 or best.shape != fraction.shape:
        raise ValueError("best and fraction must be 1-D tensors of one length (from neuron_frequencies)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    out: dict[int, list[int]] = {}
    for j, (k, f) in enumerate(zip(best.tolist(), fraction.tolist())):
        out.setdefault(int(k) if f >= threshold else 0, []).append(j)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------- the logits
def wave_features(p: int, keys: Sequence[int], *, with_sin: bool = False) -> torch.Tensor:
    """``[p, p, p, m]`` the functions ``cos(w_k (a + b - c))`` (then, with ``with_sin``,
    ``sin(w_k (a + b - c))``) for ``k`` in ``keys``, over the grid ``(a, b, c)``."""
    p = _check_p(p)
    keys = _check_keys(keys, p)
    x = torch.arange(p, dtype=torch.float64)
    d = x[:, None, None] + x[None, :, None] - x[None, None, :]
    w = torch.tensor([2 * math.pi * k / p for k in keys], dtype=torch.float64)
    phase = d[..., None] * w
    feats = [torch.cos(phase)] + ([torch.sin(phase)] if with_sin else [])
    return torch.cat(feats, -1)


def _centred(logits: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = _grid("logits", logits, p, p)
    mean = L.mean(-1, keepdim=True)
    return L - mean, mean


def _project(Lc: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares fit of ``Lc [p, p, p]`` on ``feats [p, p, p, m]``: (fit, coefficients)."""
    X = feats.reshape(-1, feats.shape[-1])
    coef = torch.linalg.lstsq(X, Lc.reshape(-1, 1)).solution[:, 0]
    return (X @ coef).reshape(Lc.shape), coef


def logit_fit(logits: torch.Tensor, p: int, keys: Sequence[int]) -> tuple[float, dict[int, float]]:
    """How much of the logits ``sum_k beta_k cos(w_k (a + b - c))`` over ``keys`` explains.

    ``logits`` is ``[p * p, p]`` or ``[p, p, p]`` (answers ``c = 0 .. p-1`` only). Each
    ``(a, b)`` row is first centred over ``c`` (softmax ignores a constant per row):
    ``L'(a, b, c) = L(a, b, c) - mean_c L(a, b, c)``. Then ``beta`` is the least-squares
    fit of ``L'`` on the cos terms over the whole grid, and

        ``explained = 1 - sum (L' - fit)^2 / sum L'^2``

    Returns:
        ``(explained, {k: beta_k})``.
    """
    p = _check_p(p)
    Lc, _ = _centred(logits, p)
    keys = _check_keys(keys, p)
    total = float(Lc.pow(2).sum())
    if total == 0.0:
        raise ValueError("logits are constant over the answers: there is no variance to explain")
    if not keys:
        return 0.0, {}
    fit, coef = _project(Lc, wave_features(p, keys))
    return 1.0 - float((Lc - fit).pow(2).sum()) / total, {k: float(c) for k, c in zip(keys, coef)}


def _split_logits(logits: torch.Tensor, p: int, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(restricted, excluded)`` logits ``[p, p, p]``: the row means plus the key-wave part,
    and the logits minus the key-wave part (key waves: cos and sin of ``w_k (a + b - c)``)."""
    Lc, mean = _centred(logits, p)
    keys = _check_keys(keys, p)
    wave = _project(Lc, wave_features(p, keys, with_sin=True))[0] if keys else torch.zeros_like(Lc)
    return mean + wave, mean + Lc - wave


def _loss(L: torch.Tensor, p: int, rows: Any) -> float:
    flat = L.reshape(p * p, p)
    answers = (torch.arange(p * p) // p + torch.arange(p * p) % p) % p
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.long or rows.ndim != 1 or rows.numel() == 0:
            raise ValueError("rows must be a non-empty 1-D LongTensor of grid indices a * p + b (e.g. train_idx)")
        if int(rows.min()) < 0 or int(rows.max()) >= p * p:
            raise ValueError(f"rows must be grid indices in 0..{p * p - 1}")
        flat, answers = flat[rows], answers[rows]
    return float(torch.nn.functional.cross_entropy(flat, answers))


def restricted_loss(logits: torch.Tensor, p: int, keys: Sequence[int], rows: Any = None) -> float:
    """Cross-entropy of the logits kept to their key-frequency waves (Nanda et al.'s restricted loss).

    ``R(a, b, c) = mean_c L(a, b, .) + P_keys L'(a, b, c)``, where ``P_keys`` is the
    least-squares projection of the centred logits ``L'`` onto the span of
    ``cos(w_k (a + b - c))`` and ``sin(w_k (a + b - c))`` for ``k`` in ``keys``.
    The loss is ``mean -log softmax(R(a, b, .))[(a + b) mod p]`` over ``rows`` (grid
    indices; default every pair). Low restricted loss means the key waves alone do the task.
    The key-wave part depends on ``a + b - c`` only, so every pair has the same restricted
    loss, training and test pairs alike: ``rows`` changes nothing but the cost.
    """
    p = _check_p(p)
    return _loss(_split_logits(logits, p, keys)[0], p, rows)


def excluded_loss(logits: torch.Tensor, p: int, keys: Sequence[int], rows: Any = None) -> float:
    """Cross-entropy of the logits with their key-frequency waves removed (the excluded loss).

    ``X(a, b, c) = L(a, b, c) - P_keys L'(a, b, c)`` (``P_keys`` as in
    :func:`restricted_loss`, fitted on the whole grid); the loss is taken over ``rows``,
    meant to be the training pairs. While the model memorises, removing the waves
    leaves the training loss low; once the waves carry the answer, it rises.
    """
    p = _check_p(p)
    return _loss(_split_logits(logits, p, keys)[1], p, rows)


# ------------------------------------------------------------------ interventions
def remove_frequencies(W_E: torch.Tensor, p: int, keys: Sequence[int]) -> torch.Tensor:
    """``W_E`` with the waves of ``keys`` taken out of its residue rows: ``[d_vocab, d_model]``.

    With ``E = W_E[:p]`` and ``B_f`` the ``2 |keys|`` rows ``cos k``, ``sin k`` (``k`` in
    ``keys``) of :func:`fourier_basis`, the residue rows become ``E - B_f^T (B_f E)``:
    every residue keeps its embedding minus the part that varies with ``x`` as a wave of
    a removed frequency (any phase, any direction of the residual stream). Rows beyond
    ``p`` (the ``=`` token) are returned unchanged. The result is a new tensor, float64;
    ``W_E`` is not modified. An ablation: run the model with it to test whether those
    frequencies carry the answer.
    """
    p = _check_p(p)
    W = _check_tensor("W_E", W_E, (2,))
    if W.shape[0] < p:
        raise ValueError(f"W_E must have at least p = {p} rows [d_vocab, d_model], got {list(W.shape)}")
    keys = _check_keys(keys, p)
    out = W.clone()
    if keys:
        B = fourier_basis(p)[0][[r for k in keys for r in (2 * k - 1, 2 * k)]]   # [2m, p]
        out[:p] = W[:p] - B.T @ (B @ W[:p])
    return out
