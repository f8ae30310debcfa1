"""The pieces of a block: attention heads and the weightless LayerNorm.

``Attention`` holds one layer's heads, ``W_Q, W_K, W_V [n_heads, d_model, d_head]``,
``W_O [n_heads, d_head, d_model]``, with a hooked reference path and a fused fast path;
``Block`` adds its output to the residual stream. :mod:`toylab.model` assembles the
blocks into the transformer. ``cfg`` is always a :class:`toylab.model.ModelConfig`
(not imported here, so that the model can import this module).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toylab.hooks import HookPoint


def layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without learned weights: centre and scale each residual vector."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


class Attention(nn.Module):
    """One layer of ``n_heads`` attention heads.

    Parameters (per-head, as in the paper and TransformerLens):
    ``W_Q, W_K, W_V [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head, d_model]``.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model], computed only when hooked
        self.hook_k_input = HookPoint()  # [batch, pos, n_heads, d_model], computed only when hooked
        self.hook_v_input = HookPoint()  # [batch, pos, n_heads, d_model], computed only when hooked
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos], masked to -inf
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model]

    def _project(self, inp: torch.Tensor, W: torch.Tensor, hook_input: HookPoint) -> torch.Tensor:
        """``inp [batch, pos, d_model] @ W [n_heads, d_model, d_head]`` -> ``[batch, pos, n_heads, d_head]``.

        When ``hook_input`` is hooked, the input is first copied per head
        (``[batch, pos, n_heads, d_model]``) and passed through the hook, so one
        head's input can be patched without touching the others.
        """
        if hook_input.has_hooks:
            per_head = hook_input(inp[:, :, None, :].expand(-1, -1, self.cfg.n_heads, -1).clone())
            return torch.einsum("bphd,hde->bphe", per_head, W)
        return torch.einsum("bpd,hde->bphe", inp, W)

    def forward(self, x: torch.Tensor, qk_extra: torch.Tensor | None = None) -> torch.Tensor:
        """``x [batch, pos, d_model]`` -> attention output ``[batch, pos, d_model]``.

        ``qk_extra [batch, pos, d_model]`` (shortformer positions) is added to
        the input of the queries and keys only. This is the reference (hooked)
        path: every activation passes through its hook point.
        """
        qk_in = x if qk_extra is None else x + qk_extra
        q = self.hook_q(self._project(qk_in, self.W_Q, self.hook_q_input))
        k = self.hook_k(self._project(qk_in, self.W_K, self.hook_k_input))
        v = self.hook_v(self._project(x, self.W_V, self.hook_v_input))
        n_pos = x.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        future = causal_future_mask(n_pos, x.device)
        scores = self.hook_attn_scores(scores.masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(masked_pattern_times_v(pattern, v))
        if self.hook_result.has_hooks:  # per-head outputs only when someone looks at them
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(dim=2)
        return z.flatten(2) @ self.W_O.flatten(0, 1)

    def forward_fast(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The same map as :meth:`forward`, fused, for when no hook is attached.

        ``x [batch, pos, d_model]``, ``pos [pos, d_model]`` (shortformer
        positions, or None) -> ``[batch, pos, d_model]``. One matmul per
        projection gives all heads at once (``q = (x + pos) W_Q``, ``k = (x + pos) W_K``,
        ``v = x W_V`` with the heads side by side), then
        ``scaled_dot_product_attention`` with ``is_causal``. Separate matmuls
        cost less than one for ``[W_Q | W_K]``: its output, split and transposed
        per head, is copied back in a slow strided pattern in the backward pass.
        It does not keep masked keys out exactly when a value is non-finite: the
        model checks its final residual stream and falls back to the reference path then.
        """
        cfg = self.cfg
        b, n, d = x.shape
        h, e = cfg.n_heads, cfg.d_head
        qk_in = x if pos is None else x + pos

        def heads(inp: torch.Tensor, W: torch.Tensor) -> torch.Tensor:  # -> [batch, h, pos, d_head]
            return (inp @ W.transpose(0, 1).reshape(d, h * e)).view(b, n, h, e).transpose(1, 2)

        z = torch.nn.functional.scaled_dot_product_attention(
            heads(qk_in, self.W_Q), heads(qk_in, self.W_K), heads(x, self.W_V), is_causal=True)
        return z.transpose(1, 2).reshape(b, n, h * e) @ self.W_O.flatten(0, 1)


_FUTURE_MASKS: dict[tuple[int, str], torch.Tensor] = {}


def causal_future_mask(n_pos: int, device) -> torch.Tensor:
    """``[n_pos, n_pos]`` bool, True above the diagonal (key after query); cached per size and device."""
    key = (n_pos, str(device))
    mask = _FUTURE_MASKS.get(key)
    if mask is None:
        mask = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool, device=device), diagonal=1)
        _FUTURE_MASKS[key] = mask
    return mask


def masked_pattern_times_v(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``z[b, q, h] = sum_{k <= q} pattern[b, h, q, k] v[b, k, h]``, with masked keys contributing exactly nothing.

    ``pattern [batch, n_heads, query_pos, key_pos]``, ``v [batch, pos, n_heads, d_head]``
    -> ``z [batch, pos, n_heads, d_head]``. A plain ``pattern @ v`` computes
    ``0 * v[k]`` for keys after the query, which is NaN when ``v[k]`` is not
    finite, so one bad value at position p would poison every earlier
    position. Where no key at or before the query is non-finite, ``z`` is
    taken from the finite part of ``v`` instead. Costs one check when ``v`` is finite.
    """
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    bad = ~torch.isfinite(v)
    if not bool(bad.any()):
        return z
    reached = bad.cummax(dim=1).values  # a non-finite key at or before this query
    clean = torch.einsum("bhqk,bkhe->bqhe", pattern, v.masked_fill(bad, 0.0))
    return torch.where(reached, z, clean)


class Block(nn.Module):
    """A residual block: ``resid_post = resid_pre + attn(resid_pre)``."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        if cfg.layernorm:
            self.ln1 = nn.Module()
            self.ln1.hook_normalized = HookPoint()  # [batch, pos, d_model]
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor, qk_extra: torch.Tensor | None = None) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        x = self.ln1.hook_normalized(layer_norm(resid)) if self.cfg.layernorm else resid
        attn_out = self.hook_attn_out(self.attn(x, qk_extra))
        return self.hook_resid_post(resid + attn_out)

    def forward_fast(self, resid: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` without hook points, through :meth:`Attention.forward_fast`."""
        x = layer_norm(resid) if self.cfg.layernorm else resid
        return resid + self.attn.forward_fast(x, pos)
