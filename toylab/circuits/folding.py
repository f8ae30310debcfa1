"""What LayerNorm changes, made explicit: fold its weights into the weights that read it.

A pre-LayerNorm with learned weights computes, per residual vector ``x [d_model]``::

    LN(x) = w * (x - mean(x)) / s(x) + b,      s(x) = sqrt(var(x) + eps)

and whatever reads it (``W_Q, W_K, W_V`` after ``ln1``, ``W_in`` after ``ln2``,
``W_U`` after ``ln_final``) multiplies it by a matrix ``W [d_model, n]`` and adds
a bias ``b_W``. Writing ``xhat = (x - mean(x)) / s(x)`` (the weightless LayerNorm)::

    LN(x) W + b_W = xhat (diag(w) W) + (b W + b_W)

so :func:`fold_layer_norm` moves ``w`` into the rows of ``W`` and ``b`` into the
bias, and returns a model with a weightless LayerNorm (``ln_affine=False``,
``biases=True``) that computes the same logits. Since ``xhat`` sums to zero over
``d_model``, any constant added to a column of ``W`` is invisible; with
``center_weights`` each folded ``W`` is centred over its ``d_model`` rows.

Three more changes leave the outputs alone:

- :func:`center_writing_weights`: every reader of the residual stream starts by
  subtracting its mean, so the mean of what ``W_E, W_pos, W_O, W_out, b_out`` write
  is never read: each is centred over ``d_model`` (needs ``layernorm=True``);
- :func:`center_unembed`: ``W_U`` (and ``b_U``) minus its mean over the vocabulary
  adds the same number to every logit of a position: log-probabilities and
  probabilities are unchanged, the logits shift by a constant per position.

What stays exact and what does not: after folding, every reader sees ``xhat`` of the
residual stream, which is linear in ``x`` except for the one scale ``s(x)`` per
position and LayerNorm. The weights alone (``W_E W_OV W_U`` & co.) therefore still
describe the model only up to those scales; activation-based analyses that freeze
``s`` at its value on a run (direct logit attribution) are exact. TransformerLens's
``fold_ln=True, center_writing_weights=True, center_unembed=True`` (with
``fold_value_biases=False``: toylab has no ``b_O`` to move ``b_V W_O`` into) give the same
weights (tested in ``tests/test_peer_transformerlens.py``).

Shortformer models add ``W_pos`` to the LayerNorm's output (queries and keys only),
which the folded ``W_Q, W_K`` would scale too: they are refused.
"""

from __future__ import annotations

import torch

from toylab.model import AttnOnlyTransformer

__all__ = ["fold_layer_norm", "center_writing_weights", "center_unembed"]


def _check_model(model, what: str) -> None:
    if not isinstance(model, AttnOnlyTransformer):
        raise TypeError(f"{what} needs a toylab model (AttnOnlyTransformer), got {type(model).__name__}")


def _refuse_shortformer(model, what: str) -> None:
    if model.cfg.positional == "shortformer" and model.cfg.layernorm:
        raise ValueError(f"{what} is not exact for this model: with positional='shortformer' W_pos is added to "
                         "the LayerNorm's output at the queries and keys, so it would be scaled and centred "
                         "with the weights that read it. Use a model with positional='learned' or 'none'")


def _rebuild(model, state: dict, **changes) -> AttnOnlyTransformer:
    """A new model with ``model.cfg`` changed by ``changes``, holding ``state``."""
    cfg = type(model.cfg).from_dict({**model.cfg.to_dict(), **changes})
    new = AttnOnlyTransformer(cfg, seed=None).to(device=model.W_E.device, dtype=model.W_E.dtype)
    new.load_state_dict(state)
    new.fast_path = model.fast_path
    new.train(model.training)
    return new


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def fold_layer_norm(model, center_weights: bool = True) -> AttnOnlyTransformer:
    """Fold each LayerNorm's ``w`` and ``b`` into the weights that read it; ``model`` is not changed.

    Per layer ``l``, with ``ln1.w, ln1.b [d_model]``::

        W_Q'[h] = diag(w) W_Q[h]      b_Q'[h] = b_Q[h] + b W_Q[h]      (and K, V alike)
        W_in'   = diag(w2) W_in       b_in'   = b_in + b2 W_in          (ln2, when d_mlp > 0)
        W_U'    = diag(wf) W_U        b_U'    = b_U + bf W_U            (ln_final)

    then, with ``center_weights``, each ``W'`` minus its mean over the ``d_model`` rows.
    Returns a new model with ``ln_affine=False`` and ``biases=True`` whose logits equal
    ``model``'s up to float rounding. A model whose LayerNorm is already weightless gets
    only the centring. Refused: models without LayerNorm (nothing to fold), shortformer
    models (see the module docstring).
    """
    _check_model(model, "fold_layer_norm")
    if not model.cfg.layernorm:
        raise ValueError("fold_layer_norm: this model has no LayerNorm (layernorm=False), so there is nothing "
                         "to fold")
    _refuse_shortformer(model, "fold_layer_norm")
    cfg = model.cfg
    state = _state(model)

    def fold(ln: str, readers: list[tuple[str, str]], mean_dim: int) -> None:
        # readers: (weight name, bias name); the weight's d_model axis is mean_dim
        w = state.pop(f"{ln}.w", None)
        b = state.pop(f"{ln}.b", None)
        for W_name, b_name in readers:
            W = state[W_name]
            if b is not None:
                shift = torch.tensordot(b, W, dims=([0], [mean_dim]))  # b W: the reader's shape without d_model
                state[b_name] = state.get(b_name, torch.zeros_like(shift)) + shift
                shape = [1] * W.ndim
                shape[mean_dim] = -1
                W = W * w.reshape(shape)
            if center_weights:
                W = W - W.mean(mean_dim, keepdim=True)
            state[W_name] = W

    for l in range(cfg.n_layers):
        fold(f"blocks.{l}.ln1", [(f"blocks.{l}.attn.W_{x}", f"blocks.{l}.attn.b_{x}") for x in "QKV"], 1)
        if cfg.d_mlp:
            fold(f"blocks.{l}.ln2", [(f"blocks.{l}.mlp.W_in", f"blocks.{l}.mlp.b_in")], 0)
    fold("ln_final", [("W_U", "b_U")], 0)
    if not cfg.ln_affine:
        return _rebuild(model, state)
    for l in range(cfg.n_layers):  # biases=True: a model without them gets zero b_Q, b_K, b_V, b_U first
        for x in "QKV":
            state.setdefault(f"blocks.{l}.attn.b_{x}", torch.zeros(cfg.n_heads, cfg.d_head, dtype=model.W_E.dtype,
                                                                   device=model.W_E.device))
    state.setdefault("b_U", torch.zeros(cfg.d_vocab, dtype=model.W_E.dtype, device=model.W_E.device))
    return _rebuild(model, state, ln_affine=False, biases=True)


@torch.no_grad()
def center_writing_weights(model) -> AttnOnlyTransformer:
    """Centre what writes to the residual stream over ``d_model``; ``model`` is not changed.

    ``W_E [d_vocab, d_model]``, ``W_pos [n_ctx, d_model]``, ``W_O [n_heads, d_head, d_model]``,
    ``W_out [d_mlp, d_model]``, ``b_out [d_model]``: each ``X -> X - mean_d X``. Exact only
    when everything that reads the stream is a LayerNorm (it subtracts the mean anyway), so
    models without LayerNorm are refused, and shortformer models (``W_pos`` is not read
    through a LayerNorm). Returns a new model with the same logits up to float rounding.
    """
    _check_model(model, "center_writing_weights")
    if not model.cfg.layernorm:
        raise ValueError("center_writing_weights is exact only when every reader of the residual stream is a "
                         "LayerNorm (which subtracts the mean), but this model has layernorm=False: centring "
                         "W_E, W_O, W_out would change its logits")
    _refuse_shortformer(model, "center_writing_weights")
    state = _state(model)
    for name in list(state):
        if name in ("W_E", "W_pos") or name.endswith(("attn.W_O", "mlp.W_out", "mlp.b_out")):
            state[name] = state[name] - state[name].mean(-1, keepdim=True)
    return _rebuild(model, state)


@torch.no_grad()
def center_unembed(model) -> AttnOnlyTransformer:
    """``W_U [d_model, d_vocab]`` minus its mean over the vocabulary (``b_U`` too); ``model`` is not changed.

    ``logits'[b, p, t] = logits[b, p, t] - mean_t' logits[b, p, t']``: a constant per
    position, so ``log_softmax`` and the loss are unchanged (up to float rounding) and
    logit differences are exactly what they were. Any model.
    """
    _check_model(model, "center_unembed")
    state = _state(model)
    state["W_U"] = state["W_U"] - state["W_U"].mean(-1, keepdim=True)
    if "b_U" in state:
        state["b_U"] = state["b_U"] - state["b_U"].mean()
    return _rebuild(model, state)
