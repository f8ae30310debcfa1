"""Circuits read from the weights: QK/OV circuits, full circuits, composition
circuits, virtual weights and the path expansion of the logits.

Row-vector notation (as in TransformerLens; the paper writes column vectors,
``W_O W_V``): the residual stream is ``x [pos, d_model]`` and a head computes

    ``h(x) = A x W_V W_O``,   ``A = softmax*(x W_Q (x W_K)^T / sqrt(d_head))``.

Per head, ``W_OV = W_V W_O [d_model, d_model]`` (what is moved: a source
residual vector ``x`` is written as ``x W_OV``) and ``W_QK = W_Q W_K^T
[d_model, d_model]`` (the bilinear form ``x_dst W_QK x_src^T`` is the attention
score, before the ``1/sqrt(d_head)`` scale, which every circuit here leaves
out as TransformerLens does). Every function returns a
:class:`~toylab.factored.FactoredMatrix` so ``[d_vocab, d_vocab]`` circuits are
never formed; call ``.AB`` on a small one.

Positions. ``positional="shortformer"``: ``W_pos`` is added to the inputs of
the queries and keys only; the token-only full QK circuit ``W_E W_QK W_E^T``
ignores the position parts of the score, which expands into four terms
(token-token, token-pos, pos-token, pos-pos); :func:`positional_qk` gives the
pos-pos term ``W_pos W_QK W_pos^T``. Values never see positions, so the full OV
circuit is the whole story of what a head moves. ``positional="learned"``: the
residual stream holds ``W_E[t] + W_pos[p]`` (plus, after layer 0, the head
outputs), so the full circuits here are the token part of the direct path only;
the same four-term expansion holds for QK, and the OV circuit of a position
vector, ``W_pos W_OV W_U``, is left out. Models with LayerNorm are not linear in
the weights: the circuit matrices here ignore the normalisation (they are the
weights, which is still what a student may want to look at), but every
*reading* of them as the model's behaviour -- :func:`path_expansion`,
:func:`skip_trigram_triples`, the copying and composition scores -- refuses
such models (:func:`refuse_layernorm` says why), and so does every reading of a model
with MLPs, whose paths through an MLP no weight product here contains (:func:`refuse_mlp`).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from toylab.factored import FactoredMatrix
from toylab.hooks import resolve_index
from toylab.model import head_name

HeadIndex = Union[int, Sequence[int]]

__all__ = [
    "OV", "QK", "full_ov", "full_qk", "positional_qk", "k_composition_circuit",
    "q_composition_circuit", "v_composition_circuit", "virtual_weights", "path_expansion",
    "path_label", "n_paths", "skip_trigram_triples", "check_layer", "check_head", "refuse_layernorm",
    "refuse_mlp",
]


def refuse_layernorm(model, what: str) -> None:
    """Raise ``ValueError`` if ``model`` has LayerNorm: ``what`` reads products of weight matrices.

    With LayerNorm every head reads ``LN(x) = (x - mean x) / s(x)`` and the unembedding
    reads ``LN(x_final)``; the scale ``s`` depends on the whole residual stream of the
    run, so ``W_E W_OV W_U`` & co. are no longer the maps the model applies. (Folding
    one typical scale in would be an approximation of unknown quality: on a trained
    LayerNorm skip-trigram model the weight reading found 8 of the 12 planted rules
    while the model had learned 10.)
    """
    if getattr(model.cfg, "layernorm", False):
        raise ValueError(
            f"{what} reads the weights as linear maps (products such as W_E W_OV W_U), but this model has "
            "LayerNorm: each head and the unembedding see x / s(x) with a scale s that depends on the whole "
            "residual stream, so the weight products are not what the model computes. Use the activation-"
            "based tools instead (toylab.circuits.scores.head_detector_scores, toylab.causal.interventions.ablate_heads, "
            "toylab.causal.patching, toylab.causal.attribution.direct_logit_attribution, which freezes the scale)."
        )


def refuse_mlp(model, what: str) -> None:
    """Raise ``ValueError`` if ``model`` has MLPs (``d_mlp > 0``): ``what`` assumes attention only.

    The products of attention weights (``W_E W_OV W_U``, composition of two heads, the
    path expansion) are the whole model only when nothing else writes to the residual
    stream; an MLP reads every head's output through a nonlinearity, so those products
    leave out every path that passes through an MLP, with no bound on what they miss.
    """
    if getattr(model.cfg, "d_mlp", 0):
        raise ValueError(
            f"{what} assumes an attention-only model, but this one has MLPs (d_mlp={model.cfg.d_mlp}): "
            "every path through an MLP passes a nonlinearity, so products of attention weights leave those "
            "paths out. Use the activation-based tools (toylab.causal.attribution, toylab.causal.patching, "
            "toylab.neurons) for MLP models.")


# ------------------------------------------------------------------ checks
def check_layer(model, layer: int) -> int:
    """``layer`` as a non-negative int in ``[0, n_layers)``; negative counts from the end."""
    n = model.cfg.n_layers
    if n == 0:
        raise ValueError("the model has 0 layers: there is no layer to index")
    return resolve_index(layer, n, "layer")


def check_head(model, head: HeadIndex, default_layer: int | None = None) -> tuple[int, int]:
    """A head given as ``(layer, head)`` (or a bare head index with ``default_layer``)
    -> ``(layer, head)``, both in range; ValueError otherwise."""
    if isinstance(head, int) and not isinstance(head, bool) and default_layer is not None:
        layer, h = default_layer, head
    elif isinstance(head, (tuple, list)) and len(head) == 2:
        layer, h = head
    else:
        raise ValueError(f"a head is given as (layer, head), got {head!r}")
    layer = check_layer(model, layer)
    return layer, resolve_index(h, model.cfg.n_heads, "head")


def _layers(model, layer: int | None) -> slice | int:
    if model.cfg.n_layers == 0:
        raise ValueError("the model has 0 layers: it has no attention heads and no QK/OV circuits")
    return slice(None) if layer is None else check_layer(model, layer)


def _W_pos(model) -> Tensor:
    if model.cfg.positional == "none":
        raise ValueError('the model has positional="none": there is no W_pos')
    return model.W_pos


# ------------------------------------------------------------ head circuits
def OV(model) -> FactoredMatrix:
    """OV circuits ``W_OV = W_V @ W_O``: FactoredMatrix ``[n_layers, n_heads, d_model, d_model]``
    (A = ``W_V``, B = ``W_O``; inner dim ``d_head``)."""
    return FactoredMatrix(model.W_V.detach(), model.W_O.detach())


def QK(model) -> FactoredMatrix:
    """QK circuits ``W_QK = W_Q @ W_K^T``: FactoredMatrix ``[n_layers, n_heads, d_model, d_model]``
    (A = ``W_Q``, B = ``W_K^T``). Entry ``(i, j)``: query residual direction i, key direction j."""
    return FactoredMatrix(model.W_Q.detach(), model.W_K.detach().mT)


def full_ov(model, layer: int | None = None) -> FactoredMatrix:
    """Full OV circuit ``W_E W_OV W_U``: ``[n_layers, n_heads, d_vocab, d_vocab]``
    (``[n_heads, d_vocab, d_vocab]`` for one ``layer``).

    Entry ``(s, t)``: how much attending to a source token ``s`` raises the
    logit of token ``t`` (direct path only). Factored as A = ``W_E W_V [.., d_vocab, d_head]``,
    B = ``W_O W_U [.., d_head, d_vocab]``; never dense.
    """
    sl = _layers(model, layer)
    W_E, W_U = model.W_E.detach(), model.W_U.detach()
    return FactoredMatrix(W_E @ model.W_V.detach()[sl], model.W_O.detach()[sl] @ W_U)


def full_qk(model, layer: int | None = None) -> FactoredMatrix:
    """Token-only full QK circuit ``W_E W_QK W_E^T``: ``[n_layers, n_heads, d_vocab, d_vocab]``
    (``[n_heads, ...]`` for one ``layer``).

    Entry ``(i, j)``: attention score (unscaled) of a query token ``i`` on a key
    token ``j``. Ignores positions (see the module docstring) and, for layers
    >= 1, everything but the direct path from the embedding.
    A = ``W_E W_Q``, B = ``(W_E W_K)^T``.
    """
    sl = _layers(model, layer)
    W_E = model.W_E.detach()
    return FactoredMatrix(W_E @ model.W_Q.detach()[sl], (W_E @ model.W_K.detach()[sl]).mT)


def positional_qk(model, layer: int | None = None) -> FactoredMatrix:
    """Positional QK circuit ``W_pos W_QK W_pos^T``: ``[n_layers, n_heads, n_ctx, n_ctx]``.

    Entry ``(p, q)``: the pos-pos term of the score of query position ``p`` on key
    position ``q``. For shortformer models this is exactly the position part
    that every layer sees; for ``"learned"`` it is exact for layer 0 only (later
    layers also see positions moved by earlier heads).
    """
    sl = _layers(model, layer)
    W_pos = _W_pos(model).detach()
    return FactoredMatrix(W_pos @ model.W_Q.detach()[sl], (W_pos @ model.W_K.detach()[sl]).mT)


# ------------------------------------------------------- composition circuits
def _pair(model, h0: HeadIndex, h1: HeadIndex) -> tuple[tuple[int, int], tuple[int, int]]:
    if model.cfg.n_layers < 2:
        raise ValueError(f"composition needs at least 2 layers, the model has {model.cfg.n_layers}")
    a, b = check_head(model, h0, default_layer=0), check_head(model, h1, default_layer=1)
    if a[0] >= b[0]:
        raise ValueError(f"head {a[0]}.{a[1]} must be in an earlier layer than head {b[0]}.{b[1]} to compose with it")
    return a, b


def _ov_embed_times(model, head: tuple[int, int], W: Tensor) -> Tensor:
    """``W_E W_V^head (W_O^head W)`` for ``W [d_model, n]``: ``[d_vocab, n]``, via the d_head side."""
    l, h = head
    return (model.W_E.detach() @ model.W_V.detach()[l, h]) @ (model.W_O.detach()[l, h] @ W)


def k_composition_circuit(model, h0: HeadIndex, h1: HeadIndex) -> FactoredMatrix:
    """K-composition circuit ``W_E W_QK^{h1} (W_E W_OV^{h0})^T``: ``[d_vocab, d_vocab]``.

    Entry ``(i, j)``: the score (unscaled) of a query token ``i`` of head ``h1``
    on a key position into which head ``h0`` moved token ``j`` (for a
    previous-token ``h0``: the key whose *previous* token is ``j``). For an
    induction head the diagonal dominates. Heads are ``(layer, head)``; a bare
    int means layer 0 for ``h0`` and layer 1 for ``h1``.
    Factors: A = ``W_E W_Q^{h1}``, B = ``W_K^{h1 T} W_O^{h0 T} W_V^{h0 T} W_E^T``.
    """
    a, (l1, k1) = _pair(model, h0, h1)
    A = model.W_E.detach() @ model.W_Q.detach()[l1, k1]                 # [V, d_head]
    B = _ov_embed_times(model, a, model.W_K.detach()[l1, k1]).mT          # [d_head, V]
    return FactoredMatrix(A, B)


def q_composition_circuit(model, h0: HeadIndex, h1: HeadIndex) -> FactoredMatrix:
    """Q-composition circuit ``W_E W_OV^{h0} W_QK^{h1} W_E^T``: ``[d_vocab, d_vocab]``.

    Entry ``(i, j)``: the score of a query position into which ``h0`` moved
    token ``i`` on a key token ``j``."""
    a, (l1, k1) = _pair(model, h0, h1)
    A = _ov_embed_times(model, a, model.W_Q.detach()[l1, k1])          # [V, d_head]
    B = (model.W_E.detach() @ model.W_K.detach()[l1, k1]).mT             # [d_head, V]
    return FactoredMatrix(A, B)


def v_composition_circuit(model, h0: HeadIndex, h1: HeadIndex) -> FactoredMatrix:
    """V-composition (virtual head) OV circuit ``W_E W_OV^{h0} W_OV^{h1} W_U``: ``[d_vocab, d_vocab]``.

    Entry ``(s, t)``: logit effect on ``t`` of token ``s`` moved by ``h0`` and then by ``h1``."""
    a, (l1, k1) = _pair(model, h0, h1)
    A = _ov_embed_times(model, a, model.W_V.detach()[l1, k1])          # [V, d_head]
    B = model.W_O.detach()[l1, k1] @ model.W_U.detach()                   # [d_head, V]
    return FactoredMatrix(A, B)


# ------------------------------------------------------------- virtual weights
_READ_KINDS = ("q", "k", "v")


def virtual_weights(model, write, read) -> FactoredMatrix:
    """Virtual weights ``W_write @ W_read`` between a residual-stream writer and a reader.

    Writers (``W_write [n_in, d_model]``): ``"embed"`` (``W_E``, n_in = d_vocab),
    ``"pos"`` (``W_pos``, n_in = n_ctx; not for ``"none"``), or a head's output
    ``(layer, head)`` (``W_O``, n_in = d_head).
    Readers (``W_read [d_model, n_out]``): ``"unembed"`` (``W_U``), or a head's input
    ``(layer, head, "q"|"k"|"v")`` (``W_Q``/``W_K``/``W_V``, n_out = d_head).

    Returns the FactoredMatrix ``[n_in, n_out]`` (inner dim d_model). A head
    output is read only by heads in later layers (or the unembedding); with
    shortformer positions, ``"pos"`` is read only by ``"q"`` and ``"k"``, and with
    ``"learned"`` positions by every reader.
    """
    cfg = model.cfg
    # writer
    if write == "embed":
        W_w, w_layer, w_name = model.W_E.detach(), -1, "embed"
    elif write == "pos":
        W_w, w_layer, w_name = _W_pos(model).detach(), -1, "pos"
    elif isinstance(write, (tuple, list)) and len(write) == 2:
        l, h = check_head(model, tuple(write))
        W_w, w_layer, w_name = model.W_O.detach()[l, h], l, f"head {head_name(l, h)}"
    else:
        raise ValueError(f'write must be "embed", "pos" or a head (layer, head), got {write!r}')
    # reader
    if read == "unembed":
        W_r, r_layer, kind = model.W_U.detach(), cfg.n_layers, "unembed"
    elif isinstance(read, (tuple, list)) and len(read) == 3 and read[2] in _READ_KINDS:
        l, h = check_head(model, tuple(read[:2]))
        kind = read[2]
        W_r, r_layer = getattr(model, "W_" + kind.upper()).detach()[l, h], l
    else:
        raise ValueError(f'read must be "unembed" or (layer, head, "q"|"k"|"v"), got {read!r}')
    if w_layer >= r_layer:
        raise ValueError(f"{w_name} writes after layer {w_layer} and cannot be read by a head in layer {r_layer}")
    if write == "pos" and cfg.positional == "shortformer" and kind not in ("q", "k"):
        raise ValueError(f'with shortformer positions, W_pos is read only by queries and keys, not by "{kind}"')
    return FactoredMatrix(W_w, W_r)


# ------------------------------------------------------------- path expansion
def path_label(path: Sequence[tuple[int, int]]) -> str:
    """``()`` -> ``"direct"``, ``((0, 1),)`` -> ``"L0H1"``, ``((0, 1), (1, 0))`` -> ``"L0H1->L1H0"``."""
    return "direct" if not path else "->".join(head_name(l, h) for l, h in path)


@torch.no_grad()
def path_expansion(model, tokens: Tensor) -> dict[str, Tensor]:
    """The logits as a sum over paths, attention patterns frozen from a forward pass.

    With ``A^{l,h} [batch, q, k]`` the patterns on ``tokens [batch, pos]`` and
    ``x_0 = W_E[t]`` (``+ W_pos[p]`` for ``positional="learned"``; shortformer
    positions enter only through the frozen patterns), an attention-only model
    without LayerNorm computes exactly

        ``logits = sum over paths  A^{h_k} ... A^{h_1} x_0 W_OV^{h_1} ... W_OV^{h_k} W_U``

    over every chain of heads ``h_1, ..., h_k`` in strictly increasing layers
    (``k = 0``: the direct path ``x_0 W_U``; ``k = 1``: one term per head; ``k = 2``:
    one per virtual head ...). There are ``prod_l (1 + n_heads)`` paths.

    Returns ``{label: [batch, pos, d_vocab]}`` in path order, labels from
    :func:`path_label` (``"direct"``, ``"L0H1"``, ``"L0H1->L1H0"``); the values sum
    to ``model(tokens)`` up to float round-off (computed in float64, returned in
    the model's dtype).
    """
    cfg = model.cfg
    if cfg.layernorm:
        raise ValueError("path_expansion needs a model without LayerNorm: with it the logits are not a sum over paths")
    refuse_mlp(model, "path_expansion")
    tokens = model.check_tokens(tokens)
    dtype = model.W_E.dtype
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    f64 = torch.float64
    x0 = model.W_E.detach().to(f64)[tokens]                               # [b, p, d]
    if cfg.positional == "learned":
        x0 = x0 + model.W_pos.detach().to(f64)[: tokens.shape[1]]
    W_V, W_O = model.W_V.detach().to(f64), model.W_O.detach().to(f64)
    # residual contributions of every path, extended layer by layer
    resid: dict[tuple, Tensor] = {(): x0}
    for layer in range(cfg.n_layers):
        pattern = cache["pattern", layer].to(f64)                          # [b, h, q, k]
        new = {}
        for path, x in resid.items():
            v = torch.einsum("bkd,hde->bkhe", x, W_V[layer])
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            out = torch.einsum("bqhe,hed->bqhd", z, W_O[layer])             # [b, q, h, d]
            for h in range(cfg.n_heads):
                new[path + ((layer, h),)] = out[:, :, h]
        resid.update(new)
    W_U = model.W_U.detach().to(f64)
    order = sorted(resid, key=lambda p: (len(p), p))
    return {path_label(p): (resid[p] @ W_U).to(dtype) for p in order}


def n_paths(model) -> int:
    """``prod_l (1 + n_heads)``: the number of terms of :func:`path_expansion`."""
    return (1 + model.cfg.n_heads) ** model.cfg.n_layers



# ------------------------------------------------------ skip-trigram reading
@torch.no_grad()
def skip_trigram_triples(model, k: int | None = None, layer: int = 0) -> list[tuple[int, int, int, float, int]]:
    """Skip-trigrams ``A ... B -> C`` read off the weights of ``layer``'s heads, best first.

    For each head, with ``qk = W_E W_QK W_E^T / sqrt(d_head)`` (query token B,
    key token A), ``ov = W_E W_OV W_U`` (source A, output C) and the direct
    path ``d = W_E W_U`` (current token B, output C):

    * ``att(B, A) = qk[B, A] - mean_j qk[B, j]``: how much more B attends to A
      than to an average token (a per-query constant does not change softmax);
    * ``boost(A, C) = ov[A, C] - mean_j ov[A, j]``: how much attending to A raises
      C's logit relative to the other tokens;
    * ``C*(A, B) = argmax_C d[B, C] + boost(A, C)``: what the model predicts at B
      when this head attends to A (the 1-layer logits are the direct path plus the
      head terms, see :func:`path_expansion`);
    * ``score(A, B) = att(B, A) * boost(A, C*)``.

    Every (A, B) pair gives one triple ``(A, B, C*)``; triples with BOS, ``A = B``
    or ``C* in {A, B}`` are dropped, a triple found by several heads keeps its
    best score. Exact for the direct path of a 1-layer model; positions (a
    shortformer's ``W_pos``) are ignored. Refused (``ValueError``) for models with
    ``n_layers != 1`` or with LayerNorm (see :func:`refuse_layernorm`). Cost: ``O(n_heads d_vocab^3)`` time,
    ``O(d_vocab^2)`` memory -- toy vocabularies only.

    Returns up to ``k`` (all if None) tuples ``(A, B, C, score, head)`` sorted by score.
    """
    refuse_layernorm(model, "skip_trigram_triples")
    refuse_mlp(model, "skip_trigram_triples")
    if model.cfg.n_layers != 1:
        raise ValueError(
            f"skip_trigram_triples reads a 1-layer model (direct path + one layer of heads); this model has "
            f"{model.cfg.n_layers} layers, whose later heads add terms through composition (virtual heads) "
            "that a reading of one layer's W_E W_QK W_E^T and W_E W_OV W_U leaves out. Use path_expansion "
            "or the composition scores for deeper models."
        )
    layer = check_layer(model, layer)
    scale = model.cfg.d_head ** -0.5
    qk = full_qk(model, layer).AB.double() * scale                      # [h, B, A]
    ov = full_ov(model, layer).AB.double()                               # [h, A, C]
    d = (model.W_E.detach() @ model.W_U.detach()).double()               # [B, C]
    V = model.cfg.d_vocab
    att = qk - qk.mean(-1, keepdim=True)
    boost = ov - ov.mean(-1, keepdim=True)
    tok = torch.arange(V)
    rows = []
    for h in range(model.cfg.n_heads):
        cstar = torch.stack([(d + boost[h, a]).argmax(-1) for a in range(V)])   # [A, B]
        score = att[h].T * boost[h].gather(1, cstar)                          # [A, B]
        A, B = torch.meshgrid(tok, tok, indexing="ij")
        ok = (A != B) & (cstar != A) & (cstar != B) & (A != 0) & (B != 0) & (cstar != 0)
        for a, b, c, s in zip(A[ok].tolist(), B[ok].tolist(), cstar[ok].tolist(), score[ok].tolist()):
            rows.append((a, b, c, s, h))
    rows.sort(key=lambda r: -r[3])
    seen, out = set(), []
    for r in rows:
        if r[:3] not in seen:
            seen.add(r[:3])
            out.append(r)
            if k is not None and len(out) == k:
                break
    return out
