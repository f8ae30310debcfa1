"""Attribution patching: first-order (gradient) estimates of activation and edge patching.

Two conventions exist in the literature; both are here, named by the run the
metric ``M`` is linearised around:

- ``around="clean"`` (Kramar et al.'s AtP, *noising*): the estimate of
  ``M(clean with a := a_corr) - M(clean)`` is ``(a_corr - a_clean) . dM/da |_clean``;
- ``around="corrupted"`` (Nanda's original attribution patching, *denoising*):
  the estimate of ``M(corrupted with a := a_clean) - M(corrupted)`` is
  ``(a_clean - a_corr) . dM/da |_corrupted``.

``.`` sums over batch, positions and the activation's own axes. Nodes are a
head's output (``hook_result``), query, key or value (``hook_q|k|v``), one
number per head: :func:`node_attribution`, compared with
:func:`node_effects` (the exact patching it estimates).

**The AtP* QK fix** (``qk_fix=True``, for ``node="q"`` or ``"k"``): the
softmax of the attention is where a linear estimate fails (a saturated
head's pattern has ``dA/ds = A(1 - A) ~ 0``), so the patched pattern ``A'``
of the head is recomputed exactly from the other run's queries (keys) and the
base run's keys (queries), and only ``M`` as a function of the pattern is
linearised: ``(A' - A) . dM/dA``.

**Edge attribution patching** (:func:`edge_attribution`), always noising:
for edge ``s -> r`` the estimate of the exact edge effect
(:func:`~toylab.discovery.edge_patching.edge_effects`) is
``(out_s^corr - out_s^clean) . dM/dx_r``, with ``x_r`` the receiver's input (a head's
query, key or value input, an MLP's input ``hook_mlp_in``, or the logits' input).
``"eap"`` takes the gradient on the clean run (one backward pass for every
edge); ``"eap-ig"`` averages it over ``steps`` runs whose token embeddings
are ``e_corr + alpha_k (e_clean - e_corr)``, ``alpha_k = k / steps``,
``k = 1..steps`` (integrated gradients from the corrupted to the clean
input, Hanna et al. 2024; ``steps=1`` is EAP).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from toylab.discovery.edge_patching import (_source_outputs, check_model_graph, check_pair, run_with_edges,
                                            sender_outputs)
from toylab.discovery.graph import Graph
from toylab.discovery.metrics import check_metric, check_metric_value
from toylab.causal.interventions import frozen_pattern_hooks
from toylab.causal.patching import run_patched_cells

NODES = ("result", "q", "k", "v")
AROUND = ("clean", "corrupted")


def _check_args(model, clean, corrupted, node, around, metric=None, **flags):
    check_metric(metric)
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    if not isinstance(node, str) or node not in NODES:
        raise ValueError(f"node must be one of {NODES}, got {node!r}")
    if not isinstance(around, str) or around not in AROUND:
        raise ValueError(f"around must be 'clean' or 'corrupted', got {around!r}")
    clean, corrupted = check_pair(model, clean, corrupted)
    if model.cfg.n_layers < 1:
        raise ValueError("node attribution needs a model with attention heads; this one has no layers")
    if around == "corrupted" and isinstance(corrupted, str):
        raise ValueError(f"linearising around the corrupted run needs corrupted tokens, not {corrupted!r}")
    return (clean, corrupted) if around == "clean" else (corrupted, clean)


def _acts(model, tokens, names):
    """Activations of ``names`` on ``tokens`` (``"zero"``: zeros shaped like the activations on a dummy run)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return {n: cache[n] for n in names}


def _ablated(acts: dict, kind: str) -> dict:
    """``"zero"``: zeros like each activation; ``"mean"``: its mean over the batch at each position."""
    if kind == "mean":
        return {n: a.mean(0, keepdim=True).expand_as(a) for n, a in acts.items()}
    return {n: torch.zeros_like(a) for n, a in acts.items()}


def node_attribution(model, clean, corrupted, metric: Callable, node: str = "result", around: str = "clean",
                     qk_fix: bool = False, freeze_patterns: bool = False) -> torch.Tensor:
    """AtP estimate for every head's ``node`` -> ``[n_layers, n_heads]`` (see the module doc for the formulas).

    ``clean, corrupted [batch, pos]`` (``corrupted`` may be ``"zero"`` or ``"mean"`` with
    ``around="clean"``: zero or mean ablation, the mean over the clean batch at each position); ``metric``: ``logits [batch, pos, d_vocab] -> scalar``, made for this batch.
    ``freeze_patterns=True`` holds every attention pattern at its value on the base run (then the
    model is linear in the head outputs, and for a metric linear in the logits the estimate is exact).
    """
    base, other = _check_args(model, clean, corrupted, node, around, metric, qk_fix=qk_fix,
                              freeze_patterns=freeze_patterns)
    if qk_fix and node not in ("q", "k"):
        raise ValueError(f"the QK fix applies to query and key nodes, not {node!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_{node}" for l in range(L)]
    need = names + ([f"blocks.{l}.attn.hook_{s}" for l in range(L) for s in ("q", "k")] if qk_fix else [])
    base_acts = _acts(model, base, sorted(set(need)))
    if isinstance(other, str):
        other_acts = _ablated(base_acts, other)
    else:
        other_acts = _acts(model, other, sorted(set(need)))
    grads_of = [f"blocks.{l}.attn.hook_pattern" for l in range(L)] if qk_fix else names
    deltas: dict[str, torch.Tensor] = {}

    def add_delta(act, hook):
        d = deltas.setdefault(hook.name, torch.zeros_like(act, requires_grad=True))
        return act + d

    hooks = (frozen_pattern_hooks(model, base) if freeze_patterns else []) + [(n, add_delta) for n in grads_of]
    with torch.enable_grad():
        value = check_metric_value(metric(model.run_with_hooks(base, fwd_hooks=hooks)))
        grads = torch.autograd.grad(value, [deltas[n] for n in grads_of], allow_unused=True)
    grads = {n: (torch.zeros_like(deltas[n]) if g is None else g) for n, g in zip(grads_of, grads)}
    out = torch.zeros(L, H)
    for l in range(L):
        if not qk_fix:
            n = names[l]
            out[l] = ((other_acts[n] - base_acts[n]) * grads[n]).sum((0, 1, 3))  # [b, pos, head, d] -> [head]
            continue
        q, k = base_acts[f"blocks.{l}.attn.hook_q"], base_acts[f"blocks.{l}.attn.hook_k"]
        if node == "q":
            q = other_acts[f"blocks.{l}.attn.hook_q"]
        else:
            k = other_acts[f"blocks.{l}.attn.hook_k"]
        new = _pattern(q, k)
        old = _pattern(base_acts[f"blocks.{l}.attn.hook_q"], base_acts[f"blocks.{l}.attn.hook_k"])
        out[l] = ((new - old) * grads[f"blocks.{l}.attn.hook_pattern"]).sum((0, 2, 3))  # [b, head, q, k] -> [head]
    return out


def _pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``softmax*(q k^T / sqrt(d_head))``: ``q, k [b, pos, head, d_head]`` -> ``[b, head, q_pos, k_pos]``."""
    n = q.shape[1]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


@torch.no_grad()
def node_effects(model, clean, corrupted, metric: Callable, node: str = "result", around: str = "clean",
                 freeze_patterns: bool = False) -> torch.Tensor:
    """The exact patching :func:`node_attribution` estimates -> ``[n_layers, n_heads]``.

    ``around="clean"``: ``M(clean with head's node := corrupted) - M(clean)``; ``"corrupted"``:
    ``M(corrupted with node := clean) - M(corrupted)``. One head per forward pass (through
    :func:`toylab.causal.patching.run_patched_cells`); ``freeze_patterns`` as in :func:`node_attribution`.
    """
    base, other = _check_args(model, clean, corrupted, node, around, metric, freeze_patterns=freeze_patterns)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_{node}" for l in range(L)]
    if isinstance(other, str):
        source = _ablated(_acts(model, base, names), other)
    else:
        source = _acts(model, other, names)
    hooks = frozen_pattern_hooks(model, base) if freeze_patterns else []
    check_metric_value(metric(model(base)))
    with model.hooks(hooks):
        m_base = float(metric(model(base)))
        vals = run_patched_cells(model, base, source, [(n, h, None) for n in names for h in range(H)], metric,
                                 cells_per_pass=1 if freeze_patterns else None)
    n_bad = int((~torch.isfinite(vals)).sum())
    if n_bad:
        raise ValueError(f"the metric returned NaN or inf on {n_bad} of the {L * H} patched runs: a metric must be "
                         "a finite number (are the patched logits finite, does the metric divide by zero?)")
    return vals.reshape(L, H) - m_base


EDGE_METHODS = ("eap", "eap-ig")


def edge_attribution(model, graph: Graph, clean, corrupted, metric: Callable, method: str = "eap",
                     steps: int | None = None) -> torch.Tensor:
    """Gradient estimate of every edge's noising effect -> ``[n_edges]`` (module doc: EAP, EAP-IG).

    ``clean, corrupted [batch, pos]`` (``corrupted`` may be ``"zero"`` or ``"mean"``); ``metric`` as for
    :func:`~toylab.discovery.edge_patching.edge_effects`, whose output this approximates.
    The ``steps`` interpolated runs of EAP-IG (default 5) are copies of the batch in one forward pass;
    EAP takes one gradient, so ``steps`` other than 1 is refused with ``method="eap"``.
    """
    if not isinstance(method, str) or method not in EDGE_METHODS:
        raise ValueError(f"method must be one of {EDGE_METHODS}, got {method!r}")
    check_model_graph(model, graph)
    check_metric(metric)
    if method == "eap":
        if steps not in (None, 1) or isinstance(steps, bool):
            raise ValueError(f"steps={steps!r} applies to method='eap-ig' (integrated gradients); EAP takes one "
                             "gradient, on the clean run: pass method='eap-ig' or leave steps out")
        steps = 1
    elif steps is None:
        steps = 5
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    clean, corrupted = check_pair(model, clean, corrupted)
    clean_out = sender_outputs(model, graph, clean)
    src = _source_outputs(model, graph, clean, corrupted)
    alphas = torch.arange(1, steps + 1, dtype=clean_out["embed"].dtype) / steps
    e_clean, e_corr = clean_out["embed"], src["embed"]
    embeds = (e_corr[None] + alphas[:, None, None, None] * (e_clean - e_corr)[None]).flatten(0, 1)
    deltas: dict = {}
    with torch.enable_grad():
        vals = run_with_edges(model, graph, clean, corrupted, torch.zeros(steps, len(graph)), metric,
                              input_deltas=deltas, embed_override=embeds if steps > 1 else None,
                              source_outputs=src)
        keys = list(deltas)
        grads = torch.autograd.grad(vals.sum() / steps, [deltas[k] for k in keys], allow_unused=True)
    grads = {k: torch.zeros_like(deltas[k]) if g is None else g for k, g in zip(keys, grads)}
    out = torch.zeros(len(graph))
    for i, e in enumerate(graph.edges):
        diff = src[e.sender] - clean_out[e.sender]  # [b, pos, d]
        if e.receiver == "logits":
            g = grads["logits"].sum(0)
        elif e.receiver.startswith("MLP"):  # an MLP's one input, "MLP{l}"
            g = grads[(int(e.receiver[3:]), "mlp")].sum(0)
        else:
            head, slot = e.receiver.split(".")
            l, h = (int(x) for x in head[1:].split("H"))
            g = grads[(l, slot)][:, :, :, h].sum(0)
        out[i] = (diff * g).sum()
    return out
