"""Metrics for circuit discovery: ``logits [batch, pos, d_vocab] -> scalar``.

Each factory returns a function of the logits of one run (the batch the
metric was made for) that returns a 0-dim tensor, differentiable, so the same
metric serves exact patching, attribution patching and ACDC. Positions are a
bool mask over the *logit* positions, ``[pos]`` or ``[batch, pos]``: the
logits at ``p`` predict the token at ``p + 1``, so for induction data use
:func:`induction_positions` (``mask[b, p] = is_repeat[b, p + 1]``).

- :func:`kl_to_clean`: ``mean_{b,p in mask} KL(softmax(clean) || softmax(logits))`` (ACDC's default);
- :func:`logit_diff`: ``mean_{b,p in mask} logit[t_{p+1}] - logit[t'_{p+1}]`` (linear in the logits);
- :func:`next_token_loss_on`: ``mean_{b,p in mask} -log softmax(logits)[t_{p+1}]``.

A metric's value is checked wherever the discovery methods call it
(:func:`check_metric_value`): it must be one finite number. A NaN or an infinity
(a user's metric dividing by zero, logits that overflowed) is refused with a
sentence, never compared with a threshold or ranked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]


def _mask(positions, batch: int, n_pos: int) -> torch.Tensor:
    """``[batch, n_pos]`` bool mask from None (every position but the last), ``[n_pos]`` or ``[batch, n_pos]``."""
    if positions is None:
        m = torch.ones(batch, n_pos, dtype=torch.bool)
        m[:, -1] = False  # the last logit has no next token
        return m
    try:
        positions = torch.as_tensor(positions)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"positions must be a bool mask [pos] or [batch, pos], got {type(positions).__name__}") from None
    if positions.dtype != torch.bool:
        raise TypeError(f"positions must be a bool mask [pos] or [batch, pos], got dtype {positions.dtype}")
    if positions.shape == (n_pos,):
        positions = positions[None].expand(batch, n_pos)
    if positions.shape != (batch, n_pos):
        raise ValueError(f"positions must be a bool mask of shape [{n_pos}] or [{batch}, {n_pos}], "
                         f"got {list(positions.shape)}")
    if not positions.any():
        raise ValueError("the positions mask selects nothing: the metric would be the mean of no values")
    return positions.clone()


def induction_positions(is_repeat: torch.Tensor) -> torch.Tensor:
    """``is_repeat [batch, pos]`` (bool, the token at p is predictable by induction) ->
    logit-position mask ``[batch, pos]`` with ``mask[:, p] = is_repeat[:, p + 1]`` (last column False)."""
    if not isinstance(is_repeat, torch.Tensor) or is_repeat.dtype != torch.bool or is_repeat.ndim != 2:
        got = (f"{list(is_repeat.shape)} {is_repeat.dtype}" if isinstance(is_repeat, torch.Tensor)
               else type(is_repeat).__name__)
        raise ValueError(f"is_repeat must be a bool tensor [batch, pos] (InductionBatch.is_repeat), got {got}")
    m = torch.zeros_like(is_repeat)
    m[:, :-1] = is_repeat[:, 1:]
    return m


def _check_logits(logits: torch.Tensor, shape: tuple[int, int], name: str, max_id: int = -1) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != shape:
        raise ValueError(f"metric {name!r} expects logits [batch, pos, d_vocab] with [batch, pos] = {list(shape)}, "
                         f"got {list(getattr(logits, 'shape', [type(logits).__name__]))}")
    if max_id >= logits.shape[-1]:
        raise ValueError(f"metric {name!r} was made for token id {max_id}, but these logits have d_vocab = "
                         f"{logits.shape[-1]}: the tokens belong to another vocabulary")


def _check_tokens_arg(tokens, name: str) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor [batch, pos] of token ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must be integer token ids [batch, pos], got dtype {tokens.dtype}")
    if tokens.ndim == 2 and (int(tokens.numel()) == 0 or int(tokens.min()) < 0):
        raise ValueError(f"{name} must be non-empty token ids >= 0, got shape {list(tokens.shape)}"
                         + (f" with min {int(tokens.min())}" if tokens.numel() else ""))


def kl_to_clean(clean_logits: torch.Tensor, positions=None) -> Metric:
    """``M(logits) = mean_{(b, p) in mask} sum_v P(v) (log P(v) - log Q(v))`` with ``P = softmax(clean_logits)``,
    ``Q = softmax(logits)``. ``clean_logits [batch, pos, d_vocab]``; 0 for the clean run, >= 0 up to rounding."""
    if not isinstance(clean_logits, torch.Tensor) or clean_logits.ndim != 3 or not clean_logits.dtype.is_floating_point:
        got = (f"{list(clean_logits.shape)} {clean_logits.dtype}" if isinstance(clean_logits, torch.Tensor)
               else type(clean_logits).__name__)
        raise ValueError(f"clean_logits must be a float tensor [batch, pos, d_vocab] (the model's logits), got {got}")
    if clean_logits.numel() == 0:
        raise ValueError(f"clean_logits is empty (shape {list(clean_logits.shape)})")
    n_bad = int((~torch.isfinite(clean_logits)).sum())
    if n_bad:
        raise ValueError(f"clean_logits holds {n_bad} NaN or inf value(s) of {clean_logits.numel()}: the clean "
                         "distribution it defines is not a distribution")
    B, P, _ = clean_logits.shape
    mask = _mask(positions, B, P)
    logp = torch.log_softmax(clean_logits.detach().float(), -1)[mask]  # [n, d_vocab]
    p = logp.exp()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, (B, P), "kl_to_clean")
        logq = torch.log_softmax(logits.float(), -1)[mask]
        return (p * (logp - logq)).sum(-1).mean()

    metric.__name__ = "kl_to_clean"
    return metric


def logit_diff(tokens: torch.Tensor, wrong_tokens: torch.Tensor, positions=None) -> Metric:
    """``M(logits) = mean_{(b, p) in mask} logits[b, p, tokens[b, p+1]] - logits[b, p, wrong_tokens[b, p+1]]``.

    ``tokens, wrong_tokens [batch, pos]`` (e.g. the clean and corrupted sequences). Linear in the logits.
    """
    _check_tokens_arg(tokens, "tokens")
    _check_tokens_arg(wrong_tokens, "wrong_tokens")
    if tokens.shape != wrong_tokens.shape or tokens.ndim != 2:
        raise ValueError(f"tokens and wrong_tokens must both be [batch, pos], got {list(tokens.shape)} "
                         f"and {list(wrong_tokens.shape)}")
    B, P = tokens.shape
    mask = _mask(positions, B, P)
    mask[:, -1] = False
    if not mask.any():
        raise ValueError("the positions mask selects only the last position, which has no next token")
    right = torch.zeros_like(tokens)
    wrong = torch.zeros_like(tokens)
    right[:, :-1], wrong[:, :-1] = tokens[:, 1:], wrong_tokens[:, 1:]
    top = int(torch.maximum(right, wrong).max())
    differs = mask & (right != wrong)
    if not differs.any():
        raise ValueError("tokens and wrong_tokens agree at every selected position: the logit difference is 0")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, (B, P), "logit_diff", top)
        lg = logits.float()
        d = lg.gather(-1, right[..., None]) - lg.gather(-1, wrong[..., None])
        return d[..., 0][mask].mean()

    metric.__name__ = "logit_diff"
    return metric


def next_token_loss_on(tokens: torch.Tensor, positions=None) -> Metric:
    """``M(logits) = mean_{(b, p) in mask} -log softmax(logits[b, p])[tokens[b, p+1]]`` (nats).

    ``tokens [batch, pos]``; for induction data pass ``positions=induction_positions(is_repeat)``.
    """
    _check_tokens_arg(tokens, "tokens")
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 2, got {list(tokens.shape)}")
    B, P = tokens.shape
    mask = _mask(positions, B, P)
    mask[:, -1] = False
    if not mask.any():
        raise ValueError("the positions mask selects only the last position, which has no next token")
    nxt = torch.zeros_like(tokens)
    nxt[:, :-1] = tokens[:, 1:]
    top = int(nxt.max())

    def metric(logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, (B, P), "next_token_loss_on", top)
        logq = torch.log_softmax(logits.float(), -1).gather(-1, nxt[..., None])[..., 0]
        return -logq[mask].mean()

    metric.__name__ = "next_token_loss_on"
    return metric


def check_metric(metric, where: str = "metric") -> None:
    """``TypeError`` unless ``metric`` is a function ``logits [batch, pos, d_vocab] -> scalar``."""
    if not callable(metric):
        raise TypeError(f"{where} must be a function logits [batch, pos, d_vocab] -> scalar (e.g. "
                        f"toylab.discovery.metrics.kl_to_clean(clean_logits)), got {type(metric).__name__} {metric!r}")


def check_metric_value(value, where: str = "metric") -> torch.Tensor:
    """The metric's output as a 0-dim float tensor; ``ValueError`` for any other shape or a NaN/inf value,
    ``TypeError`` for a non-tensor."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) or value.dtype == torch.bool or value.dtype.is_complex:
        raise TypeError(f"the {where} must return a real scalar tensor, got "
                        f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"the {where} must return a scalar (one number for the whole batch), "
                         f"got a tensor of shape {list(value.shape)}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"the {where} returned {float(value.detach())}: a metric must be a finite number (NaN or inf "
                         "cannot be compared with a threshold or ranked; are the logits finite, does the "
                         "metric divide by zero?)")
    return value.reshape(())


def check_induction_batch(batch) -> None:
    """``TypeError`` unless ``batch`` is an InductionBatch (tokens and its ground truth, one row per sequence)."""
    from toylab.data.induction import InductionBatch

    if not isinstance(batch, InductionBatch):
        raise TypeError(f"batch must be an InductionBatch (InductionData.sample_batch or copy_random_segment), "
                        f"got {type(batch).__name__}: the ground truth of the repeats is needed, not only tokens")
