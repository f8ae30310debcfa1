"""Composition scores between heads of different layers, and their random baseline.

Elhage et al. (2021) measure how much a later head *reads* what an earlier head
*writes* with

    ``C(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)``.

In row-vector notation (see :mod:`toylab.circuits.weights`) an earlier head ``a``
writes ``x W_OV^a`` into the residual stream at its destination, and a later
head ``b`` computes the score ``q k^T = x_dst W_QK^b x_src^T`` with
``W_QK^b = W_Q^b W_K^{bT}``. Substituting ``a``'s output:

* **Q-composition** (``a`` writes at the query position):
  ``(x_dst W_OV^a) W_QK^b x_src^T``, matrix ``W_OV^a W_QK^b``.
* **K-composition** (``a`` writes at the key position):
  ``x_dst W_QK^b (x_src W_OV^a)^T = x_dst (W_QK^b W_OV^{aT}) x_src^T``. Its
  Frobenius norm equals that of the transpose ``W_OV^a W_QK^{bT}``, so we use
  ``W_A = W_OV^a``, ``W_B = W_QK^{bT}`` (all ``[d_model, d_model]``).
* **V-composition** (``a``'s output is moved again by ``b``):
  ``x W_OV^a W_OV^b``, matrix ``W_OV^a W_OV^b``.

(The paper, in column vectors, writes ``W_QK^{bT} W_OV^a`` for K; same norm.)
All products are taken through :class:`~toylab.factored.FactoredMatrix`.

Random baseline. If ``W_A``'s right singular vectors are uniformly random
(Haar) and independent of ``W_B`` -- true for ``W_V W_O`` with Gaussian factors
of any rank -- then ``E[||W_A W_B||_F^2] = ||W_A||_F^2 ||W_B||_F^2 / d_model``
exactly (``E[Q S^2 Q^T] = tr(S^2)/d I`` for Haar ``Q``). So the *root mean
square* score of random heads is exactly ``1/sqrt(d_model)``, whatever the
ranks; the mean score is slightly below it (Jensen), and
:func:`empirical_baseline` measures it by sampling Gaussian factors with the
model's shapes (hence ranks ``d_head``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toylab.circuits.weights import OV, QK, check_layer, refuse_layernorm, refuse_mlp
from toylab.factored import FactoredMatrix

KINDS = ("Q", "K", "V")

__all__ = ["KINDS", "composition_score", "composition_scores", "analytic_baseline",
           "empirical_baseline", "relative_composition_scores"]


def _as_factored(W, name: str) -> FactoredMatrix:
    if isinstance(W, FactoredMatrix):
        return W
    if isinstance(W, Tensor) and W.ndim >= 2 and W.is_floating_point():
        return FactoredMatrix(W, torch.eye(W.shape[-1], dtype=W.dtype, device=W.device))
    raise ValueError(f"{name} must be a FactoredMatrix or a float tensor [..., m, n], got "
                     f"{type(W).__name__}{list(W.shape) if isinstance(W, Tensor) else ''}")


def composition_score(W_A, W_B) -> Tensor:
    """``||W_A W_B||_F / (||W_A||_F ||W_B||_F)``, ``[...]`` over broadcast batch dims.

    ``W_A [..., m, k]``, ``W_B [..., k, n]``: tensors or FactoredMatrix. In
    ``[0, 1]`` (submultiplicativity); 0 for a zero matrix. Raises ValueError on
    mismatched inner dimensions.
    """
    A, B = _as_factored(W_A, "W_A"), _as_factored(W_B, "W_B")
    if A.rdim != B.ldim:
        raise ValueError(f"composition_score: W_A {list(A.shape)} and W_B {list(B.shape)} "
                         f"cannot be multiplied ({A.rdim} != {B.ldim})")
    num = (A @ B).norm().double()
    den = A.norm().double() * B.norm().double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).to(A.dtype)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown composition kind {kind!r}; expected one of {KINDS}")
    return kind


def _reader(model, kind: str) -> FactoredMatrix:
    """``W_B`` of every head for ``kind``: ``[n_layers, n_heads, d_model, d_model]``."""
    return {"Q": QK(model), "K": QK(model).T, "V": OV(model)}[kind]


@torch.no_grad()
def composition_scores(model, kind: str, layer_a: int | None = None, layer_b: int | None = None) -> Tensor:
    """Composition scores of ``kind`` ("Q", "K" or "V") for every earlier/later pair of heads.

    Returns ``[n_layers, n_heads, n_layers, n_heads]``: entry ``[la, ha, lb, hb]`` is
    ``C(W_OV^{la.ha}, W_B^{lb.hb})`` (``W_B`` per kind, module docstring), NaN
    where ``la >= lb`` (no composition is possible). With both ``layer_a`` and
    ``layer_b`` given (``layer_a < layer_b``): ``[n_heads (layer_a), n_heads (layer_b)]``.
    Refused for LayerNorm models (:func:`toylab.circuits.weights.refuse_layernorm`) and
    models with MLPs (:func:`toylab.circuits.weights.refuse_mlp`).
    """
    _check_kind(kind)
    cfg = model.cfg
    if cfg.n_layers < 2:
        raise ValueError(f"composition needs at least 2 layers, the model has {cfg.n_layers}")
    refuse_layernorm(model, "composition_scores")
    refuse_mlp(model, "composition_scores")
    W_A, W_B = OV(model), _reader(model, kind)
    if layer_a is not None or layer_b is not None:
        if layer_a is None or layer_b is None:
            raise ValueError("give both layer_a and layer_b, or neither")
        la, lb = check_layer(model, layer_a), check_layer(model, layer_b)
        if la >= lb:
            raise ValueError(f"layer_a ({la}) must be earlier than layer_b ({lb})")
        a, b = W_A[la], W_B[lb]                                         # [H, d, d]
        return composition_score(FactoredMatrix(a.A[:, None], a.B[:, None]),
                                 FactoredMatrix(b.A[None], b.B[None]))
    a = FactoredMatrix(W_A.A[:, :, None, None], W_A.B[:, :, None, None])
    b = FactoredMatrix(W_B.A[None, None], W_B.B[None, None])
    scores = composition_score(a, b)                                     # [L, H, L, H]
    layer = torch.arange(cfg.n_layers)
    earlier = (layer[:, None, None, None] < layer[None, None, :, None]).expand_as(scores)
    return torch.where(earlier, scores, torch.full_like(scores, float("nan")))


def analytic_baseline(d_model: int) -> float:
    """``1/sqrt(d_model)``: the exact root-mean-square composition score of random heads
    (any kind, any rank; module docstring). The mean is slightly lower."""
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    return 1.0 / math.sqrt(d_model)


@torch.no_grad()
def empirical_baseline(d_model: int, d_head: int, kind: str = "K", n_samples: int = 200,
                       seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the ``kind`` composition score of random heads.

    Samples ``n_samples`` pairs of heads with i.i.d. Gaussian ``W_Q, W_K, W_V
    [d_model, d_head]`` and ``W_O [d_head, d_model]`` (a private generator seeded
    with ``seed``; the score is scale-free) and returns ``(mean, std)`` of
    ``C(W_OV^a, W_B^b)``. Deterministic for a given seed.
    """
    _check_kind(kind)
    for name, v in (("d_model", d_model), ("d_head", d_head), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    g = torch.Generator().manual_seed(int(seed))

    def rand(*shape):
        return torch.randn(n_samples, *shape, generator=g, dtype=torch.float64)

    ov_a = FactoredMatrix(rand(d_model, d_head), rand(d_head, d_model))
    if kind == "V":
        b = FactoredMatrix(rand(d_model, d_head), rand(d_head, d_model))
    else:
        b = FactoredMatrix(rand(d_model, d_head), rand(d_model, d_head).mT)
        b = b.T if kind == "K" else b
    s = composition_score(ov_a, b)
    return float(s.mean()), float(s.std()) if n_samples > 1 else 0.0


def relative_composition_scores(model, kind: str, baseline: str = "empirical", n_samples: int = 200,
                                seed: int = 0) -> Tensor:
    """:func:`composition_scores` divided by the random baseline, ``[L, H, L, H]`` (NaN where not earlier).

    ``baseline="empirical"`` (mean of :func:`empirical_baseline` with the model's
    ``d_model, d_head``) or ``"analytic"`` (``1/sqrt(d_model)``). 1 = as much as chance.
    """
    cfg = model.cfg
    if baseline == "empirical":
        base = empirical_baseline(cfg.d_model, cfg.d_head, kind, n_samples, seed)[0]
    elif baseline == "analytic":
        base = analytic_baseline(cfg.d_model)
    else:
        raise ValueError(f'baseline must be "empirical" or "analytic", got {baseline!r}')
    return composition_scores(model, kind) / base
