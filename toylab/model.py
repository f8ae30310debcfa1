"""The attention-only transformer of "A Mathematical Framework for Transformer Circuits".

Row-vector notation, as in TransformerLens: the residual stream is
``x [batch, pos, d_model]`` and a layer computes ``x <- x + sum_h A^h x W_V^h W_O^h``
with ``A^h = softmax*(x W_Q^h (x W_K^h)^T / sqrt(d_head))`` (``*``: causal
mask). The logits are ``x W_U``. No MLPs, no biases; LayerNorm is optional
and off by default, so every path through the model is a product of
weight matrices the analysis tools can read.

Positional embeddings, ``positional=``:

- ``"none"``: no positions at all;
- ``"learned"``: ``W_pos[p]`` is added to the residual stream at position p;
- ``"shortformer"``: ``W_pos[p]`` is added only to the inputs of the queries
  and keys of every layer, so values (and thus the OV circuit) see tokens only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from toylab.blocks import Block, layer_norm
from toylab.hooks import HookedRootModule, HookPoint

POSITIONAL_MODES = ("none", "learned", "shortformer")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and options of an :class:`AttnOnlyTransformer`.

    ``d_head`` defaults to ``d_model // n_heads``; ``n_heads * d_head`` must
    equal ``d_model``. ``init_std`` scales the initial weights (see
    :meth:`AttnOnlyTransformer.init_weights`).
    """

    d_vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int = 1
    d_head: int = 0
    positional: str = "learned"
    layernorm: bool = False
    init_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_layers, int) or isinstance(self.n_layers, bool) or self.n_layers < 0:
            raise ValueError(f"ModelConfig.n_layers must be an integer >= 0, got {self.n_layers!r}")
        if self.d_head == 0:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                    "choose sizes with n_heads * d_head == d_model"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if not isinstance(self.d_head, int) or self.d_head < 1:
            raise ValueError(f"ModelConfig.d_head must be a positive integer, got {self.d_head!r}")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"n_heads * d_head = {self.n_heads} * {self.d_head} = {self.n_heads * self.d_head} "
                f"must equal d_model = {self.d_model}"
            )
        if self.positional not in POSITIONAL_MODES:
            raise ValueError(f"unknown positional mode {self.positional!r}; expected one of {POSITIONAL_MODES}")
        if not isinstance(self.layernorm, bool):
            raise ValueError(f"ModelConfig.layernorm must be True or False, got {self.layernorm!r}")
        if (not isinstance(self.init_std, (int, float)) or isinstance(self.init_std, bool)
                or not math.isfinite(self.init_std) or self.init_std <= 0):
            raise ValueError(f"ModelConfig.init_std must be a positive finite number, got {self.init_std!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return config_from_dict(cls, d)


def config_from_dict(cls, d: dict):
    """``cls(**d)`` for a config dataclass, rejecting unknown fields by name."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; expected a subset of {sorted(fields)}")
    return cls(**d)


def head_name(layer: int, head: int) -> str:
    """The lab's name for head ``head`` of layer ``layer``: ``"L{layer}H{head}"``
    (TransformerLens's ``L0H1`` style; the book uses it throughout)."""
    return f"L{layer}H{head}"


class AttnOnlyTransformer(HookedRootModule):
    """An attention-only transformer with ``cfg.n_layers`` layers (0 allowed).

    Parameters: ``W_E [d_vocab, d_model]``, ``W_pos [n_ctx, d_model]`` (unless
    ``positional="none"``), ``blocks[l].attn.W_Q|W_K|W_V [n_heads, d_model, d_head]``,
    ``blocks[l].attn.W_O [n_heads, d_head, d_model]``, ``W_U [d_model, d_vocab]``.
    ``model.W_Q`` etc. stack the layers: ``[n_layers, n_heads, d_model, d_head]``.

    ``forward(tokens [batch, pos])`` returns logits ``[batch, pos, d_vocab]``;
    logits at position p predict the token at p + 1.
    """

    def __init__(self, cfg: ModelConfig, seed: int | None = 0):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"AttnOnlyTransformer needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional != "none":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()  # [pos, d_model] broadcast over batch: [batch, pos, d_model]
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        if cfg.layernorm:
            self.ln_final = nn.Module()
            self.ln_final.hook_normalized = HookPoint()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.setup_hooks()
        # The fused path (Attention.forward_fast) runs only when this is True and no hook
        # point has a hook; run_with_hooks / run_with_cache always see the hooked path.
        self.fast_path = True
        if seed is not None:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """Initialise from ``seed`` (a private generator; the global RNG is untouched).

        Embeddings ``W_E, W_pos ~ N(0, init_std^2 / d_model)`` give residual
        vectors of norm about ``init_std``; ``W_Q, W_K, W_V, W_O`` and ``W_U``
        have std ``init_std / sqrt(fan_in)``.
        """
        g = torch.Generator().manual_seed(int(seed))
        s = self.cfg.init_std
        with torch.no_grad():
            for name, p in self.named_parameters():
                fan_in = p.shape[-2] if name.endswith(("W_Q", "W_K", "W_V", "W_U")) else self.cfg.d_model
                if name.endswith("W_O"):
                    fan_in = self.cfg.d_model  # n_heads * d_head
                p.normal_(0.0, s / math.sqrt(fan_in), generator=g)

    # stacked per-layer weights, [n_layers, n_heads, ...]
    def _stack(self, name: str) -> torch.Tensor:
        cfg = self.cfg
        if cfg.n_layers == 0:
            shape = (0, cfg.n_heads) + ((cfg.d_head, cfg.d_model) if name == "W_O" else (cfg.d_model, cfg.d_head))
            return torch.zeros(shape, dtype=self.W_E.dtype)
        return torch.stack([getattr(b.attn, name) for b in self.blocks])

    @property
    def W_Q(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_model, d_head]``"""
        return self._stack("W_Q")

    @property
    def W_K(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_model, d_head]``"""
        return self._stack("W_K")

    @property
    def W_V(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_model, d_head]``"""
        return self._stack("W_V")

    @property
    def W_O(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_head, d_model]``"""
        return self._stack("W_O")

    def check_tokens(self, tokens) -> torch.Tensor:
        """Validate ``tokens`` and return them as a ``[batch, pos]`` long tensor.

        Raises ``ValueError``/``TypeError`` saying what was expected for a
        non-integer tensor, wrong rank, empty batch, a sequence longer than
        ``n_ctx`` or ids outside ``[0, d_vocab)``.
        """
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of integer ids, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids (torch.long), got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos] or [pos], got {list(tokens.shape)}")
        if tokens.device != self.W_E.device:
            raise ValueError(
                f"tokens are on {tokens.device} but the model is on {self.W_E.device}: "
                f"move them with tokens.to({str(self.W_E.device)!r})"
            )
        batch, n_pos = tokens.shape
        if batch == 0 or n_pos == 0:
            raise ValueError(f"tokens is empty (shape {list(tokens.shape)}); expected at least one token")
        if n_pos > self.cfg.n_ctx:
            raise ValueError(f"sequence of length {n_pos} is longer than the model's n_ctx = {self.cfg.n_ctx}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range: ids must be in [0, {self.cfg.d_vocab})")
        return tokens.long()

    def forward(self, tokens: torch.Tensor, return_type: str = "logits"):
        """Run the model.

        Args:
            tokens: ``[batch, pos]`` (or ``[pos]``) integer ids, ``pos <= n_ctx``.
            return_type: ``"logits"`` -> ``[batch, pos, d_vocab]``;
                ``"loss"`` -> mean next-token cross-entropy (scalar);
                ``"loss_per_token"`` -> ``[batch, pos - 1]``;
                ``"both"`` -> ``(logits, loss)``.
        """
        if return_type not in ("logits", "loss", "loss_per_token", "both"):
            raise ValueError(f"unknown return_type {return_type!r}; expected logits, loss, loss_per_token or both")
        tokens = self.check_tokens(tokens)
        if return_type != "logits":
            _check_loss_length(tokens)
        resid = self._resid_fast(tokens) if self.fast_path and not self.any_hooks() else None
        if resid is not None and return_type in ("loss", "loss_per_token"):
            # only the positions that have a next token are unembedded: [batch, pos - 1, d_vocab]
            per_token = next_token_loss_from_logits(resid[:, :-1] @ self.W_U, tokens[:, 1:])
            return per_token if return_type == "loss_per_token" else per_token.mean()
        logits = self._forward_hooked(tokens) if resid is None else resid @ self.W_U
        if return_type == "logits":
            return logits
        per_token = next_token_loss_from_logits(logits[:, :-1], tokens[:, 1:])  # length checked above
        if return_type == "loss_per_token":
            return per_token
        return per_token.mean() if return_type == "loss" else (logits, per_token.mean())

    def any_hooks(self) -> bool:
        """True when a hook is attached to any hook point of the model."""
        return any(hp._fwd_hooks for hp in self.hook_dict.values())

    def _resid_fast(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """``tokens [batch, pos]`` -> the final residual stream ``[batch, pos, d_model]`` (after
        ``ln_final`` where the model has LayerNorm), with no hook points (fused attention).

        Returns None when it is not finite: a non-finite value at position p makes
        the residual at p non-finite, and the fused attention may have leaked it to
        earlier positions (``0 * NaN``), so the caller recomputes on the reference
        path, which keeps masked keys out exactly.
        """
        n_pos = tokens.shape[1]
        resid = self.W_E[tokens]
        pos = None
        if self.cfg.positional == "learned":
            resid = resid + self.W_pos[:n_pos]
        elif self.cfg.positional == "shortformer":
            pos = self.W_pos[:n_pos]
        for block in self.blocks:
            resid = block.forward_fast(resid, pos)
        if self.cfg.n_layers and not torch.isfinite(resid.detach().sum()):
            return None
        return layer_norm(resid) if self.cfg.layernorm else resid

    def _forward_hooked(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [batch, pos]`` -> logits ``[batch, pos, d_vocab]`` through every hook point (the reference)."""
        n_pos = tokens.shape[1]
        resid = self.hook_embed(self.W_E[tokens])
        qk_extra = None
        if self.cfg.positional != "none":
            pos = self.hook_pos_embed(self.W_pos[:n_pos].expand(tokens.shape[0], -1, -1))
            if self.cfg.positional == "learned":
                resid = resid + pos
            else:  # shortformer: only queries and keys see positions
                qk_extra = pos
        for block in self.blocks:
            resid = block(resid, qk_extra)
        if self.cfg.layernorm:
            resid = self.ln_final.hook_normalized(layer_norm(resid))
        return resid @ self.W_U


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, p+1]`` from ``logits[:, p]``.

    ``logits [batch, pos, d_vocab]``, ``tokens [batch, pos]`` -> ``[batch, pos - 1]`` (nats).
    """
    _check_loss_length(tokens)
    return next_token_loss_from_logits(logits[:, :-1], tokens[:, 1:])


def _check_loss_length(tokens: torch.Tensor) -> None:
    """``tokens [batch, pos]``: a next-token loss needs ``pos >= 2``."""
    if tokens.shape[1] < 2:
        raise ValueError("a next-token loss needs sequences of at least 2 tokens")


def next_token_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``targets [batch, n]`` under ``logits [batch, n, d_vocab]`` -> ``[batch, n]`` (nats)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -logprobs.gather(-1, targets[:, :, None]).squeeze(-1)
