"""``head_report``: every head of a model, its scores and a label that describes its attention.

Scores per head (layer ``l``, head ``h``), on the probe ``[BOS, r, r]`` (or the
tokens you pass):

* ``previous_token``, ``duplicate_token``, ``induction``: the detectors of
  :mod:`toylab.circuits.scores` (their own normalisation, not TransformerLens's);
* ``bos``: the mean attention on the first position (BOS on the probe),
  ``mean_{b, q >= 1} A[b, q, 0]``: a head that parks most of its attention
  there is *resting* (it writes little but the BOS value);
* ``copying``: eigenvalue copying score of the full OV circuit ``W_E W_OV W_U``
  (:func:`toylab.circuits.copying.copying_scores`);
* ``positional``: how much of the attention the positions alone explain,
  ``mean_{b, q >= 1} sum_k min(A[b, q, k], P[q, k])`` = 1 - total-variation
  distance between the head's pattern ``A`` and the purely positional pattern
  ``P = softmax*(W_pos W_QK W_pos^T / sqrt(d_head))`` (causal). 1: attention is a
  function of position only. NaN for ``positional="none"``; for ``"learned"``
  positions it uses only the direct path of ``W_pos`` (exact in layer 0).
  ``offset`` / ``offset_mass``: the relative offset ``q - k`` that gets most of
  the attention, and its share.

Labels (thresholds in :data:`THRESHOLDS`), every one that applies goes in
``tags``; ``label`` is the first of them in this order, else ``"other"``:

``induction``        chance-corrected induction score >= 0.4
``previous-token``   chance-corrected previous-token score >= 0.4
``duplicate-token``  chance-corrected duplicate-token score >= 0.4
``resting``          attention on position 0 (BOS) >= 0.8
``copying``          copying score >= max(0.7, 99% quantile of random heads of these shapes)
``positional``       positional score >= 0.8; the label says the offset,
                     ``"positional (offset 1)"``, or ``"positional (mixed offsets)"``

Chance correction: a detector score ``s`` counts by ``(s - u) / (1 - u)``, where
``u`` is what a uniform-attention head scores on the *same* tokens
(:attr:`HeadReport.baseline`). On the probe ``u`` is about 0.06; on period-2
text it is 0.41, where a raw 0.4 threshold would label a uniform head.

When the probe cannot tell two kinds apart -- on text of period 1 or 2 the
token after an earlier occurrence *is* the previous token, so a pure
previous-token head scores high on induction; on period-2 text a head that
attends two back scores high on duplicate-token -- the ambiguous labels are
withheld and :attr:`HeadReport.notes` says so. The notes also say when weight
readings do not apply (LayerNorm models: ``copying`` and ``positional`` are NaN)
and when the tokens reach positions the model was never trained on.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from toylab.circuits.weights import positional_qk
from toylab.circuits.copying import copying_scores, random_copying_baseline
from toylab.data import probe_half_len, repeated_tokens
from toylab.model import head_name
from toylab.circuits.scores import duplicate_token_score, head_detector_scores, induction_score, previous_token_score

THRESHOLDS: dict[str, tuple[str, float]] = {
    "induction": ("induction", 0.4),
    "previous-token": ("previous_token", 0.4),
    "duplicate-token": ("duplicate_token", 0.4),
    "resting": ("bos", 0.8),
    "copying": ("copying", 0.7),
    "positional": ("positional", 0.8),
}
DETECTORS = ("previous_token", "duplicate_token", "induction")
SCORE_NAMES = ("previous_token", "duplicate_token", "induction", "bos", "copying", "positional")
COPYING_QUANTILE = 0.99
OFFSET_MASS = 0.5  # an offset names a positional head when it gets at least this share of the attention

__all__ = ["THRESHOLDS", "HeadReport", "head_report", "positional_scores", "detector_baselines"]


@torch.no_grad()
def positional_scores(model, tokens: Tensor) -> Tensor:
    """``[n_layers, n_heads]``: overlap of each head's pattern on ``tokens`` with its
    positional-only pattern (module docstring); NaN if the model has no positions
    or has LayerNorm (the positional pattern is then not a function of the weights)."""
    cfg = model.cfg
    tokens = model.check_tokens(tokens)
    if cfg.positional == "none" or cfg.layernorm:
        return torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    n = tokens.shape[1]
    _, cache = model.run_with_cache(tokens, names_filter=lambda s: s.endswith("hook_pattern"))
    fm = positional_qk(model)
    scores = (fm.A[..., :n, :] @ fm.B[..., :n]) / math.sqrt(cfg.d_head)      # [L, H, n, n]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    P = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    out = []
    for layer in range(cfg.n_layers):
        A = cache["pattern", layer]                                          # [b, H, n, n]
        overlap = torch.minimum(A, P[layer][None]).sum(-1)                   # [b, H, n]
        out.append(overlap[:, :, 1:].mean(dim=(0, 2)))
    return torch.stack(out)


def _uniform_pattern(batch: int, n: int) -> Tensor:
    causal = torch.ones(n, n).tril()
    return (causal / causal.sum(-1, keepdim=True)).expand(batch, 1, n, n)


def _offset_pattern(batch: int, n: int, d: int) -> Tensor:
    """A pure fixed-offset head: query q attends to q - d (to position 0 while q < d)."""
    q = torch.arange(n)
    p = torch.zeros(n, n)
    p[q, (q - d).clamp_min(0)] = 1.0
    return p.expand(batch, 1, n, n)


def _detectors(pattern: Tensor, tokens: Tensor, destinations) -> dict[str, float]:
    out = {"previous_token": float(previous_token_score(pattern))}
    for name, fn in (("duplicate_token", duplicate_token_score), ("induction", induction_score)):
        try:
            out[name] = float(fn(pattern, tokens, destinations))
        except ValueError:  # no destination with a target: the score is undefined
            out[name] = float("nan")
    return out


SHORT_OFFSETS = (1, 2, 3)


def detector_baselines(tokens: Tensor, destinations: Tensor | None = None) -> dict[str, dict[str, float]]:
    """What reference heads score on ``tokens [batch, pos]``: ``{"uniform": {score: value},
    "offset 1": {...}, "offset 2": {...}, "offset 3": {...}}`` for a uniform causal
    head and pure fixed-offset heads (``q`` attends to ``q - d``; offset 1 is the
    pure previous-token head). The report corrects the detector scores for the
    uniform head and uses the offset heads to tell when induction or
    duplicate-token attention cannot be separated from short-offset positional
    attention on these tokens (text of period 1 to 3). (The probe's own long
    offset, ``half_len``, is inherent to ``[BOS, r, r]``: training checks it with
    a probe that has a gap, ``repeated_tokens_with_gap``.)"""
    b, n = tokens.shape
    out = {"uniform": _detectors(_uniform_pattern(b, n), tokens, destinations)}
    for d in SHORT_OFFSETS:
        if d < n:
            out[f"offset {d}"] = _detectors(_offset_pattern(b, n, d), tokens, destinations)
    return out


def _corrected(s: float, u: float) -> float:
    return (s - u) / (1 - u) if u < 1 else float("nan")


@functools.lru_cache(maxsize=32)
def _copying_threshold(d_vocab: int, d_model: int, d_head: int) -> float:
    q = random_copying_baseline(d_vocab, d_model, d_head, (COPYING_QUANTILE,), n_samples=500)[COPYING_QUANTILE]
    return max(THRESHOLDS["copying"][1], q)


@torch.no_grad()
def _attention_stats(model, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``bos [L, H]``, ``offset [L, H]`` (long), ``offset_mass [L, H]`` over queries ``q >= 1``."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda s: s.endswith("hook_pattern"))
    n = tokens.shape[1]
    q, k = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    off = (q - k).clamp_min(0)
    bos, offset, mass = [], [], []
    for layer in range(model.cfg.n_layers):
        A = cache["pattern", layer][:, :, 1:]                                 # [b, H, n-1, n]
        bos.append(A[..., 0].mean(dim=(0, 2)))
        by_off = torch.zeros(A.shape[1], n).index_add_(
            1, off[1:].reshape(-1), A.mean(0).reshape(A.shape[1], -1)) / (n - 1)  # [H, n]
        m, d = by_off.max(-1)
        offset.append(d)
        mass.append(m)
    return torch.stack(bos), torch.stack(offset), torch.stack(mass)


@dataclass
class HeadReport:
    """One row per head: ``{"layer", "head", "label", "tags", <score>: float, "offset", "offset_mass"}``.

    Iterate over it, index it (``report[i]`` or ``report[layer, head]``), or print
    it for a table. ``scores`` maps each score name to ``[n_layers, n_heads]``;
    ``baseline`` holds the reference heads' detector scores on the same tokens
    (:func:`detector_baselines`); ``notes`` the caveats (printed under the table).
    """

    rows: list[dict]
    scores: dict[str, Tensor]
    thresholds: dict[str, tuple[str, float]] = field(default_factory=lambda: dict(THRESHOLDS))
    notes: list[str] = field(default_factory=list)
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple):
            for row in self.rows:
                if (row["layer"], row["head"]) == tuple(key):
                    return row
            raise KeyError(f"no head {key} in this report; heads: {[(r['layer'], r['head']) for r in self.rows]}")
        return self.rows[key]

    def to_dicts(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def __str__(self) -> str:
        head = ["head", "label", "prev", "dup", "induct", "bos", "copying", "position"]
        lines = [f"{head[0]:<6}{head[1]:<26}" + "".join(f"{h:>9}" for h in head[2:])]
        for r in self.rows:
            vals = "".join(f"{r[c]:>9.3f}" for c in SCORE_NAMES)
            lines.append(f"{head_name(r['layer'], r['head']):<6}{r['label']:<26}{vals}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _unpack(model, data_n_ctx):
    """A Checkpoint -> (its model, its data's n_ctx); a model -> (model, data_n_ctx)."""
    if hasattr(model, "model") and hasattr(model, "data_spec"):
        spec_n = model.data_spec.get("n_ctx") if isinstance(model.data_spec, dict) else None
        return model.model, data_n_ctx if data_n_ctx is not None else spec_n
    return model, data_n_ctx


@torch.no_grad()
def head_report(model, tokens: Tensor | None = None, batch: int = 64, seed: int = 0,
                data_n_ctx: int | None = None) -> HeadReport:
    """Classify every head of ``model`` (a model or a Checkpoint; module docstring for scores and labels).

    ``tokens [batch, pos]`` must contain repeats (the detectors need them);
    default: the probe ``[BOS, r, r]`` filling ``min(n_ctx, data_n_ctx)``
    positions, ``batch`` sequences drawn with a generator seeded by ``seed``,
    whose duplicate-token and induction scores are taken from the tokens of the
    second copy, not from chance repeats in ``r``.

    ``data_n_ctx``: the length of the sequences the model was trained on (read
    from a Checkpoint's data spec when a Checkpoint is passed). Positions at or
    beyond it were never trained: the default probe stays inside it, and tokens
    that reach past it give a ``UserWarning`` and a note. A bare model does not
    know its data, so pass ``data_n_ctx`` (or the Checkpoint) if it may differ from ``n_ctx``.
    """
    model, data_n_ctx = _unpack(model, data_n_ctx)
    cfg = model.cfg
    if cfg.n_layers == 0:
        raise ValueError("the model has 0 layers: there are no heads to report on")
    if data_n_ctx is not None and (isinstance(data_n_ctx, bool) or not isinstance(data_n_ctx, int)
                                   or data_n_ctx < 2):
        raise ValueError(f"data_n_ctx must be an int >= 2 (the training sequences' length), got {data_n_ctx!r}")
    trained = min(cfg.n_ctx, data_n_ctx) if data_n_ctx is not None else cfg.n_ctx
    notes: list[str] = []
    destinations = None
    if tokens is None:
        half = probe_half_len(trained)
        if half < 1:
            raise ValueError(f"{trained} trained positions are too few for the probe [BOS, r, r]; pass tokens")
        tokens = repeated_tokens(cfg.d_vocab, half, batch, torch.Generator().manual_seed(int(seed)))
        destinations = torch.arange(tokens.shape[1]) > half
    tokens = model.check_tokens(tokens)
    if tokens.shape[1] > trained:
        msg = (f"the tokens have {tokens.shape[1]} positions but the model was trained on sequences of "
               f"{trained}: positions {trained}..{tokens.shape[1] - 1} are untrained and their attention "
               "is not evidence of anything")
        warnings.warn(msg, UserWarning, stacklevel=2)
        notes.append(msg)
    scores = dict(head_detector_scores(model, tokens, destinations))
    bos, offset, offset_mass = _attention_stats(model, tokens)
    scores["bos"] = bos
    if cfg.layernorm:
        scores["copying"] = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
        notes.append("LayerNorm model: copying and positional scores read the weights as linear maps, which "
                     "LayerNorm breaks, so they are NaN (see toylab.circuits.weights.refuse_layernorm)")
    elif getattr(cfg, "d_mlp", 0):
        scores["copying"] = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
        notes.append("MLP model: the copying score reads W_E W_OV W_U, which leaves out every path through an "
                     "MLP, so it is NaN (see toylab.circuits.weights.refuse_mlp)")
    else:
        scores["copying"] = copying_scores(model, "full")
    scores["positional"] = positional_scores(model, tokens)
    base = detector_baselines(tokens, destinations)
    uniform = base["uniform"]
    thr = {name: t for name, t in THRESHOLDS.values()}
    ambiguous = set()
    for name in ("induction", "duplicate_token"):
        hits = [(ref, v[name]) for ref, v in base.items() if ref != "uniform"
                and _corrected(v[name], uniform[name]) >= thr[name]]
        if hits:
            ambiguous.add(name)
            said = ", ".join(f"a pure {ref} head scores {v:.2f}" for ref, v in hits)
            notes.append(
                f"on these tokens {said} on {name} (its target sits at a fixed short offset, e.g. on text of "
                f"period 1-3; a pure offset-1 head is a previous-token head): the probe cannot separate "
                f"{name.replace('_', '-')} heads from positional ones, so the {name.replace('_', '-')} label "
                "is withheld")
    copy_thr = _copying_threshold(cfg.d_vocab, cfg.d_model, cfg.d_head)
    rows = []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            row = {"layer": layer, "head": h}
            row.update({name: float(scores[name][layer, h]) for name in SCORE_NAMES})
            row["offset"], row["offset_mass"] = int(offset[layer, h]), float(offset_mass[layer, h])
            tags = []
            for lab, (name, t) in THRESHOLDS.items():
                if name in DETECTORS:
                    ok = name not in ambiguous and _corrected(row[name], uniform[name]) >= t
                elif name == "copying":
                    ok = row[name] >= copy_thr                                 # NaN >= x is False
                else:
                    ok = row[name] >= t
                if ok:
                    tags.append(lab)
            row["tags"] = tags
            label = tags[0] if tags else "other"
            if label == "positional":
                label = (f"positional (offset {row['offset']})" if row["offset_mass"] >= OFFSET_MASS
                         else "positional (mixed offsets)")
            row["label"] = label
            rows.append(row)
    return HeadReport(rows, scores, notes=notes, baseline=base)
