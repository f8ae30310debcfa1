"""The feature directions the lab knows exactly inside its own models.

In a model without LayerNorm whose positions enter only queries and keys
(``positional="shortformer"`` or ``"none"``), the residual stream is a sum of
weight-matrix products of token embeddings:

- ``hook_embed`` and ``blocks.0.hook_resid_pre``: ``x_p = W_E[t_p]`` exactly — the
  ``d_vocab`` rows of ``W_E [d_vocab, d_model]`` are the features, one active per position;
- ``blocks.0.attn.hook_z`` of head ``h``: ``z_p = sum_k A^h_pk W_E[t_k] W_V^h`` — the family
  ``W_E W_V^h [d_vocab, d_head]`` weighted by the attention pattern;
- ``blocks.0.hook_attn_out``: ``sum_h sum_k A^h_pk W_E[t_k] W_OV^h`` — families ``W_E W_OV^h``;
- ``blocks.0.hook_resid_post`` / ``blocks.1.hook_resid_pre``: the token family ``W_E`` plus
  ``W_E W_OV^h`` per head (for a previous-token head, ``W_E[t_{p-1}] W_OV^h`` times its
  attention to ``p - 1``).

In a model with MLPs the same holds up to ``blocks.0.hook_resid_mid`` (token family
plus ``W_E W_OV^h``); the MLP's own hooks (``mlp.hook_post``, ``hook_mlp_out``) and
every stream after it hold ``act(x W_in + b_in)``, a nonlinear function of the
stream, so they have no fixed dictionary of weight products and are refused.

Later layers compose (their inputs already hold layer-0 outputs), so their
dictionaries are not a small known family; :func:`true_features` refuses them, and
refuses LayerNorm models (the normalisation rescales every direction per position)
and learned positions at the residual hooks (``W_pos[p]`` is added to every vector).
"""

from __future__ import annotations

import torch

from toylab.features.checks import as_int, check_hook_name, check_seed
from toylab.features.train_sae import SAE_HOOKS
from toylab.model import AttnOnlyTransformer


def _refuse(msg: str):
    raise ValueError(f"true_features: {msg}")


@torch.no_grad()
def true_features(model: AttnOnlyTransformer, hook: str, head: int | None = None,
                  include_bos: bool = True) -> dict[str, torch.Tensor]:
    """The known feature families at ``hook``, as ``{name: directions [d_vocab, width]}``
    (row ``t`` belongs to token ``t``; rows are not normalised).

    ``include_bos=False`` drops row 0 (the BOS token, which occurs only at position 0,
    a row :func:`~toylab.features.train_sae.gather_activations` skips by default):
    then every family is ``[d_vocab - 1, width]`` and row ``t`` is token ``t + 1``.

    Names: ``"token"`` (``W_E``), ``"ov_L0Hh"`` (``W_E W_V^{0,h} W_O^{0,h}``), ``"v_L0Hh"``
    (``W_E W_V^{0,h}``, at ``blocks.0.attn.hook_z`` with ``head=h``).

    Raises ``ValueError`` where no such exact dictionary exists (LayerNorm, learned
    positions in the residual stream, hooks after layer 0 composes, non-vector hooks).
    """
    if not isinstance(include_bos, bool):
        raise TypeError(f"true_features: include_bos must be True or False, got {include_bos!r}")
    families = _families(model, hook, head)
    return families if include_bos else {k: v[1:] for k, v in families.items()}


def _families(model, hook: str, head) -> dict[str, torch.Tensor]:
    if not isinstance(model, AttnOnlyTransformer):
        raise TypeError(f"true_features needs an AttnOnlyTransformer, got {type(model).__name__}")
    cfg = model.cfg
    check_hook_name(model, hook)
    head = as_int(head)
    if head is not None and (isinstance(head, bool) or not isinstance(head, int)):
        raise ValueError(f"head must be None or an integer in [0, {cfg.n_heads}), got {head!r}")
    if not hook.endswith(SAE_HOOKS):
        _refuse(f"{hook!r} is not a vector-valued activation (attention scores and patterns hold no "
                "feature directions); a dictionary lives at the residual, attn_out and z hooks")
    if cfg.layernorm:
        _refuse("the model has LayerNorm, which rescales each position's vector by its own norm, "
                "so the residual stream is not a fixed sum of weight directions")
    W_E = model.W_E.detach().clone()
    if hook == "hook_embed":
        return {"token": W_E}
    has_mlp = getattr(cfg, "d_mlp", 0) > 0
    if has_mlp and (hook.endswith(("mlp.hook_post", "hook_mlp_out")) or hook in (
            "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre")):
        _refuse(f"{hook!r} holds the output of an MLP, act(x W_in + b_in) W_out, a nonlinear function of the "
                "stream: no fixed dictionary of weight products describes it (blocks.0.hook_resid_mid, before "
                "the MLP, has one)")
    if cfg.positional == "learned":
        _refuse(f"with learned positions {hook!r} also holds W_pos[p] at every position; "
                "only hook_embed is a pure token dictionary in this model")
    if cfg.n_layers == 0:
        _refuse(f"{hook!r} is not a hook of a 0-layer model with a known dictionary")
    attn = model.blocks[0].attn
    W_V, W_O = attn.W_V.detach(), attn.W_O.detach()
    ov = {f"ov_L0H{h}": W_E @ W_V[h] @ W_O[h] for h in range(cfg.n_heads)}
    if hook == "blocks.0.hook_resid_pre":
        return {"token": W_E}
    if hook == "blocks.0.attn.hook_z":
        if head is None:
            _refuse("at blocks.0.attn.hook_z give head=h: each head's z has its own family W_E W_V^h")
        if not (isinstance(head, int) and 0 <= head < cfg.n_heads):
            raise ValueError(f"head must be an integer in [0, {cfg.n_heads}), got {head!r}")
        return {f"v_L0H{head}": W_E @ W_V[head]}
    if head is not None:
        raise ValueError(f"head={head} is only meaningful at blocks.0.attn.hook_z, not {hook!r}")
    if hook == "blocks.0.hook_attn_out":
        return ov
    if hook in ("blocks.0.hook_resid_post", "blocks.0.hook_resid_mid") or (
            cfg.n_layers > 1 and hook == "blocks.1.hook_resid_pre"):
        return {"token": W_E, **ov}
    _refuse(f"no exact known dictionary at {hook!r}: after layer 0 the heads compose, and only "
            "hook_embed, blocks.0.hook_resid_pre, blocks.0.attn.hook_z, blocks.0.hook_attn_out, "
            "blocks.0.hook_resid_post and blocks.1.hook_resid_pre are supported")


def random_init_control(model: AttnOnlyTransformer, seed: int = 1) -> AttnOnlyTransformer:
    """An untrained model of the same architecture, ``AttnOnlyTransformer(model.cfg, seed=seed)``:
    the negative control (an SAE also finds "features" in a random transformer)."""
    if not isinstance(model, AttnOnlyTransformer):
        raise TypeError(f"random_init_control needs an AttnOnlyTransformer, got {type(model).__name__}")
    return AttnOnlyTransformer(model.cfg, seed=check_seed(seed)).eval()
