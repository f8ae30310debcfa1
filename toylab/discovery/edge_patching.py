"""Exact edge patching: run the model with chosen edges of its :class:`~toylab.discovery.graph.Graph` patched.

A run has a *base* input (the tokens the model reads) and a *source* (the
corrupted tokens, ``"zero"`` for zero ablation, or ``"mean"`` for mean ablation: each sender's
output averaged over the base batch at each position). Patching edge
``e = s -> r`` by a weight ``w_e`` in ``[0, 1]`` changes only what slot ``r``
reads from sender ``s``::

    x_r = sum_{s -> r} ( out_s + w_e (src_s - out_s) )        (+ W_pos where positions enter)

where ``out_s`` is the sender's output *in this run* (itself changed if
edges upstream of it were patched) and ``src_s`` its output on the source
(0 for zero ablation, ``mean_b out_s^base[b, p]`` for mean ablation). With one edge patched and ``w_e = 1`` this is
``x_r = x_r^clean - out_s^clean + out_s^corrupted``. Weights between 0 and 1
interpolate (used by the gradient methods); ``w = 1`` everywhere gives the
source's logits. With LayerNorm, ``x_r`` is normalised afresh by the receiver's
LayerNorm (``ln1`` before a head's ``W_Q, W_K, W_V``; ``ln2`` and ``ln_final``
sit after ``hook_mlp_in`` and the last ``hook_resid_post``, so the model applies them).

The run is the model's own forward pass with hooks: ``hook_embed``,
``hook_pos_embed``, ``blocks.{l}.attn.hook_result`` and ``blocks.{l}.hook_mlp_out`` record the senders,
the per-head inputs ``blocks.{l}.attn.hook_q_input|hook_k_input|hook_v_input``
are replaced by ``x_r`` (or, for a model without them, ``hook_q|hook_k|hook_v``
by ``x_r W_Q^h``, ``W_K``, ``W_V``), an MLP's input ``blocks.{l}.hook_mlp_in`` (a copy of
``hook_resid_mid`` that only the MLP reads) by ``x_MLP{l}``, and the last ``hook_resid_post`` by ``x_logits``. ``G``
weight vectors run in one forward pass on ``G`` copies of the base batch.
Hooks are removed when the call returns, also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toylab.discovery.graph import SLOTS, Circuit, Graph, check_circuit, check_graph, head_name, mlp_name
from toylab.discovery.metrics import check_metric, check_metric_value

DIRECTIONS = ("noise", "denoise")
#: the sources that are not tokens: ``"zero"`` (every sender's output replaced by 0) and ``"mean"`` (by its
#: mean over the base batch at the same position, ``mean_b out_s[b, p]``: mean ablation)
ABLATIONS = ("zero", "mean")


def check_model_graph(model, graph) -> None:
    """``TypeError``/``ValueError`` unless ``graph`` is a :class:`Graph` built from ``model``."""
    if not callable(getattr(model, "check_tokens", None)):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    check_graph(graph).check_model(model)


def check_pair(model, base: torch.Tensor, source) -> tuple[torch.Tensor, torch.Tensor | str]:
    """Validated ``(base [batch, pos], source)``; ``source`` is tokens of the same shape, ``"zero"`` or
    ``"mean"`` (:data:`ABLATIONS`)."""
    if not callable(getattr(model, "check_tokens", None)):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    base = model.check_tokens(base)
    if isinstance(source, str):
        if source not in ABLATIONS:
            raise ValueError(f"source must be corrupted tokens [batch, pos], 'mean' or 'zero', got {source!r}")
        return base, source
    source = model.check_tokens(source)
    if source.shape != base.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape [batch, pos], got "
                         f"{list(base.shape)} and {list(source.shape)}")
    return base, source


@torch.no_grad()
def sender_outputs(model, graph: Graph, tokens) -> dict[str, torch.Tensor]:
    """Every sender's output on ``tokens [batch, pos]``: ``{node name: [batch, pos, d_model]}``.

    ``embed = W_E[x]``, ``pos = W_pos[p]`` (broadcast over the batch), ``L{l}H{h} = z^h W_O^h``,
    ``MLP{l}`` = the MLP's output (``hook_mlp_out``, in a model with MLPs).
    """
    check_model_graph(model, graph)
    tokens = model.check_tokens(tokens)
    names = ["hook_embed"] + (["hook_pos_embed"] if graph.positional != "none" else []) + [
        f"blocks.{l}.attn.hook_result" for l in range(graph.cfg.n_layers)] + (
        [f"blocks.{l}.hook_mlp_out" for l in range(graph.cfg.n_layers)] if graph.has_mlps else [])
    _, cache = model.run_with_cache(tokens, names_filter=names)
    out = {"embed": cache["hook_embed"]}
    if graph.positional != "none":
        out["pos"] = cache["hook_pos_embed"]
    for l in range(graph.cfg.n_layers):
        for h in range(graph.cfg.n_heads):
            out[head_name(l, h)] = cache[f"blocks.{l}.attn.hook_result"][:, :, h]
        if graph.has_mlps:
            out[mlp_name(l)] = cache[f"blocks.{l}.hook_mlp_out"]
    return out


def _source_outputs(model, graph: Graph, base: torch.Tensor, source) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return source
    if isinstance(source, str) and source == "mean":  # mean ablation: the base batch's mean per position
        B = base.shape[0]
        return {n: out.mean(0, keepdim=True).expand(B, -1, -1)
                for n, out in sender_outputs(model, graph, base).items()}
    if isinstance(source, str):  # zero ablation
        B, P = base.shape
        z = torch.zeros(B, P, graph.cfg.d_model, dtype=model.W_E.dtype)
        return {n.name: z for n in graph.nodes}
    return sender_outputs(model, graph, source)


def as_weights(graph: Graph, patched) -> torch.Tensor:
    """Patch weights ``[G, n_edges]`` (float) from edge names, a :class:`Circuit` (its edges are
    patched), a bool/float tensor ``[n_edges]`` or ``[G, n_edges]``."""
    check_graph(graph)
    if isinstance(patched, Circuit):
        patched = check_circuit(patched, graph, "patched").edges
    if isinstance(patched, str):
        patched = [patched]
    if not isinstance(patched, torch.Tensor):
        patched = graph.mask(patched)
    if patched.dtype.is_complex:
        raise TypeError(f"patch weights must be real numbers in [0, 1], got dtype {patched.dtype}")
    w = patched if patched.dtype.is_floating_point else patched.float()  # bool or 0/1 integers
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != len(graph) or w.shape[0] == 0:
        raise ValueError(f"patch weights must have shape [{len(graph)}] or [G, {len(graph)}] (one per edge), "
                         f"got {list(patched.shape)}")
    n_bad = int((~torch.isfinite(w.detach())).sum())
    if n_bad:
        raise ValueError(f"patch weights hold {n_bad} NaN or inf value(s); a weight is a number in [0, 1] "
                         "(0 = the edge reads the base run, 1 = the source)")
    return w


def _slot_tables(graph: Graph):
    """For each (layer, slot): sender names ``[S]`` and the edge index matrix ``[n_heads, S]``; for
    ``(layer, "mlp")`` and ``"logits"`` the names and the edge indices ``[S]``."""
    tables = {}
    H = graph.cfg.n_heads
    for l in range(graph.cfg.n_layers):
        for slot in SLOTS:
            senders = [graph.edges[i].sender for i in graph.incoming(f"{head_name(l, 0)}.{slot}")]
            idx = torch.tensor([[graph.index[f"{s}->{head_name(l, h)}.{slot}"] for s in senders] for h in range(H)])
            tables[l, slot] = (senders, idx)
        if graph.has_mlps:
            incoming = graph.incoming(mlp_name(l))
            tables[l, "mlp"] = ([graph.edges[i].sender for i in incoming], torch.tensor(incoming))
    senders = [graph.edges[i].sender for i in graph.incoming("logits")]
    tables["logits"] = (senders, torch.tensor(graph.incoming("logits")))
    return tables


def run_with_edges(model, graph: Graph, base, source, patched, metric: Callable | None = None, *,
                   input_deltas: dict | None = None, embed_override: torch.Tensor | None = None,
                   source_outputs: dict | None = None, project_slots: bool = False):
    """Run ``base [batch, pos]`` with edges patched towards ``source`` (tokens of the same shape, ``"zero"`` or ``"mean"``).

    ``patched``: edge names / a Circuit whose edges are patched / weights ``[n_edges]`` or ``[G, n_edges]``
    (see the module doc for the formula; ``G`` weight rows run as ``G`` copies of the batch in one pass).
    Returns logits ``[G, batch, pos, d_vocab]``, or with ``metric`` (``logits [batch, pos, d_vocab] ->
    scalar``) the values ``[G]``. ``input_deltas`` (a dict, filled in) receives zero tensors added to
    every slot's input, ``(l, slot) -> [G, batch, pos, n_heads, d_model]``, ``(l, "mlp")`` (an MLP's
    input) and ``"logits" -> [G, batch, pos, d_model]``, with ``requires_grad`` (their gradients are
    ``dM/dx_r``, ``x_r`` before any LayerNorm); ``embed_override
    [G * batch, pos, d_model]`` replaces the token embedding. Gradients flow when grad mode is on.
    The slot inputs replace the model's per-head input hooks ``hook_q_input|hook_k_input|hook_v_input``
    (``[batch, pos, n_heads, d_model]``) where the model has them; ``project_slots=True`` (or a model
    without them) replaces ``hook_q|hook_k|hook_v`` by ``x_r W`` instead (same numbers).
    """
    check_model_graph(model, graph)
    if metric is not None:
        check_metric(metric)
    base, source = check_pair(model, base, source)
    w = as_weights(graph, patched).to(model.W_E.dtype)
    if embed_override is not None:
        want = (w.shape[0] * base.shape[0], base.shape[1], graph.cfg.d_model)
        if not isinstance(embed_override, torch.Tensor) or tuple(embed_override.shape) != want:
            got = list(embed_override.shape) if isinstance(embed_override, torch.Tensor) else type(embed_override).__name__
            raise ValueError(f"embed_override must be a tensor [G * batch, pos, d_model] = {list(want)}, got {got}")
    src = source_outputs if source_outputs is not None else _source_outputs(model, graph, base, source)
    G, (B, P) = w.shape[0], base.shape
    H, L = graph.cfg.n_heads, graph.cfg.n_layers
    tables = _slot_tables(graph)
    cur: dict[str, torch.Tensor] = {}

    def slot_input(senders, wmat):
        """``sum_s out_s - sum_s w (out_s - src_s)``; ``wmat [G, ..., S]`` -> ``[G, B, P, ..., d]``.

        Senders whose weights are all 0 contribute no difference term (skipped unless ``w`` needs a gradient).
        """
        total = sum(cur[s] for s in senders).reshape(G, B, P, -1)
        active = list(range(len(senders))) if wmat.requires_grad else [
            j for j in range(len(senders)) if bool(wmat[..., j].any())]
        heads = wmat.ndim == 3
        if not active:
            return total[:, :, :, None].expand(-1, -1, -1, wmat.shape[1], -1) if heads else total
        diff = torch.stack([cur[senders[j]].reshape(G, B, P, -1) - src[senders[j]] for j in active])  # [S', G, B, P, d]
        wa = wmat[..., active]
        if heads:
            return total[:, :, :, None] - torch.einsum("sgbpd,ghs->gbphd", diff, wa)
        return total - torch.einsum("sgbpd,gs->gbpd", diff, wa)

    def capture(name):
        def fn(act, hook):
            if name == "embed" and embed_override is not None:
                act = embed_override
            cur[name] = act
            return act if name == "embed" and embed_override is not None else None
        return fn

    def capture_heads(l):
        def fn(act, hook):
            for h in range(H):
                cur[head_name(l, h)] = act[:, :, h]
        return fn

    def replace_slot(l, slot, project: bool):
        senders, idx = tables[l, slot]
        attn = model.blocks[l].attn
        W = getattr(attn, "W_" + slot.upper())
        b = attn.biases()[SLOTS.index(slot)]
        ln = model.blocks[l].ln1 if graph.cfg.layernorm else None

        def fn(act, hook):
            x = slot_input(senders, w[:, idx])  # [G, B, P, H, d]
            if input_deltas is not None:
                d = input_deltas.setdefault((l, slot), torch.zeros_like(x, requires_grad=True))
                x = x + d
            if ln is not None:  # the receiver's LayerNorm, on its patched input
                x = ln.norm(x)
            if project:
                x = torch.einsum("gbphd,hde->gbphe", x, W) + (0 if b is None else b)
            return x.reshape(act.shape)
        return fn

    def replace_stream(key):
        """The input of an MLP (``key = (l, "mlp")``) or of the logits (``"logits"``): ``[G, B, P, d]``."""
        def fn(act, hook):
            senders, idx = tables[key]
            x = slot_input(senders, w[:, idx])  # [G, B, P, d]
            if input_deltas is not None:
                d = input_deltas.setdefault(key, torch.zeros_like(x, requires_grad=True))
                x = x + d
            return x.reshape(act.shape)
        return fn

    def capture_mlp(l):
        def fn(act, hook):
            cur[mlp_name(l)] = act
        return fn

    hooks = [("hook_embed", capture("embed"))]
    if graph.positional != "none":
        hooks.append(("hook_pos_embed", capture("pos")))
    for l in range(L):
        for slot in SLOTS:
            per_head_input = f"blocks.{l}.attn.hook_{slot}_input"  # the engine's per-head input hook, if it has one
            if per_head_input in model.hook_dict and not project_slots:
                hooks.append((per_head_input, replace_slot(l, slot, False)))
            else:
                hooks.append((f"blocks.{l}.attn.hook_{slot}", replace_slot(l, slot, True)))
        hooks.append((f"blocks.{l}.attn.hook_result", capture_heads(l)))
        if graph.has_mlps:
            hooks += [(f"blocks.{l}.hook_mlp_in", replace_stream((l, "mlp"))),
                      (f"blocks.{l}.hook_mlp_out", capture_mlp(l))]
    hooks.append((f"blocks.{L - 1}.hook_resid_post", replace_stream("logits")))
    logits = model.run_with_hooks(base.repeat(G, 1), fwd_hooks=hooks).reshape(G, B, P, -1)
    if metric is None:
        return logits
    return torch.stack([check_metric_value(metric(logits[g])) for g in range(G)])


def run_circuit(model, graph: Graph, circuit: Circuit, clean, corrupted, metric: Callable) -> float:
    """``metric`` of ``clean [batch, pos]`` with every edge *outside* ``circuit`` patched to ``corrupted``
    (tokens, ``"zero"`` or ``"mean"``): how well the circuit alone reproduces the behaviour."""
    check_model_graph(model, graph)
    check_circuit(circuit, graph)
    check_metric(metric)
    with torch.no_grad():
        return float(run_with_edges(model, graph, clean, corrupted, ~circuit.mask, metric)[0])


@torch.no_grad()
def edge_effects(model, graph: Graph, clean, corrupted, metric: Callable, direction: str = "noise",
                 edges_per_pass: int | None = None) -> torch.Tensor:
    """The exact effect of patching each edge alone: ``[n_edges]`` with ``M(patched) - M(base)``.

    ``direction="noise"``: base = ``clean``, the edge reads the sender's output on ``corrupted``
    (tokens, ``"zero"`` or ``"mean"``); ``"denoise"``: base = ``corrupted`` tokens, the edge reads the clean output.
    ``metric``: ``logits [batch, pos, d_vocab] -> scalar`` made for this batch. ``edges_per_pass``
    (default: about 128 sequences per forward pass) edges run as copies of the batch in one pass.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if edges_per_pass is not None and (isinstance(edges_per_pass, bool) or not isinstance(edges_per_pass, int)
                                       or edges_per_pass < 1):
        raise ValueError(f"edges_per_pass must be a positive integer (or None for the default), got {edges_per_pass!r}")
    check_model_graph(model, graph)
    check_metric(metric)
    clean, corrupted = check_pair(model, clean, corrupted)
    if direction == "denoise":
        if isinstance(corrupted, str):
            raise ValueError(f"denoising needs corrupted tokens to start from, not {corrupted!r}")
        clean, corrupted = corrupted, clean
    n, B = len(graph), clean.shape[0]
    G = edges_per_pass or max(1, 128 // B)
    src = _source_outputs(model, graph, clean, corrupted)
    m_base = check_metric_value(metric(model(clean)))
    out = torch.empty(n)
    eye = torch.eye(n)
    for start in range(0, n, G):
        rows = eye[start:start + G]
        out[start:start + len(rows)] = run_with_edges(model, graph, clean, corrupted, rows, metric,
                                                      source_outputs=src) - m_base
    return out
