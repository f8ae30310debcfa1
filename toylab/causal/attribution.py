"""Attribution: split the residual stream into the terms that wrote it, and read them through ``W_U``.

In an attention-only transformer without MLPs the final residual stream is a
plain sum (row vectors, ``x [batch, pos, d_model]``)::

    x_final = embed + pos_embed + sum_l attn_out_l
            = embed + pos_embed + sum_{l, h} result_{l,h},     result_{l,h} = z_{l,h} W_O^{l,h}

(``pos_embed`` only when ``positional="learned"``: a shortformer adds ``W_pos``
to the query/key inputs, never to the stream.) Because ``logits = x_final W_U``
is linear, each term's *direct* contribution to a logit is
``term . W_U[:, t]`` and the contributions add up to the logit exactly — the
direct logit attribution (DLA). The *logit lens* decodes the partial sums
(the stream after each layer) through ``W_U`` as if the model stopped there.

MLPs (``cfg.d_mlp > 0``): each layer adds ``mlp_out_l`` after ``attn_out_l``, and
``mlp_out_l = sum_n post_{l,n} W_out[l, n] + b_out[l]`` is itself a sum over neurons,
so a neuron's direct contribution to the logit of ``t`` (the neuron DLA,
:func:`neuron_dla`) is ``post_{l,n} (W_out[l, n] . W_U[:, t])``; the neurons plus the
``b_out`` term sum to the layer's MLP term exactly.

LayerNorm (``cfg.layernorm=True``): the final ``LN(x) = (x - mean(x)) / s(x)``
is linear once the scale ``s = sqrt(var(x) + eps)`` is frozen at its value on
the run being explained, so the attribution of a term ``c`` is
``(c - mean(c)) / s . W_U[:, t]`` and the terms still sum to the true logit.
:func:`final_scale` reads ``s`` from a cache. With learned LayerNorm weights
(``ln_affine``) the term is also multiplied by ``ln_final.w`` and ``ln_final.b``
adds a constant component ``"ln_final.b"``; with ``biases`` the unembedding bias adds
``"b_U"``. (The logit lens applies the real LayerNorm to each partial sum instead,
as the model would.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toylab.blocks import check_neurons
from toylab.hooks import register_cache_method, resolve_index

LN_EPS = 1e-5


def _check_layer(model, layer: int | None) -> int:
    n = model.cfg.n_layers
    if layer is None:
        return n
    if not isinstance(layer, int) or not 0 <= layer <= n:
        raise ValueError(f"layer must be an integer in [0, {n}] (the residual stream before that layer), got {layer!r}")
    return layer


def final_resid(cache, model) -> torch.Tensor:
    """The residual stream that ``W_U`` reads, before any final LayerNorm: ``[batch, pos, d_model]``.

    ``cache["resid_post", -1]``, or the embeddings (``embed + pos_embed`` if
    learned) for a 0-layer model.
    """
    if model.cfg.n_layers > 0:
        return cache["resid_post", model.cfg.n_layers - 1]
    x = cache["embed"]
    return x + cache["pos_embed"] if model.cfg.positional == "learned" else x


def final_scale(cache, model) -> torch.Tensor:
    """The final LayerNorm's scale ``s = sqrt(mean_d (x - mean_d x)^2 + eps)``: ``[batch, pos, 1]``.

    ``x`` = :func:`final_resid`. Frozen at this value, the final LayerNorm is linear.
    """
    x = final_resid(cache, model)
    x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt()


def _embed_terms(cache, model) -> tuple[list[torch.Tensor], list[str]]:
    terms, labels = [cache["embed"]], ["embed"]
    if model.cfg.positional == "learned":
        terms.append(cache["pos_embed"])
        labels.append("pos_embed")
    return terms, labels


def decompose_resid(cache, model, layer: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The residual stream before ``layer`` (default: the final stream) as a stack of its terms.

    Returns ``(stack [n_components, batch, pos, d_model], labels)`` with labels
    ``"embed"``, ``"pos_embed"`` (only if ``positional="learned"``) and
    ``"{l}_attn_out"`` (then ``"{l}_mlp_out"`` in a model with MLPs) for each layer
    ``l < layer``. ``stack.sum(0)`` equals ``cache["resid_pre", layer]``
    (``cache["resid_post", -1]`` for the final stream).
    """
    layer = _check_layer(model, layer)
    terms, labels = _embed_terms(cache, model)
    for l in range(layer):
        terms.append(cache["attn_out", l])
        labels.append(f"{l}_attn_out")
        if model.cfg.d_mlp:
            terms.append(cache["mlp_out", l])
            labels.append(f"{l}_mlp_out")
    return torch.stack(terms), labels


def head_results(cache, model, layer: int) -> torch.Tensor:
    """Per-head outputs of ``layer``: ``[batch, pos, n_heads, d_model]``.

    ``cache["result", layer]`` if recorded, else ``z [batch, pos, h, d_head] @ W_O[h]``.
    """
    if ("result", layer) in cache:
        return cache["result", layer]
    return torch.einsum("bphe,hed->bphd", cache["z", layer], model.blocks[layer].attn.W_O.detach())


def stack_head_results(cache, model, layer: int | None = None,
                       include_embeddings: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The residual stream before ``layer`` (default: final) split per head.

    Returns ``(stack [layer * n_heads (+ embed terms), batch, pos, d_model], labels)``:
    first the heads in order ``"L0H0", "L0H1", ..., "L{layer-1}H{n_heads-1}"``
    (row ``l * n_heads + h``), then, in a model with MLPs, ``"{l}_mlp_out"`` for each
    layer, then ``"embed"`` and ``"pos_embed"`` (learned positions only) unless
    ``include_embeddings=False``. With the embeddings, ``stack.sum(0)`` is the residual stream.
    """
    layer = _check_layer(model, layer)
    terms, labels = [], []
    for l in range(layer):
        res = head_results(cache, model, l)
        for h in range(model.cfg.n_heads):
            terms.append(res[:, :, h])
            labels.append(f"L{l}H{h}")
    if model.cfg.d_mlp:
        for l in range(layer):
            terms.append(cache["mlp_out", l])
            labels.append(f"{l}_mlp_out")
    if include_embeddings:
        emb, emb_labels = _embed_terms(cache, model)
        terms += emb
        labels += emb_labels
    if not terms:
        raise ValueError("nothing to stack: layer=0 and include_embeddings=False")
    return torch.stack(terms), labels


def _check_ids(model, ids: torch.Tensor, shape, what: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor of token ids, got {ids!r:.60}")
    if tuple(ids.shape) != tuple(shape):
        raise ValueError(f"{what} must have shape [batch, pos] = {list(shape)} to match the stack, got {list(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab):
        raise ValueError(f"{what} holds ids outside [0, {model.cfg.d_vocab})")
    return ids.long()


def logit_attrs(stack: torch.Tensor, model, tokens: torch.Tensor, incorrect_tokens: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """Each component's direct contribution to a logit (or a logit difference).

    ``stack [n_components, batch, pos, d_model]``, ``tokens [batch, pos]`` (the
    token whose logit is explained at each position), optional
    ``incorrect_tokens [batch, pos]`` -> ``[n_components, batch, pos]``::

        attr[c, b, p] = stack[c, b, p] . (W_U[:, tokens[b, p]] - W_U[:, incorrect_tokens[b, p]])

    For a LayerNorm model pass ``scale [batch, pos, 1]`` (:func:`final_scale`,
    sliced like the stack): each component is centred and divided by the frozen
    scale first (and multiplied by ``ln_final.w`` with ``ln_affine``), so the
    attributions sum to the true logit less the constant terms of :func:`bias_attrs`.
    """
    if not isinstance(stack, torch.Tensor) or stack.ndim != 4 or stack.shape[-1] != model.cfg.d_model:
        shape = list(stack.shape) if isinstance(stack, torch.Tensor) else type(stack).__name__
        raise ValueError(f"stack must have shape [n_components, batch, pos, d_model={model.cfg.d_model}], got {shape}")
    direction = _direction(model, tokens, incorrect_tokens, stack.shape[1:3])
    if model.cfg.layernorm:
        if scale is None:
            raise ValueError("this model has a final LayerNorm: pass scale=final_scale(cache, model) "
                             "(sliced like the stack) to freeze it")
        stack = (stack - stack.mean(-1, keepdim=True)) / scale
        if model.cfg.ln_affine:
            stack = stack * model.ln_final.w.detach()
    return torch.einsum("cbpd,bpd->cbp", stack, direction)


def _direction(model, tokens, incorrect_tokens, shape) -> torch.Tensor:
    """``W_U[:, tokens] (- W_U[:, incorrect_tokens])`` as ``[batch, pos, d_model]``."""
    tokens = _check_ids(model, tokens, shape, "tokens")
    W_U = model.W_U.detach()
    direction = W_U.T[tokens]  # [batch, pos, d_model]
    if incorrect_tokens is not None:
        direction = direction - W_U.T[_check_ids(model, incorrect_tokens, shape, "incorrect_tokens")]
    return direction


def bias_attrs(model, tokens: torch.Tensor, incorrect_tokens: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[str]]:
    """The constant terms of the logit that no residual component writes: ``[n_bias, batch, pos]``.

    ``"ln_final.b"``: ``ln_final.b . W_U[:, t]`` (learned LayerNorm); ``"b_U"``: ``b_U[t]``
    (``biases``); each minus the same for ``incorrect_tokens`` when given. Empty
    (``[0, batch, pos]``, no labels) for a model with neither.
    """
    tokens = _check_ids(model, tokens, tokens.shape, "tokens")
    if incorrect_tokens is not None:
        incorrect_tokens = _check_ids(model, incorrect_tokens, tokens.shape, "incorrect_tokens")
    terms, labels = [], []
    if model.cfg.ln_affine:
        direction = _direction(model, tokens, incorrect_tokens, tokens.shape)
        terms.append(direction @ model.ln_final.b.detach())
        labels.append("ln_final.b")
    if model.cfg.biases:
        b = model.b_U.detach()
        terms.append(b[tokens] - (b[incorrect_tokens] if incorrect_tokens is not None else 0))
        labels.append("b_U")
    if not terms:
        return torch.zeros(0, *tokens.shape), labels
    return torch.stack(terms), labels


@dataclass
class DLA:
    """Result of :func:`direct_logit_attribution`.

    ``attrs [n_components, batch, pos - 1]``: the contribution of each component
    at position p to the logit (difference) of the token at p + 1; ``labels``
    name the components; ``total [batch, pos - 1]``: the model's true logit
    (difference), equal to ``attrs.sum(0)``.
    """

    attrs: torch.Tensor
    labels: list[str]
    total: torch.Tensor

    def mean(self, positions=None) -> dict[str, float]:
        """``{label: mean attribution}`` over the batch and ``positions`` (indices into ``pos - 1``)."""
        a = self.attrs if positions is None else self.attrs[:, :, positions]
        return {lab: float(v) for lab, v in zip(self.labels, a.mean(dim=(1, 2)))}


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, incorrect_tokens: torch.Tensor | None = None,
                             per: str = "head") -> DLA:
    """Direct logit attribution of the next token, per head (or per layer) and direct path.

    ``tokens [batch, pos]``; ``incorrect_tokens [batch, pos - 1]`` (optional)
    turns the logit of ``tokens[:, p + 1]`` into the difference with the logit
    of ``incorrect_tokens[:, p]``. ``per="head"`` gives components ``L{l}H{h}``
    (then ``{l}_mlp_out`` in a model with MLPs) then ``embed`` (+ ``pos_embed``) — the
    direct path; ``per="layer"`` the terms of :func:`decompose_resid`; then the
    constant terms of :func:`bias_attrs`, if any. Returns a :class:`DLA` whose
    ``attrs`` sum over components to the true logit (difference) ``total``.
    """
    if per not in ("head", "layer"):
        raise ValueError(f"per must be 'head' or 'layer', got {per!r}")
    tokens = model.check_tokens(tokens)
    if tokens.shape[1] < 2:
        raise ValueError("direct logit attribution of the next token needs at least 2 positions")
    names = lambda n: n.endswith(("hook_embed", "hook_pos_embed", "hook_z", "hook_attn_out", "hook_mlp_out",
                                  "hook_resid_post"))
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    stack, labels = stack_head_results(cache, model) if per == "head" else decompose_resid(cache, model)
    targets = tokens[:, 1:]
    scale = final_scale(cache, model)[:, :-1] if model.cfg.layernorm else None
    attrs = logit_attrs(stack[:, :, :-1], model, targets, incorrect_tokens, scale=scale)
    consts, const_labels = bias_attrs(model, targets, incorrect_tokens)
    if const_labels:
        attrs, labels = torch.cat([attrs, consts.to(attrs.dtype)]), labels + const_labels
    total = logits[:, :-1].gather(-1, targets[..., None])[..., 0]
    if incorrect_tokens is not None:
        total = total - logits[:, :-1].gather(-1, incorrect_tokens.long()[..., None])[..., 0]
    return DLA(attrs, labels, total)


@dataclass
class LogitLens:
    """Result of :func:`logit_lens`; the first axis runs over ``labels``
    (``"embed"`` = resid_pre 0, then ``"L{l}"`` = resid_post of layer l; in a model
    with MLPs ``"L{l}.attn"`` = resid_mid of layer l comes before each ``"L{l}"``).

    ``topk_tokens, topk_probs [n_streams, batch, pos, k]``;
    ``target_probs [n_streams, batch, pos]`` or None (``n_streams = n_layers + 1``,
    or ``2 n_layers + 1`` with MLPs).
    """

    labels: list[str]
    topk_tokens: torch.Tensor
    topk_probs: torch.Tensor
    target_probs: torch.Tensor | None


@torch.no_grad()
def logit_lens(model, tokens: torch.Tensor, k: int = 5, target: torch.Tensor | None = None) -> LogitLens:
    """Decode the residual stream after each layer through ``W_U``.

    ``tokens [batch, pos]``. The streams are ``resid_pre 0`` (the embeddings,
    with ``W_pos`` only if positions are learned) and each layer's ``resid_post``
    (with MLPs, each layer's ``resid_mid`` before it: what the MLP adds shows as the
    change from ``L{l}.attn`` to ``L{l}``); each is read as ``softmax(LN?(x) W_U (+ b_U))``
    (the real final LayerNorm, with its weights, if the model has one). ``target [batch, pos]`` (e.g.
    ``tokens[:, 1:]`` padded, or a fixed id broadcast) gives the probability of
    ``target[b, p]`` at each layer. Returns a :class:`LogitLens`.
    """
    tokens = model.check_tokens(tokens)
    if not isinstance(k, int) or not 1 <= k <= model.cfg.d_vocab:
        raise ValueError(f"k must be an integer in [1, d_vocab={model.cfg.d_vocab}], got {k!r}")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(
        ("hook_embed", "hook_pos_embed", "hook_resid_mid", "hook_resid_post")))
    streams, labels = [decompose_resid(cache, model, 0)[0].sum(0)], ["embed"]
    for l in range(model.cfg.n_layers):
        if model.cfg.d_mlp:
            streams.append(cache["resid_mid", l])
            labels.append(f"L{l}.attn")
        streams.append(cache["resid_post", l])
        labels.append(f"L{l}")
    x = torch.stack(streams)  # [n_streams, batch, pos, d_model]
    if model.cfg.layernorm:
        x = model.ln_final.norm(x)
    logits = x @ model.W_U.detach()
    probs = torch.softmax(logits + model.b_U.detach() if model.cfg.biases else logits, dim=-1)
    top_p, top_t = probs.topk(k, dim=-1)
    target_probs = None
    if target is not None:
        target = _check_ids(model, torch.as_tensor(target).expand(tokens.shape), tokens.shape, "target")
        target_probs = probs.gather(-1, target.expand(x.shape[0], -1, -1)[..., None])[..., 0]
    return LogitLens(labels, top_t, top_p, target_probs)


@torch.no_grad()
def neuron_dla(model, tokens: torch.Tensor, layer: int, incorrect_tokens: torch.Tensor | None = None,
               neurons=None) -> DLA:
    """Direct logit attribution of the next token to single neurons of ``layer``'s MLP.

    ``tokens [batch, pos]``; ``neurons`` (indices into ``d_mlp``, default all)::

        attrs[n, b, p] = post[b, p, n] * (W_out[layer, n] . d[b, p])

    with ``d[b, p] = W_U[:, tokens[b, p + 1]] (- W_U[:, incorrect_tokens[b, p]])``; with
    a final LayerNorm, ``W_out[n]`` is centred, divided by the frozen scale ``s[b, p]``
    (:func:`final_scale`) and multiplied by ``ln_final.w`` (learned weights), exactly as
    :func:`logit_attrs` treats a residual term. Labels ``"L{layer}N{n}"``, then
    ``"L{layer}.b_out"`` (the bias term). ``total [batch, pos - 1]`` is the whole
    MLP term's direct attribution, equal to ``attrs.sum(0)`` when ``neurons`` is all of them.
    """
    if not model.cfg.d_mlp:
        raise ValueError("neuron_dla needs a model with MLPs (d_mlp > 0); this one is attention-only")
    tokens = model.check_tokens(tokens)
    if tokens.shape[1] < 2:
        raise ValueError("direct logit attribution of the next token needs at least 2 positions")
    layer = resolve_index(layer, model.cfg.n_layers, "layer")
    idx = check_neurons(model, neurons)
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out",
                                                          f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
    direction = _direction(model, tokens[:, 1:], incorrect_tokens, tokens[:, 1:].shape)  # [b, p-1, d]
    mlp = model.blocks[layer].mlp
    W_out, b_out = mlp.W_out.detach()[idx], mlp.b_out.detach()  # [n, d_model], [d_model]
    scale = None
    if model.cfg.layernorm:
        W_out, b_out = W_out - W_out.mean(-1, keepdim=True), b_out - b_out.mean()
        if model.cfg.ln_affine:
            W_out, b_out = W_out * model.ln_final.w.detach(), b_out * model.ln_final.w.detach()
        scale = final_scale(cache, model)[:, :-1, 0]  # [b, p-1]
    post = cache["post", layer][:, :-1][..., idx]  # [b, p-1, n]
    attrs = torch.cat([torch.einsum("bpn,nd,bpd->nbp", post, W_out, direction),
                       torch.einsum("d,bpd->bp", b_out, direction)[None]])
    attrs = attrs if scale is None else attrs / scale
    labels = [f"L{layer}N{int(n)}" for n in idx] + [f"L{layer}.b_out"]
    total = logit_attrs(cache["mlp_out", layer][None, :, :-1], model, tokens[:, 1:], incorrect_tokens,
                        scale=None if scale is None else scale[..., None])[0]
    return DLA(attrs, labels, total)


# ----------------------------------------------------- the cache's helpers
# The hook machinery (toylab.hooks) is the bottom layer and never imports this
# module; importing it adds the TransformerLens-style helpers to ActivationCache.

def _cache_model(cache):
    if cache.model is None:
        raise ValueError("this cache was made without a model; use toylab.causal.attribution's functions directly")
    return cache.model


def _cache_decompose_resid(self, layer: int | None = None):
    """``(stack [n_components, batch, pos, d_model], labels)``: embeddings and each
    layer's attention output, summing to the residual stream (see :func:`decompose_resid`)."""
    return decompose_resid(self, _cache_model(self), layer)


def _cache_stack_head_results(self, layer: int | None = None, include_embeddings: bool = True):
    """``(stack [n_heads_total (+ embeddings), batch, pos, d_model], labels)``: one term
    per head (see :func:`stack_head_results`)."""
    return stack_head_results(self, _cache_model(self), layer, include_embeddings)


def _cache_logit_attrs(self, stack: torch.Tensor, tokens: torch.Tensor, incorrect_tokens: torch.Tensor | None = None):
    """``[n_components, batch, pos]``: each component's direct contribution to the logit
    of ``tokens`` (or to ``logit(tokens) - logit(incorrect_tokens)``), see :func:`logit_attrs`."""
    return logit_attrs(stack, _cache_model(self), tokens, incorrect_tokens)


register_cache_method("decompose_resid", _cache_decompose_resid)
register_cache_method("stack_head_results", _cache_stack_head_results)
register_cache_method("logit_attrs", _cache_logit_attrs)
