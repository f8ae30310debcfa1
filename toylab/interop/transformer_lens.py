"""A lab model as a TransformerLens ``HookedTransformer``, and back.

The lab's model follows TransformerLens's notation and hook names, so the conversion
is mostly a renaming of parameters (``W_E`` -> ``embed.W_E``, ``W_pos`` ->
``pos_embed.W_pos``, ``W_U`` -> ``unembed.W_U``; the blocks' names are the same).
Where one side has a parameter the other lacks, it is zero there:

============================  ==============================  ==========================
toylab                        TransformerLens                 how
============================  ==============================  ==========================
no ``b_Q, b_K, b_V, b_U``     ``b_Q, b_K, b_V, b_U``          zeros (``biases=False``)
no output bias                ``attn.b_O [d_model]``          zeros; back: must be zero
``positional="learned"``      ``"standard"``                  same ``W_pos``
``positional="shortformer"``  ``"shortformer"``               same ``W_pos``
``positional="none"``         ``"standard"``                  ``W_pos = 0``; back: learned
``layernorm`` (weightless)    ``normalization_type="LNPre"``  same map, eps 1e-5
``layernorm, ln_affine``      ``normalization_type="LN"``     same ``w, b``
============================  ==============================  ==========================

:func:`to_transformer_lens` gives a model whose logits equal the lab model's up to
float rounding (``tests/test_peer_transformerlens.py``); :func:`from_transformer_lens`
refuses, with a sentence, every TransformerLens option the lab's model cannot compute
(rotary or ALiBi positions, RMSNorm, gated or parallel MLPs, grouped-query attention,
an attention scale other than ``sqrt(d_head)``, a non-zero ``b_O``, ...).

TransformerLens is imported only when one of these functions runs; without it they raise
an ``ImportError`` saying how to install the optional extra.
"""

from __future__ import annotations

import math

import torch

from toylab.model import AttnOnlyTransformer, ModelConfig

__all__ = ["to_transformer_lens", "from_transformer_lens"]

INSTALL_HINT = ("TransformerLens is not installed, and this conversion needs it. Install the optional "
                "extra with `pip install -e '.[transformer-lens]'` from the repository root, or use the "
                "environment that `make test-peer` builds (.venv-tl)")

# toylab positional mode -> TransformerLens positional_embedding_type
_POSITIONAL = {"learned": "standard", "shortformer": "shortformer", "none": "standard"}
_BIAS_NAMES = ("b_Q", "b_K", "b_V")


def _import_tl():
    try:
        import transformer_lens
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return transformer_lens


def _check_lab_model(model) -> None:
    if not isinstance(model, AttnOnlyTransformer):
        raise TypeError(f"model must be a toylab model (AttnOnlyTransformer), got {type(model).__name__}")
    if model.W_E.is_meta:
        raise ValueError("model's weights are on the 'meta' device (shapes without values): load real weights "
                         "before converting it")


def _lab_state_for_tl(model) -> dict[str, torch.Tensor]:
    """``model``'s parameters under TransformerLens's names, zeros where the lab has none."""
    c = model.cfg
    ours = dict(model.named_parameters())
    like = model.W_E.detach()
    zeros = lambda *shape: torch.zeros(shape, dtype=like.dtype, device=like.device)  # noqa: E731
    state = {"embed.W_E": model.W_E,
             "pos_embed.W_pos": model.W_pos if c.positional != "none" else zeros(c.n_ctx, c.d_model),
             "unembed.W_U": model.W_U, "unembed.b_U": ours.get("b_U", zeros(c.d_vocab))}
    if c.ln_affine:
        state["ln_final.w"], state["ln_final.b"] = model.ln_final.w, model.ln_final.b
    for layer, block in enumerate(model.blocks):
        pre = f"blocks.{layer}."
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            state[pre + "attn." + name] = getattr(block.attn, name)
        for name in _BIAS_NAMES:
            state[pre + "attn." + name] = ours.get(pre + "attn." + name, zeros(c.n_heads, c.d_head))
        state[pre + "attn.b_O"] = zeros(c.d_model)
        if c.d_mlp:
            for name in ("W_in", "b_in", "W_out", "b_out"):
                state[pre + "mlp." + name] = getattr(block.mlp, name)
        if c.ln_affine:
            for ln in ("ln1", "ln2") if c.d_mlp else ("ln1",):
                state[pre + ln + ".w"] = getattr(block, ln).w
                state[pre + ln + ".b"] = getattr(block, ln).b
    return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def to_transformer_lens(model):
    """A TransformerLens ``HookedTransformer`` holding a copy of ``model``'s weights.

    ``model``: a toylab :class:`~toylab.model.AttnOnlyTransformer` (attention-only or with
    MLPs, with or without LayerNorm, any positional mode). Returns a new
    ``HookedTransformer`` in eval mode, on ``model``'s device and dtype, whose
    ``ht(tokens) [batch, pos, d_vocab]`` equals ``model(tokens)`` up to float rounding;
    ``model`` is not changed. Biases the lab's model lacks are zero (see the module
    docstring). Needs TransformerLens (an optional extra).
    """
    _check_lab_model(model)
    tl = _import_tl()
    c = model.cfg
    norm = ("LN" if c.ln_affine else "LNPre") if c.layernorm else None
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads,
        d_vocab=c.d_vocab, attn_only=c.d_mlp == 0, d_mlp=c.d_mlp or None, normalization_type=norm,
        positional_embedding_type=_POSITIONAL[c.positional], act_fn=c.act_fn, eps=1e-5,
        device=str(model.W_E.device), dtype=model.W_E.dtype, seed=0)
    ht = tl.HookedTransformer(cfg)
    missing, unexpected = ht.load_state_dict(_lab_state_for_tl(model), strict=False)
    # what may be left are TransformerLens's buffers (the causal mask, its IGNORE value)
    left = [k for k in missing if not k.endswith(("mask", "IGNORE"))]
    if unexpected or left:
        raise RuntimeError(f"TransformerLens {getattr(tl, '__version__', '?')} names its parameters differently "
                           f"from the version this conversion was written for (3.9): unexpected {unexpected}, "
                           f"missing {left}")
    ht.eval()
    return ht


# ------------------------------------------------------------------ back to the lab


def _refuse(what: str) -> None:
    raise ValueError(f"from_transformer_lens: the lab's model cannot represent {what}")


def _check_tl_config(cfg) -> None:
    """Refuse every TransformerLens option the lab's model does not compute."""
    get = lambda name, default=None: getattr(cfg, name, default)  # noqa: E731
    if get("positional_embedding_type") not in ("standard", "shortformer"):
        _refuse(f"positional_embedding_type={get('positional_embedding_type')!r}: it has learned ('standard') "
                "and shortformer positions only (no rotary, ALiBi or relative positions)")
    if get("normalization_type") not in (None, "LN", "LNPre"):
        _refuse(f"normalization_type={get('normalization_type')!r}: its LayerNorm is 'LN' (learned w, b) or "
                "'LNPre' (weightless); fold the weights first or use a model without RMSNorm")
    if get("normalization_type") is not None and not math.isclose(float(get("eps", 1e-5)), 1e-5):
        _refuse(f"a LayerNorm eps of {get('eps')}: its LayerNorm uses eps = 1e-5")
    if not get("attn_only") and get("act_fn") not in ("relu", "gelu"):
        _refuse(f"act_fn={get('act_fn')!r}: its MLPs use 'relu' or 'gelu' (the exact, erf form)")
    options = {"gated_mlp": "a gated MLP", "parallel_attn_mlp": "attention and MLP in parallel",
               "use_local_attn": "local attention", "final_rms": "a final RMSNorm",
               "use_normalization_before_and_after": "norms after the sublayers",
               "post_embedding_ln": "a LayerNorm after the embedding", "use_qk_norm": "query/key norms",
               "scale_attn_by_inverse_layer_idx": "attention scaled by layer", "use_attention_sinks": "sinks"}
    for name, what in options.items():
        if get(name):
            _refuse(f"{what} ({name}=True)")
    if get("num_experts"):
        _refuse(f"a mixture of experts (num_experts={get('num_experts')})")
    if get("n_key_value_heads") not in (None, get("n_heads")):
        _refuse(f"grouped-query attention (n_key_value_heads={get('n_key_value_heads')})")
    if get("attention_dir", "causal") != "causal":
        _refuse(f"attention_dir={get('attention_dir')!r}: its attention is causal")
    for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (get(name) or -1.0) > 0:
            _refuse(f"a soft cap ({name}={get(name)})")
    scale = float(get("attn_scale", math.sqrt(cfg.d_head))) if get("use_attn_scale", True) else 1.0
    if not math.isclose(scale, math.sqrt(cfg.d_head), rel_tol=1e-6):
        _refuse(f"an attention scale of {scale}: it divides scores by sqrt(d_head) = {math.sqrt(cfg.d_head):g}")
    if get("d_vocab_out", cfg.d_vocab) not in (-1, cfg.d_vocab):
        _refuse(f"d_vocab_out={get('d_vocab_out')} different from d_vocab={cfg.d_vocab}")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        _refuse(f"n_heads * d_head = {cfg.n_heads * cfg.d_head} different from d_model = {cfg.d_model}")


@torch.no_grad()
def from_transformer_lens(tl_model) -> AttnOnlyTransformer:
    """The lab's model holding a copy of a ``HookedTransformer``'s weights.

    ``tl_model``: a TransformerLens ``HookedTransformer`` whose architecture the lab's model
    computes (see the module docstring); anything else is refused with a ``ValueError``
    naming the option. Returns a new :class:`~toylab.model.AttnOnlyTransformer` (``tl_model``
    is not changed) on its device and dtype, with the same logits: ``positional`` is
    ``"learned"`` or ``"shortformer"``, ``layernorm``/``ln_affine`` follow
    ``normalization_type``, and ``biases=True`` exactly when a ``b_Q, b_K, b_V`` or ``b_U``
    is non-zero. ``b_O`` must be zero (the lab has no output bias: load with
    ``fold_value_biases=False``, or fold it away yourself).
    """
    tl = _import_tl()
    if not isinstance(tl_model, tl.HookedTransformer):
        raise TypeError(f"tl_model must be a transformer_lens.HookedTransformer, got {type(tl_model).__name__}")
    cfg = tl_model.cfg
    _check_tl_config(cfg)
    theirs = {k: v.detach() for k, v in tl_model.state_dict().items()}
    nonzero_b_O = [k for k, v in theirs.items() if k.endswith("attn.b_O") and bool(v.any())]
    if nonzero_b_O:
        _refuse(f"a non-zero attention output bias ({', '.join(nonzero_b_O)}): it has no b_O. Load the "
                "TransformerLens model with fold_value_biases=False (b_V stays b_V), or without biases")
    biases = any(bool(v.any()) for k, v in theirs.items() if k.endswith(("attn.b_Q", "attn.b_K", "attn.b_V"))
                 ) or bool(theirs["unembed.b_U"].any())
    norm = cfg.normalization_type
    ours = ModelConfig(d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, d_model=cfg.d_model, n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, d_head=cfg.d_head,
                       positional="shortformer" if cfg.positional_embedding_type == "shortformer" else "learned",
                       layernorm=norm is not None, ln_affine=norm == "LN",
                       d_mlp=0 if cfg.attn_only else int(cfg.d_mlp), act_fn=cfg.act_fn if not cfg.attn_only else "relu",
                       biases=biases)
    model = AttnOnlyTransformer(ours, seed=None).to(device=theirs["embed.W_E"].device,
                                                    dtype=theirs["embed.W_E"].dtype)
    rename = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
    state = {name: theirs[rename.get(name, name)].clone() for name in model.state_dict()}
    model.load_state_dict(state)
    model.eval()
    return model
