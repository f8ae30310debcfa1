"""Interventions: metrics, head ablations, frozen-pattern runs and term importance.

Ablation replaces a head's output ``z [batch, pos, d_head]`` (hook
``blocks.{l}.attn.hook_z``, or its ``result`` on ``hook_result``) by

- ``"zero"``: ``0``;
- ``"mean"``: its mean over a reference batch, per position: ``z_ref.mean(batch)``;
- ``"resample"``: its value on another sequence of a reference batch, row
  ``perm[b]`` for a permutation seeded by ``seed`` (when the reference is the
  batch itself, a derangement: no sequence gets its own activation back).

MLPs (:func:`ablate_mlps`): the same three kinds replace a whole layer's MLP output
(``blocks.{l}.hook_mlp_out [batch, pos, d_model]``, ``b_out`` included) or single
neurons' activations (``blocks.{l}.mlp.hook_post[..., n]``: the neuron then writes
``0`` (zero), its mean or a resampled value times ``W_out[n]``; ``b_out`` stays).

``freeze_patterns=True`` is the *pattern-preserving* ablation of Olsson et al.:
every attention pattern is overwritten by its value on the clean run, so the
ablated head can only matter through the values it writes, not through the
queries and keys of later heads.

Activation and path patching live in :mod:`toylab.causal.patching`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from toylab.blocks import check_neurons
from toylab.hooks import resolve_index
from toylab.model import next_token_loss

ABLATIONS = ("zero", "mean", "resample")
METRICS = ("logit_diff", "logprob", "prob", "rank", "loss")


# --------------------------------------------------------------------------- checks

def check_head(model, head) -> tuple[int, int]:
    """``(layer, head)`` as non-negative ints; negative indices count from the end (Python's
    rule, :func:`toylab.hooks.resolve_index`), out-of-range ones raise a ``ValueError``."""
    if not (isinstance(head, (tuple, list)) and len(head) == 2):
        raise ValueError(f"a head is a (layer, head) pair of integers, got {head!r}")
    l, h = head
    return resolve_index(l, model.cfg.n_layers, "layer"), resolve_index(h, model.cfg.n_heads, "head")


# --------------------------------------------------------------------------- metrics

def make_metric(name: str, tokens: torch.Tensor, positions=None,
                incorrect_tokens: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A next-token metric ``logits [batch, pos, d_vocab] -> scalar``.

    The logits at position p are scored against ``tokens[:, p + 1]``, averaged
    over the batch and ``positions`` (indices or a bool mask into ``0 .. pos-2``;
    default all):

    - ``"logit_diff"``: ``logit[t] - logit[t']``, ``t' = incorrect_tokens[:, p + 1]``
      (``incorrect_tokens [batch, pos]``, e.g. the corrupted sequence; required);
    - ``"logprob"``: ``log softmax(logits)[t]``; ``"loss"``: its negative;
    - ``"prob"``: ``softmax(logits)[t]``;
    - ``"rank"``: number of tokens with a strictly larger logit than ``t`` (0 = top).
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS} or a callable logits -> scalar")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 2, got {getattr(tokens, 'shape', tokens)}")
    n = tokens.shape[1] - 1
    mask = torch.zeros(n, dtype=torch.bool)
    if positions is None:
        mask[:] = True
    else:
        positions = torch.as_tensor(positions)
        if positions.dtype == torch.bool:
            if positions.shape != (n,):
                raise ValueError(f"a positions mask must have shape [{n}], got {list(positions.shape)}")
            mask = positions.clone()
        else:
            if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= n):
                raise ValueError(f"positions must lie in [0, {n - 1}] (logit positions with a next token)")
            mask[positions.long()] = True
    if not mask.any():
        raise ValueError("the metric has no positions to score")
    targets = tokens[:, 1:].long()
    wrong = None
    if name == "logit_diff":
        if incorrect_tokens is None or tuple(incorrect_tokens.shape) != tuple(tokens.shape):
            raise ValueError(f"metric 'logit_diff' needs incorrect_tokens of shape {list(tokens.shape)}")
        wrong = incorrect_tokens[:, 1:].long()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            raise ValueError(f"metric {name!r} expects logits [batch, pos, d_vocab] with [batch, pos] = "
                             f"{list(tokens.shape)}, got {list(logits.shape)}")
        lg = logits[:, :-1][:, mask].float()
        t = targets[:, mask][..., None]
        if name == "logit_diff":
            val = lg.gather(-1, t) - lg.gather(-1, wrong[:, mask][..., None])
        elif name in ("logprob", "loss"):
            val = torch.log_softmax(lg, -1).gather(-1, t)
            val = -val if name == "loss" else val
        elif name == "prob":
            val = torch.softmax(lg, -1).gather(-1, t)
        else:
            val = (lg > lg.gather(-1, t)).sum(-1).float()
        return val.mean()

    metric.__name__ = name
    return metric


def normalised_effect(m_patched, m_clean, m_corrupted):
    """``(m_patched - m_corrupted) / (m_clean - m_corrupted)``: 0 = corrupted run, 1 = clean run.

    Raises ``ValueError`` when clean and corrupted runs score the same.
    """
    m_clean, m_corrupted = (float(torch.as_tensor(m).detach()) for m in (m_clean, m_corrupted))
    if m_clean == m_corrupted:
        raise ValueError(f"clean and corrupted runs have the same metric ({m_clean}); nothing to normalise by")
    return (m_patched - m_corrupted) / (m_clean - m_corrupted)


# --------------------------------------------------------------------------- ablation

def _z_name(l: int, at: str) -> str:
    return f"blocks.{l}.attn.hook_{at}"


def frozen_pattern_hooks(model, tokens: torch.Tensor, layers: Sequence[int] | None = None) -> list:
    """Hooks that overwrite ``hook_pattern`` of ``layers`` (default all) with their values on ``tokens``."""
    layers = range(model.cfg.n_layers) if layers is None else [resolve_index(l, model.cfg.n_layers, "layer")
                                                               for l in layers]
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    if not names:
        return []
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return [(n, (lambda p: (lambda act, hook: p))(cache[n])) for n in names]


@torch.no_grad()
def ablation_hooks(model, tokens: torch.Tensor, heads: Sequence[tuple[int, int]], kind: str = "zero",
                   reference: torch.Tensor | None = None, seed: int = 0, at: str = "z") -> list:
    """The ``(name, fn)`` hooks that ablate ``heads`` on a run of ``tokens [batch, pos]`` (see the module doc).

    ``reference [batch_ref, pos]`` (same ``pos``; default ``tokens``) supplies
    the mean or the resampled activations; ``at`` is ``"z"`` or ``"result"``.
    """
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation kind {kind!r}; expected one of {ABLATIONS}")
    if at not in ("z", "result"):
        raise ValueError(f"at must be 'z' or 'result', got {at!r}")
    tokens = model.check_tokens(tokens)
    heads = [check_head(model, hd) for hd in heads]
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    ref_act: dict[int, torch.Tensor] = {}
    if kind != "zero":
        acts = reference_activations(model, tokens, reference, [_z_name(l, at) for l in by_layer], kind, seed)
        ref_act = {l: acts[_z_name(l, at)] for l in by_layer}

    def make(l: int, hs: list[int]):
        def fn(act, hook):
            act = act.clone()
            for h in hs:
                act[:, :, h] = 0.0 if kind == "zero" else ref_act[l][:, :, h]
            return act
        return fn

    return [(_z_name(l, at), make(l, hs)) for l, hs in by_layer.items()]


def reference_activations(model, tokens: torch.Tensor, reference, names: list[str], kind: str,
                          seed) -> dict[str, torch.Tensor]:
    """What a mean or resample ablation writes at each hook of ``names``.

    The reference batch is ``reference [n_ref, pos]`` (``None``: ``tokens [batch, pos]`` itself).
    ``kind="mean"``: the reference's mean over the batch, ``[1, ...]``; ``kind="resample"``: the
    activation of a reference sequence drawn for each row of ``tokens`` (seeded), ``[batch, ...]``.
    """
    ref = tokens if reference is None else model.check_tokens(reference)
    if ref.shape[1] != tokens.shape[1]:
        raise ValueError(f"reference must have the same number of positions as tokens ({tokens.shape[1]}), "
                         f"got {ref.shape[1]}")
    _, cache = model.run_with_cache(ref, names_filter=names)
    if kind == "mean":
        return {n: cache[n].mean(0, keepdim=True) for n in names}
    idx = _resample_rows(tokens.shape[0], ref.shape[0], reference is None, seed)
    return {n: cache[n][idx] for n in names}


def _resample_rows(B: int, R: int, own: bool, seed: int) -> torch.Tensor:
    """``[B]`` rows of a reference batch of ``R``, seeded; a derangement when the reference is the batch itself."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(R, generator=g)
    if own and R > 1:  # a derangement: each row gets another row's activation
        idx = torch.empty(R, dtype=torch.long)
        idx[perm] = perm.roll(-1)
    else:
        idx = perm if R >= B else torch.randint(0, R, (B,), generator=g)
    return idx[:B]


@torch.no_grad()
def ablate_heads(model, tokens: torch.Tensor, heads: Sequence[tuple[int, int]], kind: str = "zero",
                 reference: torch.Tensor | None = None, seed: int = 0, at: str = "z",
                 freeze_patterns: bool = False, metric: Callable | None = None,
                 return_cache: bool = False, names_filter=None):
    """Run ``tokens [batch, pos]`` with ``heads = [(layer, head), ...]`` ablated.

    ``kind`` in ``"zero" | "mean" | "resample"`` (see the module doc);
    ``freeze_patterns=True`` keeps every attention pattern at its clean value
    (pattern-preserving ablation). Returns the logits ``[batch, pos, d_vocab]``,
    or ``metric(logits)`` if a metric is given; with ``return_cache=True``,
    ``(that, cache)`` where the cache (filtered by ``names_filter``) holds the
    ablated run's activations.
    """
    tokens = model.check_tokens(tokens)
    hooks = ablation_hooks(model, tokens, heads, kind, reference, seed, at)
    if freeze_patterns:
        hooks = frozen_pattern_hooks(model, tokens) + hooks
    with model.hooks(hooks):
        if return_cache:
            logits, cache = model.run_with_cache(tokens, names_filter=names_filter)
        else:
            logits = model(tokens)
    out = logits if metric is None else metric(logits)
    return (out, cache) if return_cache else out


# --------------------------------------------------------------------------- MLPs and neurons

@torch.no_grad()
def mlp_ablation_hooks(model, tokens: torch.Tensor, layers: Sequence[int] = (), neurons: Sequence = (),
                       kind: str = "zero", reference: torch.Tensor | None = None, seed: int = 0) -> list:
    """The ``(name, fn)`` hooks that ablate whole MLP layers and single neurons on a run of ``tokens``.

    ``layers``: MLP layers whose ``hook_mlp_out [batch, pos, d_model]`` is replaced;
    ``neurons``: ``(layer, neuron)`` pairs (or ``(layer, [neurons])``) whose
    ``hook_post[..., neuron]`` is replaced. ``kind``, ``reference`` and ``seed`` as for
    heads (module doc): zero, the reference batch's mean per position, or a resampled row.
    """
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation kind {kind!r}; expected one of {ABLATIONS}")
    if not model.cfg.d_mlp:
        raise ValueError("this model has no MLPs (d_mlp=0): there is no MLP layer or neuron to ablate")
    tokens = model.check_tokens(tokens)
    L = model.cfg.n_layers
    targets: dict[str, torch.Tensor | None] = {}  # hook name -> neuron indices (None: the whole activation)
    for l in layers:
        targets[f"blocks.{resolve_index(l, L, 'layer')}.hook_mlp_out"] = None
    for item in neurons:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"a neuron is a (layer, neuron) pair (or (layer, [neurons])), got {item!r}")
        name = f"blocks.{resolve_index(item[0], L, 'layer')}.mlp.hook_post"
        old = targets.get(name, torch.zeros(0, dtype=torch.long))
        targets[name] = torch.cat([old, check_neurons(model, item[1])]).unique()
    if not targets:
        raise ValueError("nothing to ablate: give layers and/or neurons")
    ref_act: dict[str, torch.Tensor] = {}
    if kind != "zero":
        ref_act = reference_activations(model, tokens, reference, list(targets), kind, seed)

    def make(name: str, cols):
        def fn(act, hook):
            new = torch.zeros_like(act) if kind == "zero" else ref_act[name].expand_as(act)
            if cols is None:
                return new.clone()
            act = act.clone()
            act[..., cols] = new[..., cols]
            return act
        return fn

    return [(name, make(name, cols)) for name, cols in targets.items()]


@torch.no_grad()
def ablate_mlps(model, tokens: torch.Tensor, layers: Sequence[int] = (), neurons: Sequence = (),
                kind: str = "zero", reference: torch.Tensor | None = None, seed: int = 0,
                metric: Callable | None = None):
    """Run ``tokens [batch, pos]`` with MLP ``layers`` and/or ``neurons = [(layer, n), ...]`` ablated
    (:func:`mlp_ablation_hooks`). Returns the logits ``[batch, pos, d_vocab]``, or ``metric(logits)``."""
    tokens = model.check_tokens(tokens)
    logits = model.run_with_hooks(tokens, fwd_hooks=mlp_ablation_hooks(model, tokens, layers, neurons, kind,
                                                                       reference, seed))
    return logits if metric is None else metric(logits)


# --------------------------------------------------------------------------- term importance

@torch.no_grad()
def term_importance(model, tokens: torch.Tensor, positions=None) -> dict[str, float]:
    """How much loss the path-expansion terms explain, by frozen-pattern ablation.

    With every attention pattern frozen at its clean value the model is linear
    in the values, and its logits expand into the direct path ``e W_U``,
    single-head terms ``A^h e W_OV^h W_U`` and virtual-head terms
    ``A^{h2} A^{h1} e W_OV^{h1} W_OV^{h2} W_U`` (``e`` = token embeddings, plus
    learned positions). Mean next-token loss (nats, over ``positions`` of the
    logits, default all) of three runs:

    - ``"full"``: all terms (= the clean loss);
    - ``"no_virtual"``: the values of every layer read the embeddings only,
      ``v = e W_V`` (hook ``hook_v``), which drops every virtual-head term;
    - ``"direct"``: every ``z`` zeroed: the direct path alone.

    Also ``"single_head_terms" = direct - no_virtual`` and
    ``"virtual_terms" = no_virtual - full``: the loss each group explains.
    Models with LayerNorm are not supported (the expansion needs frozen scales).
    """
    if model.cfg.layernorm:
        raise NotImplementedError("term_importance assumes no LayerNorm (the path expansion is then exact)")
    if model.cfg.d_mlp:
        raise NotImplementedError("term_importance assumes an attention-only model: with MLPs the logits do not "
                                  "expand into direct, single-head and virtual-head terms")
    tokens = model.check_tokens(tokens)
    n = tokens.shape[1] - 1
    if n < 1:
        raise ValueError("term_importance needs sequences of at least 2 tokens (a next token to predict)")
    mask = torch.ones(n, dtype=torch.bool)
    if positions is not None:
        idx = torch.as_tensor(positions)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise ValueError(f"a positions mask must have shape [{n}] (logit positions 0..{n - 1}), "
                                 f"got {list(idx.shape)}")
            mask = idx.clone()
        else:
            if idx.dtype.is_floating_point or idx.ndim > 1:
                raise ValueError(f"positions must be integer logit positions in [0, {n - 1}] or a bool mask "
                                 f"[{n}], got {positions!r}")
            if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
                raise ValueError(f"positions must lie in [0, {n - 1}] (logit positions with a next token; "
                                 f"negative counts from the end), got {idx.tolist()}")
            mask = torch.zeros_like(mask)
            mask[idx.long()] = True
        if not mask.any():
            raise ValueError("positions selects no logit position to score")

    def loss(logits):
        return float(next_token_loss(logits, tokens)[:, mask].mean())

    freeze = frozen_pattern_hooks(model, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed"] + (
        ["hook_pos_embed"] if model.cfg.positional == "learned" else []))
    e = cache["embed"] + (cache["pos_embed"] if model.cfg.positional == "learned" else 0)
    L = model.cfg.n_layers
    v_hooks = [(f"blocks.{l}.attn.hook_v", (lambda W: (lambda act, hook: torch.einsum("bpd,hde->bphe", e, W)))(
        model.blocks[l].attn.W_V)) for l in range(L)]
    z_hooks = [(f"blocks.{l}.attn.hook_z", lambda act, hook: torch.zeros_like(act)) for l in range(L)]
    out = {}
    for key, hooks in (("full", []), ("no_virtual", v_hooks), ("direct", z_hooks)):
        out[key] = loss(model.run_with_hooks(tokens, fwd_hooks=freeze + hooks))
    out["single_head_terms"] = out["direct"] - out["no_virtual"]
    out["virtual_terms"] = out["no_virtual"] - out["full"]
    return out
