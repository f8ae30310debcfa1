"""Steering by activation addition (Turner et al. 2023): add ``c v`` at a hook.

At a residual-stream hook (``hook_embed``, ``blocks.{l}.hook_resid_pre|resid_post``,
``blocks.{l}.hook_attn_out``; activations ``[batch, pos, d_model]``) the steered run
replaces ``x_p`` by ``x_p + c v`` for every position ``from_pos <= p < to_pos`` (to the end by
default); ``v`` may also be one vector per sequence, ``[batch, d_model]``.

**The exact case.** With no LayerNorm, the logits are ``resid_final W_U``. A vector
added after the last attention layer (at ``blocks.{L-1}.hook_resid_post`` or
``blocks.{L-1}.hook_attn_out``; at ``hook_embed`` in a 0-layer model) reaches the
logits through nothing else, so the logit shift at every steered position is exactly::

    Delta logits = c v W_U          [d_vocab]

(:func:`predicted_logit_shift`). Added earlier, the vector also changes what later
heads attend to (a softmax), and no such formula holds; the function refuses.

Vectors: from a pair of prompts (the difference of their mean activations at one
position), from an SAE latent (its decoder direction in activation units) or from
the weights (a row of ``W_E``, or ``W_E[t] W_OV^{l,h}``, what head ``l.h`` writes
when it attends to token ``t``).
"""

from __future__ import annotations

import torch

from toylab.features.checks import (as_int, check_device, check_finite, check_hook_name, check_int, check_model,
                                    check_number)
from toylab.features.sae import SparseAutoencoder

STEERABLE = ("hook_embed", "hook_resid_pre", "hook_resid_post", "hook_attn_out")


def _check_hook(model, hook: str, who: str) -> str:
    check_model(model, who)
    check_hook_name(model, hook)
    if not hook.endswith(STEERABLE):
        raise ValueError(f"steering adds a d_model vector to the residual stream; {hook!r} is not one of "
                         f"the residual hooks {STEERABLE}")
    return hook


def _check_vector(model, vector, batched: bool = False) -> torch.Tensor:
    d = model.cfg.d_model
    shapes = f"[{d}]" + (f" or [batch, {d}] (one vector per sequence)" if batched else "")
    if not isinstance(vector, torch.Tensor) or not vector.dtype.is_floating_point:
        raise TypeError(f"the steering vector must be a floating tensor of shape {shapes}")
    ok = vector.shape == (d,) or (batched and vector.ndim == 2 and vector.shape[1] == d)
    if not ok:
        raise ValueError(f"the steering vector must have shape {shapes} (d_model={d}), "
                         f"got {list(vector.shape)}")
    if vector.shape[0] == 0:
        raise ValueError("the steering vector batch is empty (shape [0, d_model])")
    check_device(vector, "the steering vector", model.W_E.device)
    return check_finite(vector.detach(), "the steering vector")


def _check_coeff(coeff) -> float:
    if isinstance(coeff, torch.Tensor) and coeff.numel() == 1 and coeff.dtype.is_floating_point:
        coeff = coeff.item()
    return check_number("coeff", coeff, meaning="the steering coefficient c in x + c v")


def _check_pos(from_pos, to_pos=None) -> tuple[int, int | None]:
    from_pos, to_pos = as_int(from_pos), as_int(to_pos)
    if isinstance(from_pos, bool) or not isinstance(from_pos, int) or from_pos < 0:
        raise ValueError(f"from_pos must be an integer >= 0, got {from_pos!r}")
    if to_pos is not None and (isinstance(to_pos, bool) or not isinstance(to_pos, int)
                               or to_pos <= from_pos):
        raise ValueError(f"to_pos must be None or an integer > from_pos={from_pos}, got {to_pos!r}")
    return from_pos, to_pos


def steering_hooks(model, hook: str, vector: torch.Tensor, coeff: float = 1.0, from_pos: int = 0,
                   to_pos: int | None = None) -> list:
    """``fwd_hooks`` for ``run_with_hooks``: ``x[:, p] <- x[:, p] + coeff * vector`` for
    ``from_pos <= p < to_pos`` (``to_pos=None``: to the end).

    ``vector`` is ``[d_model]`` (the same for every sequence) or ``[batch, d_model]``
    (row ``i`` steers sequence ``i``; the batch must match the run's). ``vector`` and
    ``coeff`` must be finite; a window that starts at or ends past the run's last
    position is refused when the hook runs (it would steer nothing, or less than asked)."""
    _check_hook(model, hook, "steering_hooks")
    v = _check_vector(model, vector, batched=True)
    coeff = _check_coeff(coeff)
    from_pos, to_pos = _check_pos(from_pos, to_pos)
    window = slice(from_pos, to_pos)

    def add(act: torch.Tensor, hp) -> torch.Tensor:
        if v.ndim == 2 and v.shape[0] != act.shape[0]:
            raise ValueError(f"one steering vector per sequence: got {v.shape[0]} vectors for a "
                             f"batch of {act.shape[0]}")
        _check_window(from_pos, to_pos, act.shape[1])
        step = coeff * v.to(act.dtype)
        out = act.clone()
        out[:, window] = out[:, window] + (step[:, None] if v.ndim == 2 else step)
        return out

    return [(hook, add)]


def _check_window(from_pos: int, to_pos: int | None, n_pos: int) -> None:
    if from_pos >= n_pos:
        raise ValueError(f"from_pos={from_pos} is past the last position of these {n_pos}-token sequences: "
                         f"nothing would be steered (positions are 0..{n_pos - 1})")
    if to_pos is not None and to_pos > n_pos:
        raise ValueError(f"to_pos={to_pos} is past the end of these {n_pos}-token sequences "
                         f"(to_pos is exclusive: at most {n_pos}, or None for the end)")


def run_with_steering(model, tokens: torch.Tensor, hook: str, vector: torch.Tensor, coeff: float = 1.0,
                      from_pos: int = 0, to_pos: int | None = None) -> torch.Tensor:
    """Logits ``[batch, pos, d_vocab]`` of ``tokens [batch, pos]`` with ``coeff * vector`` added at
    ``hook`` at positions ``from_pos <= p < to_pos`` (see :func:`steering_hooks`)."""
    check_model(model, "run_with_steering")
    hooks = steering_hooks(model, hook, vector, coeff, from_pos, to_pos)
    tokens = model.check_tokens(tokens)
    _check_window(from_pos, to_pos, tokens.shape[1])
    if vector.ndim == 2 and vector.shape[0] != tokens.shape[0]:
        raise ValueError(f"one steering vector per sequence: got {vector.shape[0]} vectors for a "
                         f"batch of {tokens.shape[0]}")
    with torch.no_grad():
        return model.run_with_hooks(tokens, hooks)


def predicted_logit_shift(model, hook: str, vector: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """``coeff * vector @ W_U`` ``[d_vocab]``: the exact logit shift of steering at ``hook``
    when nothing but the unembedding lies after it (see the module docstring)."""
    _check_hook(model, hook, "predicted_logit_shift")
    v = _check_vector(model, vector)
    coeff = _check_coeff(coeff)
    cfg = model.cfg
    if cfg.layernorm:
        raise ValueError("with LayerNorm the final normalisation rescales the added vector per position: "
                         "the logit shift is not c v W_U")
    last = cfg.n_layers - 1
    exact = {f"blocks.{last}.hook_resid_post", f"blocks.{last}.hook_attn_out"} if cfg.n_layers else \
        {"hook_embed"}
    if hook not in exact:
        raise ValueError(f"a vector added at {hook!r} passes through attention (a softmax) before the "
                         f"logits, so no exact formula holds; exact hooks here: {sorted(exact)}")
    return coeff * (v @ model.W_U.detach())


def vector_from_prompts(model, hook: str, prompts_a: torch.Tensor, prompts_b: torch.Tensor,
                        pos: int = -1) -> torch.Tensor:
    """``mean_a x_a[pos] - mean_b x_b[pos]`` ``[d_model]``: the activation difference of two
    prompt batches (``[batch, pos]`` each) at ``hook`` and position ``pos`` (negative counts
    from the end). A non-finite result (a model with NaN weights) is refused."""
    _check_hook(model, hook, "vector_from_prompts")
    prompts_a, prompts_b = model.check_tokens(prompts_a), model.check_tokens(prompts_b)
    n = min(prompts_a.shape[1], prompts_b.shape[1])
    check_int("pos", pos, -n, n - 1, meaning=f"a position of both prompt batches ({prompts_a.shape[1]} and "
                                             f"{prompts_b.shape[1]} tokens)")
    with torch.no_grad():
        _, ca = model.run_with_cache(prompts_a, names_filter=hook)
        _, cb = model.run_with_cache(prompts_b, names_filter=hook)
    return check_finite(ca[hook][:, pos].mean(0) - cb[hook][:, pos].mean(0), "the prompt-pair vector",
                        "the model computes it from these prompts (are its weights finite?)")


def vector_from_sae(sae, latent: int) -> torch.Tensor:
    """What one unit of latent ``latent`` adds to the reconstruction: ``W_dec[latent] / s`` ``[d_in]``."""
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"vector_from_sae needs a SparseAutoencoder (ReluSAE or TopKSAE), got {type(sae).__name__}")
    latent = as_int(latent)
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent must be an integer in [0, {sae.d_sae}), got {latent!r}")
    return (sae.W_dec[latent] / sae.input_scale).detach().clone()


def vector_from_weights(model, token: int, head: tuple[int, int] | None = None) -> torch.Tensor:
    """``W_E[token]`` ``[d_model]``, or with ``head=(l, h)`` ``W_E[token] W_V^{l,h} W_O^{l,h}``
    (what head l.h writes when it attends fully to ``token``; exact for layer 0)."""
    check_model(model, "vector_from_weights")
    token = as_int(token)
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < model.cfg.d_vocab:
        raise ValueError(f"token must be an integer in [0, {model.cfg.d_vocab}), got {token!r}")
    v = model.W_E[token].detach()
    if head is None:
        return v.clone()
    if isinstance(head, tuple):
        head = tuple(as_int(i) for i in head)
    if not (isinstance(head, tuple) and len(head) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in head)
            and 0 <= head[0] < model.cfg.n_layers and 0 <= head[1] < model.cfg.n_heads):
        raise ValueError(f"head must be a (layer, head) pair inside the model, got {head!r}")
    attn = model.blocks[head[0]].attn
    return (v @ attn.W_V[head[1]] @ attn.W_O[head[1]]).detach()
