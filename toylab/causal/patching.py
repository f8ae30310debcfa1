"""Activation patching and path patching.

Two runs of the same length: *clean* (the behaviour we want to explain) and
*corrupted* (the same task with the crucial information changed). Patching
copies one activation from one run into the other:

- ``direction="denoise"``: run the corrupted input, paste in the clean
  activation. A large recovery means the component is *sufficient* (given the
  rest of the corrupted run) to restore the behaviour.
- ``direction="noise"``: run the clean input, paste in the corrupted
  activation. A large drop means the component is *necessary*.

Scores are a metric ``logits -> scalar`` (see :func:`toylab.causal.interventions.make_metric`),
by default normalised as ``(m_patched - m_corrupted) / (m_clean - m_corrupted)``:
0 means "like the corrupted run", 1 "like the clean run", in both directions.

A patch is a *cell*: a hook name, optionally one head (or, on an MLP's
``hook_pre``/``hook_post [batch, pos, d_mlp]``, one neuron) and one position.
Whole MLP layers are patched on ``hook_mlp_out`` (``"mlp_out"``).
Sweeps batch the cells: the base input is repeated ``G`` times along the
batch and one forward pass patches cell ``g`` into copy ``g`` (a boolean mask
picks, per copy, what comes from the source run), so a heads x positions
sweep costs a few forward passes instead of one per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from toylab.hooks import act_name, resolve_index
from toylab.causal.interventions import check_head, make_metric, normalised_effect

DIRECTIONS = ("denoise", "noise")
_HEAD_AXIS_LAST = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")  # [b, pos, head, d]
_HEAD_AXIS_FIRST = ("hook_attn_scores", "hook_pattern")  # [b, head, q, k]
_NEURON_AXIS = ("hook_pre", "hook_post")  # mlp.hook_pre / mlp.hook_post: [b, pos, d_mlp]


def _resolve_hook(model, hook_name: str, layer: int | None) -> str:
    """Full hook name from a full name, or a short one (``"z"``) and a layer; ``KeyError`` if unknown."""
    if not isinstance(hook_name, str):
        raise TypeError(f"hook_name must be a string, got {type(hook_name).__name__}")
    if layer is not None:
        layer = resolve_index(layer, model.cfg.n_layers, "layer")
    name = act_name(hook_name, layer)
    if name not in model.hook_dict:
        why = (": this model has no MLPs (d_mlp=0)" if not model.cfg.d_mlp and
               name.rsplit(".", 1)[-1] in ("hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_pre", "hook_post")
               else "")
        raise KeyError(f"no hook point named {name!r}{why}; valid names are:\n  " + "\n  ".join(model.hook_names))
    return name


def _axes(name: str) -> tuple[int, int | None]:
    """(position axis, head axis or None) of an activation, batch axis 0."""
    last = name.rsplit(".", 1)[-1]
    if last in _HEAD_AXIS_LAST or last in _NEURON_AXIS:
        return 1, 2
    if last in _HEAD_AXIS_FIRST:
        return 2, 1
    return 1, None


def _check_pair(model, clean: torch.Tensor, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    clean, corrupted = model.check_tokens(clean), model.check_tokens(corrupted)
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape [batch, pos], got "
                         f"{list(clean.shape)} and {list(corrupted.shape)}")
    return clean, corrupted


def metric_value(metric, logits: torch.Tensor) -> float:
    """``float(metric(logits))``, with a sentence when the metric does not return one number."""
    value = metric(logits)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {getattr(metric, '__name__', metric)!r} returned a tensor of shape {list(value.shape)}; "
                f"expected a scalar (one number for the whole batch of {logits.shape[0]} sequences): "
                "average it, e.g. `.mean()`"
            )
        value = value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {getattr(metric, '__name__', metric)!r} returned {type(value).__name__}; "
                        "expected a number or a one-element tensor") from None


def _get_metric(metric, clean: torch.Tensor, corrupted: torch.Tensor):
    if isinstance(metric, str):
        return make_metric(metric, clean, incorrect_tokens=corrupted if metric == "logit_diff" else None)
    if not callable(metric):
        raise TypeError(f"metric must be a callable logits -> scalar or a name, got {type(metric).__name__}")
    return metric


def _is_neuron_hook(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _NEURON_AXIS


def _check_cell(model, name: str, head, position, n_pos: int):
    pos_axis, head_axis = _axes(name)
    if head is not None:
        if head_axis is None:
            raise ValueError(f"{name} has no head dimension; pass head=None")
        neuron = _is_neuron_hook(name)
        head = resolve_index(head, model.cfg.d_mlp if neuron else model.cfg.n_heads, "neuron" if neuron else "head")
    if position is not None:
        position = resolve_index(position, n_pos, "position")
    return (name, head, position)


@torch.no_grad()
def run_patched_cells(model, base: torch.Tensor, source_cache, cells: Sequence[tuple], metric: Callable,
                      cells_per_pass: int | None = None) -> torch.Tensor:
    """``metric`` of one patched run per cell, ``G`` cells per forward pass -> ``[len(cells)]``.

    ``base [batch, pos]`` is the input run; ``source_cache`` holds the activation
    of each cell's hook on the other input; a cell ``(hook_name, head, position)``
    (``None`` = all heads / positions) replaces that slice by the source's.
    ``cells_per_pass`` defaults to about 128 sequences per pass (measured on a 2-core CPU:
    passes of ~4096 sequences were 1.75x slower, cache-unfriendly); 1 is the naive loop.
    """
    B = base.shape[0]
    if cells_per_pass is not None and (isinstance(cells_per_pass, bool) or not isinstance(cells_per_pass, int)
                                       or cells_per_pass < 1):
        raise ValueError(f"cells_per_pass must be a positive integer (cells patched per forward pass) or None, "
                         f"got {cells_per_pass!r}")
    G = cells_per_pass or max(1, 128 // B)
    out = torch.empty(len(cells))
    for start in range(0, len(cells), G):
        group = cells[start:start + G]
        n = len(group)
        masks: dict[str, torch.Tensor] = {}
        for g, (name, head, pos) in enumerate(group):
            shape = source_cache[name].shape[1:]
            m = masks.setdefault(name, torch.zeros(n, *shape, dtype=torch.bool))
            pos_axis, head_axis = _axes(name)
            idx = [g] + [slice(None)] * len(shape)
            if pos is not None:
                idx[pos_axis] = pos
            if head is not None:
                idx[head_axis] = head
            m[tuple(idx)] = True

        def make(name, mask):
            src = source_cache[name][None]  # [1, B, ...]

            def fn(act, hook):
                a = act.reshape(n, B, *act.shape[1:])
                return torch.where(mask[:, None], src, a).reshape(act.shape)
            return fn

        hooks = [(name, make(name, m)) for name, m in masks.items()]
        logits = model.run_with_hooks(base.repeat(n, 1), fwd_hooks=hooks)
        for g in range(n):
            out[start + g] = metric_value(metric, logits[g * B:(g + 1) * B])
    return out


@torch.no_grad()
def _prepare(model, clean, corrupted, metric, direction, names):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    clean, corrupted = _check_pair(model, clean, corrupted)
    metric = _get_metric(metric, clean, corrupted)
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names)
    corr_logits, corr_cache = model.run_with_cache(corrupted, names_filter=names)
    m_clean, m_corr = metric_value(metric, clean_logits), metric_value(metric, corr_logits)
    base, source = (corrupted, clean_cache) if direction == "denoise" else (clean, corr_cache)
    return base, source, metric, m_clean, m_corr


def patch(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, hook_name: str, metric,
          layer: int | None = None, head: int | None = None, position: int | None = None,
          direction: str = "denoise", normalise: bool = True, neuron: int | None = None) -> float:
    """Patch one activation between the clean and corrupted runs and score the result.

    ``clean_tokens, corrupted_tokens [batch, pos]`` (same shape); ``hook_name``
    a full hook name, or a short one (``"z"``, ``"resid_pre"``, ...) with
    ``layer``; ``head`` / ``position`` restrict the patch to one head (hooks
    with a head axis: q, k, v, z, result, attn_scores, pattern) and one
    position (the query position for patterns); None = all. ``metric`` is a
    callable ``logits -> scalar`` or a name for :func:`make_metric` scored
    on the clean next tokens (``"logit_diff"`` against the corrupted ones).
    ``neuron`` restricts a patch of ``"pre"``/``"post"`` (an MLP's
    ``hook_pre``/``hook_post``) to one neuron; ``"mlp_out"`` patches a whole MLP.
    Returns the normalised effect (0 = corrupted, 1 = clean) or the raw metric.
    """
    clean_tokens, corrupted_tokens = _check_pair(model, clean_tokens, corrupted_tokens)
    name = _resolve_hook(model, hook_name, layer)
    if neuron is not None:
        if not _is_neuron_hook(name):
            raise ValueError(f"neuron= applies to an MLP's hook_pre or hook_post ('pre', 'post'), not {name}")
        if head is not None:
            raise ValueError("pass head= or neuron=, not both")
        head = neuron
    cell = _check_cell(model, name, head, position, clean_tokens.shape[1])
    base, source, metric, m_clean, m_corr = _prepare(model, clean_tokens, corrupted_tokens, metric, direction, [name])
    m = float(run_patched_cells(model, base, source, [cell], metric)[0])
    return normalised_effect(m, m_clean, m_corr) if normalise else m


def patch_sweep(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric, hook: str = "z",
                per_head: bool = True, per_position: bool = True, direction: str = "denoise",
                normalise: bool = True, cells_per_pass: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Patch every layer (x head) (x position) of a hook and score each cell.

    ``hook`` is a per-layer short name (``"z"``, ``"q"``, ``"pattern"``,
    ``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``, ``"post"``, ...). Returns ``(values, labels)``:
    ``values [n_layers * n_heads, n_pos]`` with labels ``"L{l}H{h}"`` when
    ``per_head`` (on ``"pre"``/``"post"``: one row per neuron,
    ``[n_layers * d_mlp, n_pos]``, labels ``"L{l}N{n}"``), else ``[n_layers, n_pos]`` with labels ``"L{l}"``; the last
    axis is dropped when ``per_position=False``. ``cells_per_pass=1`` runs
    the naive one-forward-per-cell loop (same numbers).
    """
    clean_tokens, corrupted_tokens = _check_pair(model, clean_tokens, corrupted_tokens)
    if cells_per_pass is not None and (isinstance(cells_per_pass, bool) or not isinstance(cells_per_pass, int)
                                       or cells_per_pass < 1):
        raise ValueError(f"cells_per_pass must be a positive integer (cells patched per forward pass) or None, "
                         f"got {cells_per_pass!r}")
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, clean_tokens.shape[1]
    names = [_resolve_hook(model, hook, l) for l in range(L)]
    if per_head and names and _axes(names[0])[1] is None:
        raise ValueError(f"hook {hook!r} has no head axis; use per_head=False")
    unit = "N" if names and _is_neuron_hook(names[0]) else "H"
    H = model.cfg.d_mlp if unit == "N" else H
    heads = range(H) if per_head else [None]
    positions = range(P) if per_position else [None]
    cells = [(n, h, p) for n in names for h in heads for p in positions]
    base, source, metric, m_clean, m_corr = _prepare(model, clean_tokens, corrupted_tokens, metric, direction, names)
    vals = run_patched_cells(model, base, source, cells, metric, cells_per_pass)
    if normalise:
        vals = normalised_effect(vals, m_clean, m_corr)
    labels = [f"L{l}{unit}{h}" for l in range(L) for h in range(H)] if per_head else [f"L{l}" for l in range(L)]
    return vals.reshape(len(labels), P) if per_position else vals, labels


# --------------------------------------------------------------------------- path patching

@torch.no_grad()
def path_patch(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, sender: tuple[int, int],
               receiver, receiver_input: str, metric, normalise: bool = True) -> float:
    """Patch the path sender head -> receiver head(s)' query, key or value input.

    Direction: *noising*. The model runs on ``clean_tokens``; only the
    receiver's ``receiver_input`` (``"q" | "k" | "v"``) is recomputed from the
    clean residual stream with the sender's clean output swapped for its
    output on ``corrupted_tokens``::

        x' = resid_pre[l_recv]_clean - result_sender_clean + result_sender_corrupted
        q' = (x' + W_pos) W_Q^{recv}      (shortformer: W_pos on q and k inputs only)

    (LayerNorm models: ``x'`` is normalised afresh, with ``ln1``'s weights; biases
    ``b_Q`` etc. are added.) Only the *direct* path is patched: in a model with MLPs
    the sender's effect through an MLP between the two heads stays clean. Everything else — the
    other heads, the receiver's other inputs, every other path of the sender —
    stays clean; later layers see the receiver's changed output. ``receiver``
    is a ``(layer, head)`` or a list of them (patched together, e.g. two
    redundant induction heads). Returns the normalised effect
    ``(m - m_corrupted) / (m_clean - m_corrupted)`` (1 = no effect) or the raw metric.
    """
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    ls, hs = check_head(model, sender)
    receivers = [receiver] if isinstance(receiver, tuple) else list(receiver)
    receivers = [check_head(model, r) for r in receivers]
    if not receivers or any(lr <= ls for lr, _ in receivers):
        raise ValueError(f"every receiver {receivers} must be in a later layer than the sender {sender}")
    clean_tokens, corrupted_tokens = _check_pair(model, clean_tokens, corrupted_tokens)
    metric = _get_metric(metric, clean_tokens, corrupted_tokens)
    layers = sorted({lr for lr, _ in receivers})
    names = [f"blocks.{ls}.attn.hook_z"] + [f"blocks.{lr}.hook_resid_pre" for lr in layers] + (
        ["hook_pos_embed"] if model.cfg.positional != "none" else [])
    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    corr_logits, corr_cache = model.run_with_cache(corrupted_tokens, names_filter=names)
    W_O = model.blocks[ls].attn.W_O[hs]
    delta = (corr_cache["z", ls][:, :, hs] - clean_cache["z", ls][:, :, hs]) @ W_O  # sender: corrupted - clean

    def make(lr: int, heads: list[int]):
        x = clean_cache["resid_pre", lr] + delta
        if model.cfg.layernorm:
            x = model.blocks[lr].ln1.norm(x)
        if receiver_input != "v" and model.cfg.positional == "shortformer":
            x = x + clean_cache["pos_embed"]
        attn = model.blocks[lr].attn
        new = torch.einsum("bpd,hde->bphe", x, getattr(attn, "W_" + receiver_input.upper()))
        bias = attn.biases()["qkv".index(receiver_input)]
        new = new if bias is None else new + bias

        def fn(act, hook):
            act = act.clone()
            act[:, :, heads] = new[:, :, heads]
            return act
        return fn

    hooks = [(f"blocks.{lr}.attn.hook_{receiver_input}", make(lr, [h for l, h in receivers if l == lr]))
             for lr in layers]
    m = metric_value(metric, model.run_with_hooks(clean_tokens, fwd_hooks=hooks))
    if not normalise:
        return m
    return normalised_effect(m, metric_value(metric, clean_logits), metric_value(metric, corr_logits))
