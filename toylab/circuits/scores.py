"""Scores that classify attention heads.

Head detectors read attention patterns on a batch of tokens. Each has one
formula, written here and in the book, and each returns 1 for a head that
does its job perfectly. ``pattern`` is ``[batch, n_heads, query_pos, key_pos]``
(rows sum to 1, causal), ``tokens`` is ``[batch, pos]``.

- previous-token score  ``= mean_{b, q >= 1} A[b, q, q-1]``
- duplicate-token score ``= mean_{(b, q) in D} sum_{k < q : t_k = t_q} A[b, q, k]``
- induction score       ``= mean_{(b, q) in D} sum_{1 <= k <= q : t_{k-1} = t_q} A[b, q, k]``

where ``D`` is the set of destinations ``(b, q)`` whose token occurred
earlier in its sequence (for induction: at a position ``k-1 < q``, so there
is a token after it to attend to), optionally restricted to given
``destinations``. On the probe ``[BOS, r, r]`` with ``destinations`` = the
second copy, the induction score is the mean attention from the tokens of the
second copy to the token right after their earlier occurrence. (Left
unrestricted, ``D`` also holds chance repeats inside ``r``, where a head that
has learned to distrust a lone match rightly attends less.)

``exclude_bos=True`` scores the pattern ``Ã`` with the BOS key (position 0)
removed and each row renormalised over the other keys,
``Ã[q, k] = A[q, k] / sum_{k' >= 1} A[q, k']`` for ``k >= 1``: many heads park
the attention they do not need on BOS, and this asks what the head does with
the rest. Destinations whose only candidate key is BOS (``q = 0``, and ``q = 1``
for the previous-token score) are left out. Inputs are never modified.

``pattern`` must be a causal probability distribution (what
``hook_pattern`` records): entries >= 0, every row summing to 1 (within
:data:`ROW_SUM_TOL`) and zero above the diagonal (a key after its query).
Anything else is refused with a ``ValueError`` naming the likely mistake
(attention *scores* ``hook_attn_scores`` passed instead of the pattern, a
transposed ``[key, query]`` pattern, NaN) -- it would otherwise give a
"score" outside ``[0, 1]``.

Not TransformerLens's normalisation. TransformerLens's ``detect_head``
(``error_measure="mul"``) scores ``sum(A * D) / sum(A)`` over *every* query
row of the lower triangle, ``D`` its 0/1 detection pattern; since each row of
``A`` sums to 1 that is the attention on the targets averaged over *all*
query positions, rows with no target counting as 0. Ours averages only over
the destinations ``D`` that have a target (and, on the probe, only over the
second copy). On ``[BOS, r, r]`` with ``n_ctx = 32`` about half the rows have a
target, so TransformerLens's induction score of the same head is about half
of ours (0.47-0.51x measured on the layer-1 heads of the shipped
``induction-2l``: 15 of the 31 rows of the probe are second-copy tokens). Thresholds (e.g. the
report's 0.4) do not carry over between the two.
"""

from __future__ import annotations

import torch

ROW_SUM_TOL = 1e-3  # float16/bfloat16 softmax rows sum to 1 within a few 1e-4; float32 within 1e-6
_ZERO_TOL = 1e-6


def check_causal_pattern(pattern: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``pattern [..., q, k]`` is a causal attention pattern:
    finite, ``>= 0``, rows summing to 1 (within ``ROW_SUM_TOL``), zero above the diagonal."""
    if not isinstance(pattern, torch.Tensor) or pattern.ndim < 2:
        got = list(pattern.shape) if isinstance(pattern, torch.Tensor) else type(pattern).__name__
        raise ValueError(f"pattern must be a tensor [..., query_pos, key_pos] of attention probabilities, got {got}")
    p = pattern.detach()
    if p.dtype.is_complex or not p.dtype.is_floating_point:
        raise ValueError(f"pattern must be a float tensor of attention probabilities, got dtype {p.dtype}")
    if p.numel() == 0:
        raise ValueError(f"pattern is empty (shape {list(p.shape)})")
    p = p.float()
    if not torch.isfinite(p).all():
        raise ValueError("pattern holds NaN or inf: an attention pattern is finite probabilities "
                         "(if it came from attention scores, the scores hold -inf above the diagonal)")
    upper = p.triu(1).abs().amax()  # the largest weight on a key after its query (0 when n = 1)
    if float(upper) > _ZERO_TOL:
        raise ValueError(
            f"pattern is not causal: it has weight up to {float(upper):.3g} above the diagonal (a key after its "
            "query). Expected [batch, n_heads, query_pos, key_pos] from hook_pattern; is it transposed "
            "(key before query)?"
        )
    lo = float(p.min())
    sums = p.sum(-1)
    bad = (sums - 1).abs().max()
    if lo < -_ZERO_TOL or float(bad) > ROW_SUM_TOL:
        raise ValueError(
            f"pattern is not a probability distribution over keys: entries in [{lo:.3g}, {float(p.max()):.3g}], "
            f"row sums in [{float(sums.min()):.3g}, {float(sums.max()):.3g}] (expected >= 0 and 1). "
            "Did you pass the attention scores (hook_attn_scores, before the softmax) instead of the "
            "pattern (hook_pattern), or take the softmax over the wrong dim?"
        )


def _check_pattern(pattern: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
    if not isinstance(pattern, torch.Tensor) or pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        shape = list(pattern.shape) if isinstance(pattern, torch.Tensor) else type(pattern).__name__
        raise ValueError(f"pattern must have shape [batch, n_heads, query_pos, key_pos] with query_pos == key_pos, got {shape}")
    check_causal_pattern(pattern)
    if tokens is not None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"tokens must be a LongTensor [batch, pos] of token ids, got {got}")
        if tokens.ndim != 2 or tokens.shape[0] != pattern.shape[0] or tokens.shape[1] != pattern.shape[-1]:
            raise ValueError(
                f"tokens must have shape [batch, pos] = {[pattern.shape[0], pattern.shape[-1]]} "
                f"to match the pattern {list(pattern.shape)}, got {list(tokens.shape)}"
            )


def without_bos(pattern: torch.Tensor) -> torch.Tensor:
    """``[batch, n_heads, q, k]`` -> the same shape: key 0 (BOS) removed, rows renormalised
    over keys ``>= 1`` (a row that had all its mass on BOS becomes all zeros)."""
    _check_pattern(pattern)
    rest = pattern.clone()
    rest[..., 0] = 0.0
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp_min(torch.finfo(rest.dtype).tiny), torch.zeros_like(rest))


def _masked_mean(pattern: torch.Tensor, mask: torch.Tensor, what: str,
                 destinations: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over (b, q) in D of sum_k mask[b, q, k] A[b, h, q, k]`` -> ``[n_heads]``.

    ``mask [batch, q, k]`` marks the keys that count; ``D`` = rows of ``mask`` with
    a key, and inside ``destinations`` (``[pos]`` or ``[batch, pos]`` bool) if given.
    """
    has_target = mask.any(-1)  # [batch, q]
    if destinations is not None:
        try:
            destinations = torch.as_tensor(destinations, dtype=torch.bool)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"destinations must be a bool mask [pos] or [batch, pos], got "
                            f"{type(destinations).__name__}") from None
        batch, n = mask.shape[:2]
        if destinations.ndim not in (1, 2) or destinations.shape[-1] != n or (
                destinations.ndim == 2 and destinations.shape[0] != batch):
            raise ValueError(f"destinations must be a bool mask [pos] = [{n}] or [batch, pos] = [{batch}, {n}], "
                             f"got shape {list(destinations.shape)}")
        has_target = has_target & destinations
    if not has_target.any():
        raise ValueError(
            f"no destination in this batch has a {what}: the {what} score needs tokens that repeat "
            "(e.g. the probe [BOS, r, r] from toylab.data.repeated_tokens)"
        )
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, n_heads, q]
    return mass.transpose(0, 1)[:, has_target].mean(-1)


def previous_token_score(pattern: torch.Tensor, exclude_bos: bool = False) -> torch.Tensor:
    """``[batch, n_heads, pos, pos]`` -> ``[n_heads]``: mean attention to the previous position
    (``exclude_bos``: of the attention not on BOS, from destinations ``q >= 2``)."""
    _check_pattern(pattern)
    first = 2 if exclude_bos else 1
    if pattern.shape[-1] < first + 1:
        raise ValueError(f"the previous-token score needs sequences of at least {first + 1} positions")
    if exclude_bos:
        pattern = without_bos(pattern)
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., first - 1:].mean(dim=(0, 2))


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor,
                          destinations: torch.Tensor | None = None, exclude_bos: bool = False) -> torch.Tensor:
    """``[batch, n_heads, pos, pos]``, ``[batch, pos]`` -> ``[n_heads]``:
    attention from a token to its own earlier occurrences."""
    _check_pattern(pattern, tokens)
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    mask = same & torch.ones_like(same[0]).tril(diagonal=-1)
    if exclude_bos:
        pattern, mask = without_bos(pattern), mask.clone()
        mask[..., 0] = False
    return _masked_mean(pattern, mask, "earlier duplicate", destinations)


def induction_score(pattern: torch.Tensor, tokens: torch.Tensor,
                    destinations: torch.Tensor | None = None, exclude_bos: bool = False) -> torch.Tensor:
    """``[batch, n_heads, pos, pos]``, ``[batch, pos]`` -> ``[n_heads]``:
    attention from a token to the tokens right after its earlier occurrences
    (only from ``destinations``, a bool mask ``[pos]`` or ``[batch, pos]``, if given)."""
    _check_pattern(pattern, tokens)
    n = tokens.shape[1]
    mask = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
    # key k is an induction target of query q when t[k-1] == t[q] and k <= q
    mask[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
    mask &= torch.ones(n, n, dtype=torch.bool).tril()
    if exclude_bos:  # keys k >= 1 only (the mask never selects k = 0: it needs a token before k)
        pattern = without_bos(pattern)
    return _masked_mean(pattern, mask, "earlier occurrence", destinations)


@torch.no_grad()
def head_detector_scores(model, tokens: torch.Tensor, destinations: torch.Tensor | None = None,
                         exclude_bos: bool = False) -> dict[str, torch.Tensor]:
    """Every head's detector scores on ``tokens [batch, pos]``.

    Returns ``{"previous_token": [n_layers, n_heads], "duplicate_token": ...,
    "induction": ...}``; ``destinations`` (bool ``[pos]`` or ``[batch, pos]``)
    restricts the duplicate-token and induction scores to those query
    positions. A batch without repeated tokens raises ``ValueError``.
    """
    if not callable(getattr(model, "run_with_cache", None)):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out: dict[str, list[torch.Tensor]] = {"previous_token": [], "duplicate_token": [], "induction": []}
    toks = model.check_tokens(tokens)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        out["previous_token"].append(previous_token_score(pattern, exclude_bos))
        out["duplicate_token"].append(duplicate_token_score(pattern, toks, destinations, exclude_bos))
        out["induction"].append(induction_score(pattern, toks, destinations, exclude_bos))
    empty = torch.zeros(0, model.cfg.n_heads)
    return {k: torch.stack(v) if v else empty for k, v in out.items()}
