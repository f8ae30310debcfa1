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

from toylab.discovery.graph import Circuit, Graph, _edge_names, check_circuit, check_graph


def _universe(graph: Graph, reference: Circuit, edges: Iterable[str] | None) -> set[str]:
    check_circuit(reference, graph, "reference")
    universe = set(graph.edge_names if edges is None else _edge_names(edges, graph))
    for e in universe:
        graph.edge_index(e)
    if not reference.edges <= universe:
        raise ValueError(f"reference edges {sorted(reference.edges - universe)} are outside the universe of edges")
    if not reference.edges or reference.edges == universe:
        raise ValueError("a ROC curve needs a reference with at least one edge in and one edge out of it")
    return universe


def tpr_fpr(circuit: Circuit, reference: Circuit, edges: Iterable[str] | None = None) -> tuple[float, float]:
    """``(TPR, FPR)`` of ``circuit`` against ``reference`` over ``edges`` (default: the whole graph).

    Both circuits must come from graphs of the same model (``ValueError`` otherwise)."""
    if not isinstance(circuit, Circuit):
        raise TypeError(f"circuit must be a Circuit (graph.circuit(edge names)), got {type(circuit).__name__}")
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
    if isinstance(circuits, Circuit) or not hasattr(circuits, "__iter__"):
        raise TypeError(f"circuits must be a list of Circuits (e.g. one per ACDC threshold), got "
                        f"{type(circuits).__name__}")
    circuits = list(circuits)
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
    check_graph(graph)
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(graph),):
        got = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor [{len(graph)}] (one per edge), got {got}")
    _check_finite(scores, "scores")
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
    values share the average of the ranks they occupy (exact effects of 0 tie often).

    NaN or inf values and a constant input (whose ranks all tie: the correlation is 0/0) are refused."""
    a, b = _as_vector(a, "a", flat=False), _as_vector(b, "b", flat=False)
    if a.shape != b.shape:  # [n_layers, n_heads] against [n_layers, n_heads] is fine; [2, 3] against [6] is not
        raise ValueError(f"spearman needs two tensors of the same length (and shape), got {list(a.shape)} and {list(b.shape)}")
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() < 2:
        raise ValueError(f"spearman needs two tensors of the same length >= 2, got {list(a.shape)} and {list(b.shape)}")
    for name, x in (("a", a), ("b", b)):
        _check_finite(x, name)
        if bool((x == x[0]).all()):
            raise ValueError(f"{name} is constant ({float(x[0]):.4g} everywhere): its ranks all tie, so the rank "
                             "correlation is 0/0 and means nothing")

    def ranks(x):
        return (x[:, None] > x[None, :]).sum(1) + 0.5 * ((x[:, None] == x[None, :]).sum(1) - 1)

    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def topk_recall(estimate: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Share of the ``k`` entries with the largest exact ``|effect|`` that are among the ``k`` largest
    ``|estimate|`` (``estimate, exact [n]``, ``1 <= k <= n``)."""
    estimate, exact = _as_vector(estimate, "estimate", flat=False), _as_vector(exact, "exact", flat=False)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer, got {k!r}")
    if estimate.shape != exact.shape or estimate.ndim != 1 or not 1 <= k <= len(exact):
        raise ValueError(f"topk_recall needs two [n] tensors and 1 <= k <= n, got {list(estimate.shape)}, "
                         f"{list(exact.shape)}, k={k}")
    _check_finite(estimate, "estimate")
    _check_finite(exact, "exact")
    top = set(exact.abs().topk(k).indices.tolist())
    return len(top & set(estimate.abs().topk(k).indices.tolist())) / k


def _as_vector(x, name: str, flat: bool = True) -> torch.Tensor:
    """``x`` as a float64 tensor (flattened unless ``flat=False``); ``TypeError`` for non-numbers."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor of numbers [n], got {type(x).__name__}") from None
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t.double().flatten() if flat else t  # topk_recall keeps the dtype (its ties break as before)


def _check_finite(x: torch.Tensor, name: str) -> None:
    n_bad = int((~torch.isfinite(x)).sum())
    if n_bad:
        raise ValueError(f"{name} holds {n_bad} NaN or inf value(s) of {x.numel()}: NaN has no rank (it would "
                         "sort anywhere); find where it comes from, or drop those entries")
