"""Scoring found circuits against a reference circuit: ROC curves and their area.

Over a universe of edges (by default every edge of the graph), a found
circuit ``C`` against the reference ``R`` has

    TPR = |C & R| / |R|,     FPR = |C - R| / |U - R|.

A family of circuits (an ACDC threshold sweep) gives points ``(FPR, TPR)``;
with ``(0, 0)`` and ``(1, 1)`` added and the points sorted, the area under the
piecewise-linear curve (trapezoid rule) is the ROC AUC: 1 when some circuit
of the family is exactly ``R``, about 0.5 for circuits unrelated to ``R``.
A score per edge (attribution, exact effects) gives the ROC curve of ranking
edges by ``|score|`` (:func:`roc_from_scores`; ties counted half).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from toylab.discovery.graph import Circuit, Graph


def _universe(graph: Graph, reference: Circuit, edges: Iterable[str] | None) -> set[str]:
    if not isinstance(reference, Circuit):
        raise TypeError(f"reference must be a Circuit, got {type(reference).__name__}")
    universe = set(graph.edge_names if edges is None else edges)
    for e in universe:
        graph.edge_index(e)
    if not reference.edges <= universe:
        raise ValueError(f"reference edges {sorted(reference.edges - universe)} are outside the universe of edges")
    if not reference.edges or reference.edges == universe:
        raise ValueError("a ROC curve needs a reference with at least one edge in and one edge out of it")
    return universe


def tpr_fpr(circuit: Circuit, reference: Circuit, edges: Iterable[str] | None = None) -> tuple[float, float]:
    """``(TPR, FPR)`` of ``circuit`` against ``reference`` over ``edges`` (default: the whole graph)."""
    universe = _universe(circuit.graph, reference, edges)
    kept = circuit.edges & universe
    tpr = len(kept & reference.edges) / len(reference.edges)
    fpr = len(kept - reference.edges) / len(universe - reference.edges)
    return tpr, fpr


def _auc(points: list[tuple[float, float]]) -> float:
    pts = sorted(set(points) | {(0.0, 0.0), (1.0, 1.0)})
    return float(sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:])))


def roc_curve(circuits: Sequence[Circuit], reference: Circuit, edges: Iterable[str] | None = None):
    """``(fpr [n], tpr [n], auc)`` for a family of circuits (e.g. one per ACDC threshold), points sorted
    by FPR then TPR, with ``(0, 0)`` and ``(1, 1)`` included."""
    if not circuits:
        raise ValueError("roc_curve needs at least one circuit")
    pts = [tpr_fpr(c, reference, edges)[::-1] for c in circuits]
    full = sorted(set(pts) | {(0.0, 0.0), (1.0, 1.0)})
    fpr = torch.tensor([p[0] for p in full])
    tpr = torch.tensor([p[1] for p in full])
    return fpr, tpr, _auc(pts)


def roc_from_scores(graph: Graph, scores: torch.Tensor, reference: Circuit, edges: Iterable[str] | None = None):
    """``(fpr, tpr, auc)`` of ranking edges by ``|scores|`` (``scores [n_edges]``, any sign).

    The AUC is the probability that a reference edge outscores a non-reference edge (ties: 1/2).
    """
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(graph),):
        raise ValueError(f"scores must be a tensor [{len(graph)}] (one per edge), got {getattr(scores, 'shape', scores)}")
    universe = _universe(graph, reference, edges)
    s = {e: abs(float(scores[graph.index[e]])) for e in universe}
    pos = [s[e] for e in universe if e in reference.edges]
    neg = [s[e] for e in universe if e not in reference.edges]
    auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    order = sorted(universe, key=lambda e: -s[e])
    tp = fp = 0
    fpr, tpr = [0.0], [0.0]
    for e in order:
        tp, fp = tp + (e in reference.edges), fp + (e not in reference.edges)
        fpr.append(fp / len(neg))
        tpr.append(tp / len(pos))
    return torch.tensor(fpr), torch.tensor(tpr), float(auc)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of ``a, b [n]``: the Pearson correlation of their ranks, where tied
    values share the average of the ranks they occupy (exact effects of 0 tie often)."""
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"spearman needs two tensors of the same length >= 2, got {list(a.shape)} and {list(b.shape)}")

    def ranks(x):
        return (x[:, None] > x[None, :]).sum(1) + 0.5 * ((x[:, None] == x[None, :]).sum(1) - 1)

    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def topk_recall(estimate: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Share of the ``k`` entries with the largest exact ``|effect|`` that are among the ``k`` largest
    ``|estimate|`` (``estimate, exact [n]``, ``1 <= k <= n``)."""
    if estimate.shape != exact.shape or estimate.ndim != 1 or not 1 <= k <= len(exact):
        raise ValueError(f"topk_recall needs two [n] tensors and 1 <= k <= n, got {list(estimate.shape)}, "
                         f"{list(exact.shape)}, k={k}")
    top = set(exact.abs().topk(k).indices.tolist())
    return len(top & set(estimate.abs().topk(k).indices.tolist())) / k
