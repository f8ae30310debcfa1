"""Copying scores of heads, and the in-context-learning score of a model.

Eigenvalue copying score (Elhage et al. 2021). A head copies if attending
to token ``s`` raises the logit of ``s`` itself: its full OV circuit
``M = W_E W_OV W_U [d_vocab, d_vocab]`` then has mostly positive eigenvalues.
With ``lambda_i`` the eigenvalues,

    ``copying score = Re(sum_i lambda_i) / sum_i |lambda_i|``   in ``[-1, 1]``

(1: all eigenvalues positive reals; -1: all negative; 0 on average for random
matrices, with a spread that depends on ``d_head``: the score is a ratio over
only ``d_head`` nonzero eigenvalues, and its spread over random Gaussian heads
shrinks roughly like ``1/d_head``. Measured with :func:`random_copying_baseline`
(d_vocab 128, d_model 64, 2000 heads): the 95% / 99% quantiles are 0.64 / 0.83
at ``d_head = 4`` (2.9% of random heads score >= 0.72), 0.33 / 0.45 at
``d_head = 8`` and 0.10 / 0.14 at ``d_head = 32``. So no fixed threshold
carries across shapes: compare a head with the baseline quantiles for its
model's shapes). ``M = A B`` with ``A = W_E W_V``, ``B = W_O W_U`` has the nonzero
eigenvalues of ``B A = W_O (W_U W_E) W_V [d_head, d_head]``; we form the
``[d_model, d_model]`` matrix ``W_U W_E`` in vocabulary chunks, so memory is
``O(d_model^2 + chunk d_model)``, never ``O(d_vocab^2)``.

Direct-path copying (Olsson et al. 2022 style, defined here): read each row
``M[s, :]`` -- the logit effect of attending to source ``s`` -- and ask whether
``s`` is raised above the other tokens. See :func:`direct_copying_scores`.

In-context-learning score (Olsson et al.: the loss of the 500th token minus
the loss of the 50th). With ``n_ctx = 32`` we compare a late token index with
an early one: ``ICL = mean loss(token late) - mean loss(token early)`` (nats);
negative means the model predicts better with more context.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toylab.circuits.weights import OV, full_ov, refuse_layernorm, refuse_mlp

__all__ = ["copying_score", "full_ov_eigenvalues", "copying_scores", "direct_copying_scores",
           "random_copying_baseline", "icl_score", "icl_score_on_training_data"]


def copying_score(eigenvalues: Tensor) -> Tensor:
    """``Re(sum lambda) / sum |lambda|`` over the last dim: ``[..., k]`` -> ``[...]`` (float).

    Real or complex eigenvalues; 0 when all eigenvalues are 0.
    """
    if not isinstance(eigenvalues, Tensor) or eigenvalues.ndim < 1:
        raise ValueError(f"eigenvalues must be a tensor [..., k], got {eigenvalues!r}")
    ev = eigenvalues.to(torch.complex128)
    den = ev.abs().sum(-1)
    num = ev.sum(-1).real
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).float()


@torch.no_grad()
def _unembed_embed(model, chunk: int) -> Tensor:
    """``W_U W_E [d_model, d_model]`` in float64, summed over vocabulary chunks."""
    W_E, W_U = model.W_E.detach(), model.W_U.detach()
    out = torch.zeros(model.cfg.d_model, model.cfg.d_model, dtype=torch.float64)
    for i in range(0, model.cfg.d_vocab, chunk):
        out += W_U[:, i:i + chunk].double() @ W_E[i:i + chunk].double()
    return out


@torch.no_grad()
def full_ov_eigenvalues(model, chunk: int = 8192) -> Tensor:
    """Nonzero-able eigenvalues of every head's full OV circuit ``W_E W_OV W_U``:
    ``[n_layers, n_heads, d_head]`` complex128, by descending magnitude.

    Computed as ``eigvals(W_O (W_U W_E) W_V)`` (the small ``B A`` form), no ``d_vocab^2`` memory.
    """
    if model.cfg.n_layers == 0:
        raise ValueError("the model has 0 layers: it has no heads and no OV circuits")
    refuse_layernorm(model, "the full-OV copying score")
    refuse_mlp(model, "the full-OV copying score")
    M = _unembed_embed(model, chunk)
    small = model.W_O.detach().double() @ M @ model.W_V.detach().double()   # [L, H, e, e]
    ev = torch.linalg.eigvals(small)
    order = ev.abs().argsort(dim=-1, descending=True, stable=True)
    return ev.gather(-1, order)


def copying_scores(model, circuit: str = "full") -> Tensor:
    """Eigenvalue copying score of every head, ``[n_layers, n_heads]``.

    ``circuit="full"``: of the full OV circuit ``W_E W_OV W_U`` (token to token);
    ``circuit="ov"``: of ``W_OV`` alone (residual direction to itself).
    Random heads spread around 0 by an amount that depends on ``d_head`` (module
    docstring: 99% quantile 0.83 at d_head 4, 0.14 at d_head 32): judge a score against :func:`random_copying_baseline` for the model's shapes.
    Refused for LayerNorm models (:func:`toylab.circuits.weights.refuse_layernorm`).
    """
    if circuit == "full":
        return copying_score(full_ov_eigenvalues(model))
    if circuit == "ov":
        if model.cfg.n_layers == 0:
            raise ValueError("the model has 0 layers: it has no heads and no OV circuits")
        refuse_layernorm(model, "the OV copying score")
        refuse_mlp(model, "the OV copying score")
        return copying_score(OV(model).eigenvalues)
    raise ValueError(f'circuit must be "full" or "ov", got {circuit!r}')


@torch.no_grad()
def random_copying_baseline(d_vocab: int, d_model: int, d_head: int, quantiles=(0.5, 0.95, 0.99),
                            n_samples: int = 2000, seed: int = 0, circuit: str = "full") -> dict[float, float]:
    """Quantiles of the copying score of *random* heads with the given shapes: ``{q: score}``.

    Each sample draws Gaussian ``W_E [d_vocab, d_model]``, ``W_V [d_model, d_head]``,
    ``W_O [d_head, d_model]``, ``W_U [d_model, d_vocab]`` (scale does not matter: the
    score is scale-free) and scores ``W_E W_V W_O W_U`` (``circuit="full"``) or
    ``W_V W_O`` (``"ov"``) with :func:`copying_score`, through the small
    ``[d_head, d_head]`` matrix. A head's score means something only when it is
    well above, e.g., the 0.99 quantile for its model's shapes. Seeded by ``seed``;
    cost ``O(n_samples (d_vocab d_model^2 + d_head^3))``.
    """
    for name, v in (("d_vocab", d_vocab), ("d_model", d_model), ("d_head", d_head), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if circuit not in ("full", "ov"):
        raise ValueError(f'circuit must be "full" or "ov", got {circuit!r}')
    qs = torch.as_tensor(quantiles, dtype=torch.float64).reshape(-1)
    if qs.numel() == 0 or not ((qs >= 0) & (qs <= 1)).all():
        raise ValueError(f"quantiles must be numbers in [0, 1], got {quantiles!r}")
    g = torch.Generator().manual_seed(int(seed))
    batch = 256
    scores = []
    for start in range(0, n_samples, batch):
        n = min(batch, n_samples - start)
        W_V = torch.randn(n, d_model, d_head, generator=g, dtype=torch.float64)
        W_O = torch.randn(n, d_head, d_model, generator=g, dtype=torch.float64)
        if circuit == "full":
            W_E = torch.randn(n, d_vocab, d_model, generator=g, dtype=torch.float64)
            W_U = torch.randn(n, d_model, d_vocab, generator=g, dtype=torch.float64)
            small = W_O @ (W_U @ W_E) @ W_V
        else:
            small = W_O @ W_V
        scores.append(copying_score(torch.linalg.eigvals(small)).double())
    q = torch.quantile(torch.cat(scores), qs)
    return {float(k): float(v) for k, v in zip(qs, q)}


@torch.no_grad()
def direct_copying_scores(model, k: int = 1, sources: Tensor | None = None,
                          chunk: int = 1024) -> dict[str, Tensor]:
    """How often a head's direct logit effect raises the attended token itself.

    For each head and each source token ``s`` in ``sources`` (default: every
    token but BOS, ``1..d_vocab-1``), with ``r = M[s, :]`` the row of the full OV
    circuit ``M = W_E W_OV W_U`` (the logit effect of attending to ``s``):

    * ``"top_k"``:  ``mean_s 1[ r[s] is among the k largest entries of r ]``;
    * ``"zscore"``: ``mean_s (r[s] - mean(r)) / std(r)`` -- by how many standard
      deviations ``s``'s own logit is raised above the average token.

    Returns ``{"top_k": [n_layers, n_heads], "zscore": [n_layers, n_heads]}``.
    Rows are formed ``chunk`` at a time: time ``O(|sources| d_vocab d_head)``,
    memory ``O(chunk d_vocab)``.
    """
    cfg = model.cfg
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.d_vocab:
        raise ValueError(f"k must be an int in [1, d_vocab={cfg.d_vocab}], got {k!r}")
    if sources is None:
        sources = torch.arange(1, cfg.d_vocab)
    sources = torch.as_tensor(sources)
    if sources.ndim != 1 or sources.numel() == 0 or sources.dtype.is_floating_point:
        raise ValueError(f"sources must be a non-empty 1-D tensor of token ids, got {sources!r}")
    if int(sources.min()) < 0 or int(sources.max()) >= cfg.d_vocab:
        raise ValueError(f"sources must be token ids in [0, {cfg.d_vocab})")
    refuse_layernorm(model, "direct_copying_scores")
    refuse_mlp(model, "direct_copying_scores")
    fov = full_ov(model)                                                       # [L, H, V, V] factored
    top, z = torch.zeros(cfg.n_layers, cfg.n_heads), torch.zeros(cfg.n_layers, cfg.n_heads)
    for i in range(0, sources.numel(), chunk):
        s = sources[i:i + chunk]
        rows = fov.A[:, :, s].double() @ fov.B.double()                        # [L, H, c, V]
        own = rows.gather(-1, s.view(1, 1, -1, 1).expand(*rows.shape[:2], -1, 1))  # [L, H, c, 1]
        rank = (rows > own).sum(-1)                                            # strictly larger entries
        top += (rank < k).double().sum(-1).float()
        z += ((own[..., 0] - rows.mean(-1)) / rows.std(-1)).sum(-1).float()
    n = sources.numel()
    return {"top_k": top / n, "zscore": z / n}


@torch.no_grad()
def icl_score(model, tokens: Tensor, early: int = 5, late: int | None = None) -> float:
    """In-context-learning score ``mean_b loss(token late) - mean_b loss(token early)`` (nats).

    ``tokens [batch, pos]`` should come from the model's training distribution
    (see :func:`icl_score_on_training_data`). "Loss of token i" is the
    cross-entropy of predicting ``tokens[:, i]`` from ``tokens[:, :i]``;
    ``1 <= early < late <= pos - 1``, ``late`` defaults to the last token.
    Negative: the model gets better with more context.
    """
    tokens = model.check_tokens(tokens)
    n = tokens.shape[1]
    late = n - 1 if late is None else late
    for name, v in (("early", early), ("late", late)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int token index, got {v!r}")
    if not 1 <= early < late <= n - 1:
        raise ValueError(f"need 1 <= early < late <= pos - 1 = {n - 1}, got early={early}, late={late}")
    loss = model(tokens, return_type="loss_per_token")                         # [b, n-1]: token i at i-1
    return float(loss[:, late - 1].mean() - loss[:, early - 1].mean())


def icl_score_on_training_data(checkpoint, batch: int = 512, seed: int = 0, early: int = 5,
                               late: int | None = None) -> float:
    """:func:`icl_score` on ``batch`` sequences sampled (generator seeded with ``seed``)
    from the dataset the checkpoint was trained on."""
    from toylab.data import make_dataset

    data = make_dataset(checkpoint.data_spec)
    tokens = data.sample(batch, torch.Generator().manual_seed(int(seed)))
    return icl_score(checkpoint.model, tokens, early, late)
