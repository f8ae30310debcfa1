"""``head_report``: every head of a model, its scores and a label.

Scores per head (layer ``l``, head ``h``):

* ``previous_token``, ``duplicate_token``, ``induction``: the detectors of
  :mod:`toylab.scores` on the probe ``[BOS, r, r]`` (or the tokens you pass);
* ``copying``: eigenvalue copying score of the full OV circuit ``W_E W_OV W_U``
  (:func:`toylab.copying.copying_scores`);
* ``positional``: how much of the attention the positions alone explain,
  ``mean_{b, q >= 1} sum_k min(A[b, q, k], P[q, k])`` = 1 - total-variation
  distance between the head's pattern ``A`` and the purely positional pattern
  ``P = softmax*(W_pos W_QK W_pos^T / sqrt(d_head))`` (causal). 1: attention is a
  function of position only. NaN for ``positional="none"``; for ``"learned"``
  positions it uses only the direct path of ``W_pos`` (exact in layer 0).

Labels (thresholds in :data:`THRESHOLDS`), every one that applies goes in
``tags``; ``label`` is the first of them in this order, else ``"other"``:

``induction``       induction score >= 0.4
``previous-token``  previous-token score >= 0.4
``duplicate-token`` duplicate-token score >= 0.4
``copying``         full-OV copying score >= 0.7
``positional``      positional score >= 0.8

A uniform head scores about ``1/(q+1)`` on the detectors (under 0.1 on
``n_ctx = 32`` probes), a random head's copying score is within about ±0.2,
so the thresholds sit well clear of chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from toylab.circuits import positional_qk
from toylab.copying import copying_scores
from toylab.data import probe_half_len, repeated_tokens
from toylab.scores import head_detector_scores

THRESHOLDS: dict[str, tuple[str, float]] = {
    "induction": ("induction", 0.4),
    "previous-token": ("previous_token", 0.4),
    "duplicate-token": ("duplicate_token", 0.4),
    "copying": ("copying", 0.7),
    "positional": ("positional", 0.8),
}
SCORE_NAMES = ("previous_token", "duplicate_token", "induction", "copying", "positional")

__all__ = ["THRESHOLDS", "HeadReport", "head_report", "positional_scores"]


@torch.no_grad()
def positional_scores(model, tokens: Tensor) -> Tensor:
    """``[n_layers, n_heads]``: overlap of each head's pattern on ``tokens`` with its
    positional-only pattern (module docstring); NaN if the model has no positions."""
    cfg = model.cfg
    tokens = model.check_tokens(tokens)
    if cfg.positional == "none":
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


@dataclass
class HeadReport:
    """One row per head: ``{"layer", "head", "label", "tags", <score>: float ...}``.

    Iterate over it, index it (``report[i]`` or ``report[layer, head]``), or print
    it for a table. ``scores`` maps each score name to ``[n_layers, n_heads]``.
    """

    rows: list[dict]
    scores: dict[str, Tensor]
    thresholds: dict[str, tuple[str, float]] = field(default_factory=lambda: dict(THRESHOLDS))

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
        cols = ["head", "label"] + list(SCORE_NAMES)
        head = ["head", "label", "prev", "dup", "induct", "copying", "position"]
        lines = [f"{head[0]:<6}{head[1]:<17}" + "".join(f"{h:>9}" for h in head[2:])]
        for r in self.rows:
            vals = "".join(f"{r[c]:>9.3f}" for c in cols[2:])
            lines.append(f"{r['layer']}.{r['head']:<4}{r['label']:<17}{vals}")
        return "\n".join(lines)

    __repr__ = __str__


@torch.no_grad()
def head_report(model, tokens: Tensor | None = None, batch: int = 64, seed: int = 0) -> HeadReport:
    """Classify every head of ``model`` (module docstring for scores and thresholds).

    ``tokens [batch, pos]`` must contain repeats (the detectors need them);
    default: the probe ``[BOS, r, r]`` with ``half_len = (n_ctx - 1) // 2``,
    ``batch`` sequences drawn with a generator seeded by ``seed``, whose
    duplicate-token and induction scores are taken from the tokens of the
    second copy (as in training's evaluation), not from chance repeats in ``r``.
    """
    cfg = model.cfg
    if cfg.n_layers == 0:
        raise ValueError("the model has 0 layers: there are no heads to report on")
    destinations = None
    if tokens is None:
        half = probe_half_len(cfg.n_ctx)
        if half < 1:
            raise ValueError(f"n_ctx = {cfg.n_ctx} is too short for the probe [BOS, r, r]; pass tokens")
        tokens = repeated_tokens(cfg.d_vocab, half, batch, torch.Generator().manual_seed(int(seed)))
        destinations = torch.arange(tokens.shape[1]) > half
    tokens = model.check_tokens(tokens)
    scores = dict(head_detector_scores(model, tokens, destinations))
    scores["copying"] = copying_scores(model, "full")
    scores["positional"] = positional_scores(model, tokens)
    rows = []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            row = {"layer": layer, "head": h}
            row.update({name: float(scores[name][layer, h]) for name in SCORE_NAMES})
            tags = [lab for lab, (name, thr) in THRESHOLDS.items() if row[name] >= thr]  # NaN >= thr is False
            row["tags"] = tags
            row["label"] = tags[0] if tags else "other"
            rows.append(row)
    return HeadReport(rows, scores)
