"""The attention-only transformer of "A Mathematical Framework for Transformer Circuits",
with optional MLPs.

Row-vector notation, as in TransformerLens: the residual stream is
``x [batch, pos, d_model]`` and a layer computes ``x <- x + sum_h A^h x W_V^h W_O^h``
with ``A^h = softmax*(x W_Q^h (x W_K^h)^T / sqrt(d_head))`` (``*``: causal
mask). The logits are ``x W_U``. By default there are no MLPs, no biases and no
LayerNorm, so every path through the model is a product of weight matrices the
analysis tools can read. Options, all off by default (an attention-only model is
built, initialised and saved exactly as before they existed):

- ``d_mlp > 0``: after the attention of each layer an MLP,
  ``x <- x + act(x W_in + b_in) W_out + b_out`` (``act_fn`` ``"relu"`` or ``"gelu"``);
- ``layernorm=True``: a pre-LayerNorm before each attention (``ln1``), MLP (``ln2``)
  and the unembedding (``ln_final``), weightless, or with learned ``w, b``
  when ``ln_affine=True``;
- ``biases=True``: ``b_Q, b_K, b_V [n_heads, d_head]`` and ``b_U [d_vocab]``, the
  biases :func:`toylab.circuits.folding.fold_layer_norm` folds LayerNorm's ``b`` into.

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

from toylab.blocks import ACT_FNS, Block, LayerNorm, plain, warn_if_not_finite
from toylab.hooks import HookedRootModule, HookPoint

POSITIONAL_MODES = ("none", "learned", "shortformer")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and options of an :class:`AttnOnlyTransformer`.

    ``d_head`` defaults to ``d_model // n_heads``; ``n_heads * d_head`` must
    equal ``d_model``. ``init_std`` scales the initial weights (see
    :meth:`AttnOnlyTransformer.init_weights`). ``d_mlp`` (0: attention-only),
    ``act_fn``, ``ln_affine`` (needs ``layernorm``) and ``biases`` are the options of
    the module docstring; at their defaults they are left out of ``repr`` and
    :meth:`to_dict`, so attention-only configs print and save as before.
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
    d_mlp: int = 0
    act_fn: str = "relu"
    ln_affine: bool = False
    biases: bool = False

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
        if not isinstance(self.d_mlp, int) or isinstance(self.d_mlp, bool) or self.d_mlp < 0:
            raise ValueError(f"ModelConfig.d_mlp must be an integer >= 0 (0: no MLPs, attention-only), "
                             f"got {self.d_mlp!r}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"ModelConfig.act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        for name in ("ln_affine", "biases"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.ln_affine and not self.layernorm:
            raise ValueError("ModelConfig.ln_affine=True gives LayerNorm learned weights, but layernorm=False: "
                             "set layernorm=True as well")

    def _shown(self) -> dict:
        """The fields, without the MLP/LayerNorm/bias options that sit at their defaults."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _OPTIONAL_FIELDS and d[f.name] == f.default:
                del d[f.name]
        return d

    def __repr__(self) -> str:
        return f"ModelConfig({', '.join(f'{k}={v!r}' for k, v in self._shown().items())})"

    def to_dict(self) -> dict:
        """The config as a dict (the options at their defaults left out; :meth:`from_dict` restores them)."""
        return self._shown()

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return config_from_dict(cls, d)


_OPTIONAL_FIELDS = ("d_mlp", "act_fn", "ln_affine", "biases")


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
    """A transformer with ``cfg.n_layers`` layers (0 allowed), attention-only unless ``cfg.d_mlp > 0``.

    Parameters: ``W_E [d_vocab, d_model]``, ``W_pos [n_ctx, d_model]`` (unless
    ``positional="none"``), ``blocks[l].attn.W_Q|W_K|W_V [n_heads, d_model, d_head]``,
    ``blocks[l].attn.W_O [n_heads, d_head, d_model]``, ``W_U [d_model, d_vocab]``.
    ``model.W_Q`` etc. stack the layers: ``[n_layers, n_heads, d_model, d_head]``.
    With MLPs: ``blocks[l].mlp.W_in [d_model, d_mlp]``, ``b_in [d_mlp]``,
    ``W_out [d_mlp, d_model]``, ``b_out [d_model]``, stacked as ``model.W_in
    [n_layers, d_model, d_mlp]`` etc. With ``ln_affine``: ``blocks[l].ln1.w|b``,
    ``blocks[l].ln2.w|b``, ``ln_final.w|b [d_model]``. With ``biases``:
    ``blocks[l].attn.b_Q|b_K|b_V [n_heads, d_head]``, ``b_U [d_vocab]``.

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
            self.ln_final = LayerNorm(cfg.d_model, cfg.ln_affine)
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        if cfg.biases:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
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
        have std ``init_std / sqrt(fan_in)``. Then, drawn after all of those (so the
        attention weights are those of the attention-only model of the same seed),
        the MLPs' ``W_in, W_out`` (layer by layer) with std ``init_std / sqrt(fan_in)``
        (``d_model``, ``d_mlp``). Biases start at 0, LayerNorm weights at 1.
        """
        g = torch.Generator().manual_seed(int(seed))
        s = self.cfg.init_std
        later = []
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("W_in", "W_out")):
                    later.append(p)
                    continue
                if not name.endswith(("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")):
                    p.fill_(1.0 if name.endswith(".w") else 0.0)  # LayerNorm w; biases and LayerNorm b
                    continue
                fan_in = p.shape[-2] if name.endswith(("W_Q", "W_K", "W_V", "W_U")) else self.cfg.d_model
                if name.endswith("W_O"):
                    fan_in = self.cfg.d_model  # n_heads * d_head
                p.normal_(0.0, s / math.sqrt(fan_in), generator=g)
            for p in later:
                p.normal_(0.0, s / math.sqrt(p.shape[0]), generator=g)

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

    def _stack_mlp(self, name: str) -> torch.Tensor:
        cfg = self.cfg
        if cfg.d_mlp == 0:
            raise ValueError(f"this model has no MLPs (d_mlp=0), so it has no {name}")
        if cfg.n_layers == 0:
            shape = {"W_in": (cfg.d_model, cfg.d_mlp), "b_in": (cfg.d_mlp,),
                     "W_out": (cfg.d_mlp, cfg.d_model), "b_out": (cfg.d_model,)}[name]
            return torch.zeros((0,) + shape, dtype=self.W_E.dtype)
        return torch.stack([getattr(b.mlp, name) for b in self.blocks])

    W_in = property(lambda self: self._stack_mlp("W_in"),
                    doc="``[n_layers, d_model, d_mlp]``: neuron n of layer l reads ``W_in[l, :, n]``")
    b_in = property(lambda self: self._stack_mlp("b_in"), doc="``[n_layers, d_mlp]``")
    W_out = property(lambda self: self._stack_mlp("W_out"),
                     doc="``[n_layers, d_mlp, d_model]``: neuron n of layer l writes ``W_out[l, n]``")
    b_out = property(lambda self: self._stack_mlp("b_out"), doc="``[n_layers, d_model]``")

    def check_tokens(self, tokens) -> torch.Tensor:
        """Validate ``tokens`` and return them as a ``[batch, pos]`` long tensor.

        Raises ``ValueError``/``TypeError`` saying what was expected for a
        non-integer tensor, wrong rank, empty batch, a sequence longer than
        ``n_ctx`` or ids outside ``[0, d_vocab)``.
        """
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of integer ids, got {type(tokens).__name__}")
        if self.W_E.is_meta:
            raise ValueError("the model's weights are on the 'meta' device, which holds shapes but no values: "
                             "nothing can be computed. Give it real weights first (model.to_empty(device='cpu') "
                             "then load_state_dict, or toylab.training.checkpoint.load_checkpoint)")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids (torch.long), got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos] or [pos], got {list(tokens.shape)}")
        if tokens.device != self.W_E.device:
            fix = ("a meta tensor holds shapes but no values, so pass real token ids" if tokens.is_meta
                   else f"move them with tokens.to({str(self.W_E.device)!r})")
            raise ValueError(f"tokens are on {tokens.device} but the model is on {self.W_E.device}: {fix}")
        batch, n_pos = tokens.shape
        if batch == 0 or n_pos == 0:
            raise ValueError(f"tokens is empty (shape {list(tokens.shape)}); expected at least one token")
        if n_pos > self.cfg.n_ctx:
            raise ValueError(f"sequence of length {n_pos} is longer than the model's n_ctx = {self.cfg.n_ctx}")
        lo, hi = int(plain(tokens).min()), int(plain(tokens).max())  # plain: every slice under torch.vmap
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
            per_token = next_token_loss_from_logits(self._unembed(resid[:, :-1]), tokens[:, 1:])
            warn_if_not_finite(self, per_token, "loss")
            return per_token if return_type == "loss_per_token" else per_token.mean()
        logits = self._forward_hooked(tokens) if resid is None else self._unembed(resid)
        warn_if_not_finite(self, logits, "logits")
        if return_type == "logits":
            return logits
        per_token = next_token_loss_from_logits(logits[:, :-1], tokens[:, 1:])  # length checked above
        if return_type == "loss_per_token":
            return per_token
        return per_token.mean() if return_type == "loss" else (logits, per_token.mean())

    def _unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """``resid [..., d_model]`` (after ``ln_final``) -> logits ``resid W_U (+ b_U)`` ``[..., d_vocab]``."""
        return resid @ self.W_U + self.b_U if self.cfg.biases else resid @ self.W_U

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
        if self.cfg.n_layers and not torch.isfinite(plain(resid.detach()).sum()):  # under vmap: any slice
            return None
        return self.ln_final.norm(resid) if self.cfg.layernorm else resid

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
            resid = self.ln_final(resid)
        return self._unembed(resid)


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
