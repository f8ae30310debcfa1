"""Figures for circuit discovery: the edge graph of a model, and ROC curves of discovery methods.

Drawing only (nothing here computes an effect or a score): the chapter computes
the numbers with the rest of :mod:`toylab.discovery` and hands them over.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

import math

from toylab.discovery.graph import Circuit, Graph, check_circuit, check_graph

_SLOT_COLOURS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "mlp": "tab:purple", "logits": "black"}


def _positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Node and slot coordinates: inputs at the bottom, one row per layer, the logits on top."""
    xy = {}
    inputs = [n.name for n in graph.nodes if n.kind in ("embed", "pos")]
    for i, name in enumerate(inputs):
        xy[name] = (i - (len(inputs) - 1) / 2, 0.0)
    H = graph.cfg.n_heads
    for n in graph.nodes:
        if n.kind == "head":
            x = 2.2 * (n.head - (H - 1) / 2)
            xy[n.name] = (x, 1.0 + n.layer)
            for j, slot in enumerate("qkv"):
                xy[f"{n.name}.{slot}"] = (x + 0.45 * (j - 1), 0.72 + n.layer)
        elif n.kind == "mlp":  # right of the heads, half a row up; its input dot just below it
            xy[n.name] = (2.2 * (H + 1) / 2, 1.45 + n.layer)
            xy[f"{n.name}.in"] = (2.2 * (H + 1) / 2, 1.25 + n.layer)
    xy["logits"] = (0.0, 1.0 + graph.cfg.n_layers)
    return xy


def edge_graph(graph: Graph, circuit: Circuit | None = None, title: str = "", ax=None):
    """Draw ``graph``: senders as labelled boxes (inputs below, heads by layer, each MLP right of its
    layer's heads), each head's q/k/v input slots and each MLP's input as small dots under it,
    every edge as a line coloured by its slot. Edges of
    ``circuit`` are drawn thick, the others faint. Returns the figure."""
    check_graph(graph)
    _check_ax(ax)
    if circuit is not None:
        check_circuit(circuit, graph)
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    fig, ax = (plt.subplots(figsize=(7.0, 4.6)) if ax is None else (ax.figure, ax))
    xy = _positions(graph)
    for e in graph.edges:
        mlp_in = e.receiver.startswith("MLP")
        slot = "logits" if e.receiver == "logits" else "mlp" if mlp_in else e.receiver.split(".")[1]
        (x0, y0), (x1, y1) = xy[e.sender], xy[f"{e.receiver}.in" if mlp_in else e.receiver]
        kept = circuit is None or e.name in circuit.edges
        ax.plot([x0, x1], [y0 + 0.08, y1 - 0.02], color=_SLOT_COLOURS[slot],
                lw=2.4 if (kept and circuit is not None) else 0.9,
                alpha=0.9 if kept else 0.15, zorder=1)
    for n in graph.nodes:
        x, y = xy[n.name]
        ax.text(x, y, n.name, ha="center", va="center", fontsize=9, zorder=3,
                bbox=dict(boxstyle="round", fc="white", ec="grey"))
        if n.kind == "head":
            for slot in "qkv":
                sx, sy = xy[f"{n.name}.{slot}"]
                ax.scatter([sx], [sy], s=18, color=_SLOT_COLOURS[slot], zorder=2)
        if n.kind == "mlp":
            ax.scatter(*xy[f"{n.name}.in"], s=18, color=_SLOT_COLOURS["mlp"], zorder=2)
    x, y = xy["logits"]
    ax.text(x, y, "logits", ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round", fc="lightgrey", ec="grey"))
    for slot, colour in _SLOT_COLOURS.items():
        if slot != "mlp" or graph.has_mlps:  # an attention-only graph's legend as before
            ax.plot([], [], color=colour, label=f"into {slot}" if slot != "logits" else "into logits")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_yticks(range(graph.cfg.n_layers + 2))
    ax.set_yticklabels(["inputs"] + [f"layer {l}" for l in range(graph.cfg.n_layers)] + ["output"],
                       fontsize=9)
    ax.set_xticks([])
    ax.set_xlim(-3.0, max(3.0, 2.2 * (graph.cfg.n_heads + 1) / 2 + 0.8) if graph.has_mlps else 3.0)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{len(graph)} edges", fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves(curves: dict[str, tuple], points: dict[str, tuple[float, float]] | None = None,
               title: str = "ROC against the reference circuit", ax=None):
    """ROC figure: ``curves`` maps a label to ``(fpr [n], tpr [n], auc)`` (a line each, the AUC in the
    legend); ``points`` maps a label to one ``(fpr, tpr)`` (a marker each). Returns the figure.

    Everything is checked before a figure is made: rates in [0, 1], curves of matching lengths, a finite AUC."""
    _check_curves(curves, points)
    _check_ax(ax)
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    fig, ax = (plt.subplots(figsize=(5.0, 4.2)) if ax is None else (ax.figure, ax))
    styles = ("-", "--", "-.", ":")
    n = len(curves)
    for j, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        fpr = fpr.tolist() if isinstance(fpr, torch.Tensor) else list(fpr)
        tpr = tpr.tolist() if isinstance(tpr, torch.Tensor) else list(tpr)
        # wider lines first and varied dashes, so curves that coincide (AUC 1) stay visible
        ax.plot(fpr, tpr, ls=styles[j % len(styles)], lw=1.2 + 2.4 * (n - 1 - j) / max(n - 1, 1),
                marker=".", label=f"{label} (AUC {auc:.2f})")
    markers: Sequence[str] = ("*", "s", "D", "^")
    for j, (label, (x, y)) in enumerate((points or {}).items()):  # markers repeat after four points
        ax.scatter([x], [y], marker=markers[j % len(markers)], s=80, zorder=3, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("false-positive rate (edges kept outside the reference)", fontsize=9)
    ax.set_ylabel("true-positive rate (reference edges kept)", fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _rates(values, what: str) -> list:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a sequence of numbers, got {type(values).__name__}") from None
    if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
        raise ValueError(f"{what} must be rates in [0, 1], got {values[:6]}{' ...' if len(values) > 6 else ''}")
    return values


def _check_curves(curves, points) -> None:
    if not isinstance(curves, dict):
        raise TypeError(f"curves must be a dict {{label: (fpr, tpr, auc)}} (e.g. from roc_curve), got "
                        f"{type(curves).__name__}")
    if not curves and not points:
        raise ValueError("nothing to draw: curves and points are both empty")
    for label, c in curves.items():
        if not isinstance(c, (tuple, list)) or len(c) != 3:
            raise ValueError(f"curves[{label!r}] must be (fpr, tpr, auc) as roc_curve returns it, got "
                             f"{type(c).__name__}{' of length ' + str(len(c)) if isinstance(c, (tuple, list)) else ''}")
        fpr, tpr = _rates(c[0], f"curves[{label!r}] fpr"), _rates(c[1], f"curves[{label!r}] tpr")
        if len(fpr) != len(tpr) or not fpr:
            raise ValueError(f"curves[{label!r}]: fpr and tpr must have one (equal, non-zero) length, "
                             f"got {len(fpr)} and {len(tpr)}")
        auc = c[2]
        if isinstance(auc, bool) or not isinstance(auc, (int, float)) or not math.isfinite(auc) or not 0 <= auc <= 1:
            raise ValueError(f"curves[{label!r}]: the AUC must be a number in [0, 1], got {auc!r}")
    if points is not None:
        if not isinstance(points, dict):
            raise TypeError(f"points must be a dict {{label: (fpr, tpr)}}, got {type(points).__name__}")
        for label, p in points.items():
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise ValueError(f"points[{label!r}] must be one (fpr, tpr) pair, got {p!r}")
            _rates(p, f"points[{label!r}]")


def _check_ax(ax) -> None:
    if ax is not None and not (hasattr(ax, "plot") and hasattr(ax, "figure")):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}")
