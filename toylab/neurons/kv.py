"""An MLP layer as a key-value memory (Geva et al. 2021), read neuron by neuron.

Layer ``l``'s MLP computes, per position (row vectors, ``x [d_model]`` its input)::

    mlp(x) = sum_n act(x . W_in[:, n] + b_in[n]) W_out[n] + b_out

so neuron ``n`` is a *key* ``W_in[:, n] [d_model]`` matched against the input and a
*value* ``W_out[n] [d_model]`` added to the residual stream in proportion to the match.
Reading them through the embeddings and the unembedding gives token-level tables:

- keys, :func:`neuron_keys`: ``pre[t, n] = LN2?(W_E[t]) W_in[:, n] + b_in[n]``, the
  pre-activation neuron ``n`` would get if its input were token ``t``'s embedding alone
  (``source="positions"``: ``W_pos[p]`` alone). This is the *direct path* from the
  embedding: attention and earlier layers also write to the MLP's input, so it says
  which tokens a neuron is tuned to, not what it sees in a given context; for that,
  :func:`top_activations` finds the inputs that fire it most over a dataset;
- values, :func:`neuron_values`: ``W_out[n] W_U [d_vocab]``, the direct effect on
  every logit of one unit of activation. With a final LayerNorm the value is read
  as ``(W_out[n] - mean) * ln_final.w`` and the run's ``1 / s`` scale is left out (it
  is positive, so the ranking of logits is exact, the size is per run);
  :func:`toylab.causal.attribution.neuron_dla` gives the exact contribution on a run.

Everything here reads weights or runs the model without changing it; shapes are in
each docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toylab.blocks import check_neurons
from toylab.hooks import resolve_index

__all__ = ["neuron_keys", "neuron_values", "top_tokens", "top_activations", "TopActivations"]


def _mlp(model, layer: int):
    if not getattr(model.cfg, "d_mlp", 0):
        raise ValueError("this model has no MLPs (d_mlp=0): it has no neurons to read")
    layer = resolve_index(layer, model.cfg.n_layers, "layer")
    return layer, model.blocks[layer]


@torch.no_grad()
def neuron_keys(model, layer: int, source: str = "tokens") -> torch.Tensor:
    """The direct-path pre-activations of ``layer``'s neurons: ``[d_vocab, d_mlp]`` (``source="tokens"``)
    or ``[n_ctx, d_mlp]`` (``source="positions"``).

    ``keys[t, n] = LN2?(W_E[t]) W_in[:, n] + b_in[n]`` (``LN2``: the layer's ``ln2`` with its
    weights, where the model has LayerNorm); ``W_pos[p]`` for positions. Large where
    token (position) ``t`` alone would fire neuron ``n`` (module docstring: the direct path only).
    """
    layer, block = _mlp(model, layer)
    if source == "tokens":
        x = model.W_E.detach()
    elif source == "positions":
        if model.cfg.positional == "none":
            raise ValueError("source='positions' needs positions, but the model has positional='none'")
        if model.cfg.positional == "shortformer":
            raise ValueError("source='positions': in a shortformer model W_pos enters only the queries and keys, "
                             "never an MLP's input")
        x = model.W_pos.detach()
    else:
        raise ValueError(f"source must be 'tokens' or 'positions', got {source!r}")
    if model.cfg.layernorm:
        x = block.ln2.norm(x)
    return x @ block.mlp.W_in.detach() + block.mlp.b_in.detach()


@torch.no_grad()
def neuron_values(model, layer: int) -> torch.Tensor:
    """The direct effect of each neuron of ``layer`` on each logit: ``[d_mlp, d_vocab]``.

    ``values[n] = W_out[layer, n] @ W_U`` (with a final LayerNorm,
    ``((W_out[n] - mean_d W_out[n]) * ln_final.w) @ W_U``, the ``1/s`` scale of a run
    left out): neuron ``n`` active at ``a`` raises logit ``t`` by ``a * values[n, t]``.
    """
    layer, block = _mlp(model, layer)
    W = block.mlp.W_out.detach()
    if model.cfg.layernorm:
        W = W - W.mean(-1, keepdim=True)
        if model.cfg.ln_affine:
            W = W * model.ln_final.w.detach()
    return W @ model.W_U.detach()


def top_tokens(table: torch.Tensor, k: int = 5, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest (or smallest) entries of each row: ``table [n, d]`` (or ``[d]``) ->
    ``(values [n, k], indices [n, k])``. For :func:`neuron_values` rows (``[d_mlp, d_vocab]``)
    the indices are the tokens each neuron raises most; for keys, transpose first
    (``neuron_keys(...).T``): the tokens that fire each neuron most."""
    if not isinstance(table, torch.Tensor) or table.ndim not in (1, 2) or not table.dtype.is_floating_point:
        shape = list(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise ValueError(f"table must be a float tensor [n, d] or [d], got {shape}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= table.shape[-1]:
        raise ValueError(f"k must be an integer in [1, {table.shape[-1]}], got {k!r}")
    return torch.topk(table, k, dim=-1, largest=largest)


@dataclass
class TopActivations:
    """Result of :func:`top_activations`, one row per neuron (``neurons [n]``).

    ``values [n, k]``: the largest activations, in decreasing order; ``batch, pos [n, k]``:
    where they occur in the tokens; ``token [n, k]``: the token at that position.
    """

    neurons: torch.Tensor
    values: torch.Tensor
    batch: torch.Tensor
    pos: torch.Tensor
    token: torch.Tensor

    def contexts(self, tokens: torch.Tensor, row: int, before: int = 5) -> list[list[int]]:
        """For neuron row ``row``: the ``before`` tokens up to and including each top position."""
        return [tokens[b, max(0, p - before):p + 1].tolist()
                for b, p in zip(self.batch[row].tolist(), self.pos[row].tolist())]


@torch.no_grad()
def top_activations(model, tokens: torch.Tensor, layer: int, neurons=None, k: int = 10,
                    hook: str = "post") -> TopActivations:
    """The inputs that fire ``layer``'s neurons most over a dataset ``tokens [batch, pos]``.

    ``hook``: ``"post"`` (the activation, ``hook_post``) or ``"pre"``. ``neurons``:
    indices into ``d_mlp`` (default all). For each neuron, the ``k`` (batch, position)
    cells with the largest activation, ties broken by the earlier cell.
    """
    layer, _ = _mlp(model, layer)
    if hook not in ("post", "pre"):
        raise ValueError(f"hook must be 'post' or 'pre', got {hook!r}")
    tokens = model.check_tokens(tokens)
    idx = check_neurons(model, neurons)
    cells = tokens.numel()
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cells:
        raise ValueError(f"k must be an integer in [1, {cells}] (the number of (batch, position) cells), got {k!r}")
    name = f"blocks.{layer}.mlp.hook_{hook}"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    acts = cache[name][..., idx].reshape(cells, len(idx)).T  # [n, batch * pos]
    order = torch.sort(acts, dim=-1, descending=True, stable=True)
    vals, flat = order.values[:, :k], order.indices[:, :k]
    b, p = flat // tokens.shape[1], flat % tokens.shape[1]
    return TopActivations(idx, vals, b, p, tokens[b, p])
