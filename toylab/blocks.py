"""The pieces of a block: attention heads, the optional MLP and LayerNorm.

``Attention`` holds one layer's heads, ``W_Q, W_K, W_V [n_heads, d_model, d_head]``,
``W_O [n_heads, d_head, d_model]`` (and ``b_Q, b_K, b_V [n_heads, d_head]`` when
``cfg.biases``), with a hooked reference path and a fused fast path; ``MLP`` is the
feed-forward layer ``act(x W_in + b_in) W_out + b_out`` (when ``cfg.d_mlp > 0``);
``LayerNorm`` is the pre-LayerNorm (``cfg.layernorm``), weightless or with learned
``w, b`` (``cfg.ln_affine``); ``Block`` adds their outputs to the residual stream. :mod:`toylab.model` assembles the
blocks into the transformer. ``cfg`` is always a :class:`toylab.model.ModelConfig`
(not imported here, so that the model can import this module).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from toylab.hooks import HookPoint, resolve_index


def layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without learned weights: centre and scale each residual vector."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` with any ``torch.func`` wrappers (``vmap``'s batched tensor, ``grad``'s tracking
    tensor) peeled off: the ordinary tensor underneath, holding the values of every vmapped
    slice; an ordinary tensor is returned as it is.

    A check that reads values (``int(t.min())``, ``bool(t.any())``) cannot run on a batched
    tensor, whose ``.item()`` is refused; run on ``plain(t)`` it checks all the slices at once,
    so the forward pass keeps its checks under ``torch.vmap`` (over seeds, say).
    """
    f = getattr(torch._C, "_functorch", None)
    if f is None:
        return t
    while f.is_functorch_wrapped_tensor(t):
        t = f.get_unwrapped(t)
    return t


ACT_FNS = ("relu", "gelu")


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP's nonlinearity: ``"relu"`` = ``max(x, 0)``, ``"gelu"`` = ``x Phi(x)`` (the exact, erf form)."""
    return torch.relu(x) if name == "relu" else torch.nn.functional.gelu(x)


class LayerNorm(nn.Module):
    """A pre-LayerNorm (``ln1``, ``ln2``, ``ln_final``): ``x [..., d_model]`` ->
    ``(x - mean x) / sqrt(var x + eps)``, times ``w [d_model]`` plus ``b [d_model]``
    when ``affine`` (learned, initialised to 1 and 0). ``hook_normalized`` sees the output.
    """

    def __init__(self, d_model: int, affine: bool = False):
        super().__init__()
        if affine:
            self.w = nn.Parameter(torch.ones(d_model))
            self.b = nn.Parameter(torch.zeros(d_model))
        self.affine = affine
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The map without its hook point."""
        y = layer_norm(x)
        return y * self.w + self.b if self.affine else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(self.norm(x))


class MLP(nn.Module):
    """The feed-forward layer: ``x [batch, pos, d_model]`` ->
    ``act(x W_in + b_in) W_out + b_out [batch, pos, d_model]``.

    Parameters (TransformerLens names): ``W_in [d_model, d_mlp]``, ``b_in [d_mlp]``,
    ``W_out [d_mlp, d_model]``, ``b_out [d_model]``. Neuron ``n`` reads the direction
    ``W_in[:, n]`` (its key) and writes ``post[..., n] * W_out[n]`` (its value).
    Hook points: ``hook_pre`` (``x W_in + b_in``) and ``hook_post`` (after ``act``),
    both ``[batch, pos, d_mlp]``.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(activation(self.cfg.act_fn, pre))
        return post @ self.W_out + self.b_out

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without hook points (the same operations, so the same numbers)."""
        return activation(self.cfg.act_fn, x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Attention(nn.Module):
    """One layer of ``n_heads`` attention heads.

    Parameters (per-head, as in the paper and TransformerLens):
    ``W_Q, W_K, W_V [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head, d_model]``;
    with ``cfg.biases`` also ``b_Q, b_K, b_V [n_heads, d_head]`` (``q = x W_Q + b_Q``
    etc.; what :func:`toylab.circuits.folding.fold_layer_norm` writes LayerNorm's ``b`` into).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        if getattr(cfg, "biases", False):
            self.b_Q = nn.Parameter(torch.zeros(h, e))
            self.b_K = nn.Parameter(torch.zeros(h, e))
            self.b_V = nn.Parameter(torch.zeros(h, e))
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

    def _project(self, inp: torch.Tensor, W: torch.Tensor, hook_input: HookPoint,
                 b: torch.Tensor | None = None) -> torch.Tensor:
        """``inp [batch, pos, d_model] @ W [n_heads, d_model, d_head] (+ b [n_heads, d_head])``
        -> ``[batch, pos, n_heads, d_head]``.

        When ``hook_input`` is hooked, the input is first copied per head
        (``[batch, pos, n_heads, d_model]``) and passed through the hook, so one
        head's input can be patched without touching the others.
        """
        if hook_input.has_hooks:
            per_head = hook_input(inp[:, :, None, :].expand(-1, -1, self.cfg.n_heads, -1).clone())
            out = torch.einsum("bphd,hde->bphe", per_head, W)
        else:
            out = torch.einsum("bpd,hde->bphe", inp, W)
        return out if b is None else out + b

    def biases(self) -> tuple:
        """``(b_Q, b_K, b_V)``, each ``[n_heads, d_head]``, or ``(None, None, None)`` without biases."""
        if getattr(self.cfg, "biases", False):
            return self.b_Q, self.b_K, self.b_V
        return None, None, None

    def forward(self, x: torch.Tensor, qk_extra: torch.Tensor | None = None) -> torch.Tensor:
        """``x [batch, pos, d_model]`` -> attention output ``[batch, pos, d_model]``.

        ``qk_extra [batch, pos, d_model]`` (shortformer positions) is added to
        the input of the queries and keys only. This is the reference (hooked)
        path: every activation passes through its hook point.
        """
        qk_in = x if qk_extra is None else x + qk_extra
        bq, bk, bv = self.biases()
        q = self.hook_q(self._project(qk_in, self.W_Q, self.hook_q_input, bq))
        k = self.hook_k(self._project(qk_in, self.W_K, self.hook_k_input, bk))
        v = self.hook_v(self._project(x, self.W_V, self.hook_v_input, bv))
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

        def heads(inp: torch.Tensor, W: torch.Tensor, bias) -> torch.Tensor:  # -> [batch, h, pos, d_head]
            out = inp @ W.transpose(0, 1).reshape(d, h * e)
            if bias is not None:
                out = out + bias.reshape(h * e)
            return out.view(b, n, h, e).transpose(1, 2)

        bq, bk, bv = self.biases()
        z = torch.nn.functional.scaled_dot_product_attention(
            heads(qk_in, self.W_Q, bq), heads(qk_in, self.W_K, bk), heads(x, self.W_V, bv), is_causal=True)
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
    if not bool(plain(bad).any()):  # under vmap: any slice; where none is bad, torch.where keeps z there
        return z
    reached = bad.cummax(dim=1).values  # a non-finite key at or before this query
    clean = torch.einsum("bhqk,bkhe->bqhe", pattern, v.masked_fill(bad, 0.0))
    return torch.where(reached, z, clean)


class Block(nn.Module):
    """A residual block. Attention-only (``cfg.d_mlp == 0``):
    ``resid_post = resid_pre + attn(LN1?(resid_pre))``. With an MLP:
    ``resid_mid = resid_pre + attn(LN1?(resid_pre))``,
    ``resid_post = resid_mid + mlp(LN2?(resid_mid))`` (``LN?``: only with ``cfg.layernorm``).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        affine = getattr(cfg, "ln_affine", False)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        if cfg.layernorm:
            self.ln1 = LayerNorm(cfg.d_model, affine)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.has_mlp = getattr(cfg, "d_mlp", 0) > 0
        if self.has_mlp:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], what the MLP (its ln2) reads; only when hooked
            if cfg.layernorm:
                self.ln2 = LayerNorm(cfg.d_model, affine)
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor, qk_extra: torch.Tensor | None = None) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        x = self.ln1(resid) if self.cfg.layernorm else resid
        attn_out = self.hook_attn_out(self.attn(x, qk_extra))
        if not self.has_mlp:
            return self.hook_resid_post(resid + attn_out)
        mid = self.hook_resid_mid(resid + attn_out)
        # a copy through hook_mlp_in lets the MLP's input be patched without touching the stream (edge patching)
        mlp_in = self.hook_mlp_in(mid.clone()) if self.hook_mlp_in.has_hooks else mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in) if self.cfg.layernorm else mlp_in))
        return self.hook_resid_post(mid + mlp_out)

    def forward_fast(self, resid: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` without hook points, through :meth:`Attention.forward_fast`."""
        x = self.ln1.norm(resid) if self.cfg.layernorm else resid
        resid = resid + self.attn.forward_fast(x, pos)
        if not self.has_mlp:
            return resid
        return resid + self.mlp.forward_fast(self.ln2.norm(resid) if self.cfg.layernorm else resid)


def warn_if_not_finite(model: nn.Module, out: torch.Tensor, what: str) -> None:
    """Warn when a forward pass's ``out`` (logits or loss) holds NaN/inf, naming ``model``'s
    parameters that hold non-finite values (and how many), or saying that none does."""
    out = plain(out.detach())  # under torch.vmap: every slice at once
    if bool(torch.isfinite(out.sum())) or bool(torch.isfinite(out).all()):
        return
    n_bad = int((~torch.isfinite(out)).sum())
    bad = []
    for name, p in model.named_parameters():
        p = plain(p.detach())
        k = int((~torch.isfinite(p)).sum())
        if k:
            bad.append(f"{name} ({k} of {p.numel()} values)")
    where = ("non-finite values in " + ", ".join(bad)) if bad else \
        "every parameter is finite, so a hook or an overflow produced them"
    warnings.warn(f"the model's {what} hold {n_bad} non-finite values of {out.numel()}: {where}",
                  RuntimeWarning, stacklevel=3)


def check_neurons(model, neurons) -> torch.Tensor:
    """``neurons`` (an int, a sequence or a 1-d tensor of indices into ``d_mlp``; None = all) as a long
    tensor ``[n]``; negative indices count from the end; anything else is a ``ValueError``."""
    idx = torch.arange(model.cfg.d_mlp) if neurons is None else torch.as_tensor(neurons).reshape(-1)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.numel() == 0:
        raise ValueError(f"neurons must be integer indices into d_mlp={model.cfg.d_mlp}, got {neurons!r}")
    return torch.tensor([resolve_index(int(i), model.cfg.d_mlp, "neuron") for i in idx], dtype=torch.long)
