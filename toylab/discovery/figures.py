"""Figures for circuit discovery: the edge graph of a model, and ROC curves of discovery methods.

Drawing only (nothing here computes an effect or a score): the chapter computes
the numbers with the rest of :mod:`toylab.discovery` and hands them over.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from toylab.discovery.graph import Circuit, Graph

_SLOT_COLOURS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "logits": "black"}


def _positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Node and slot coordinates: inputs at the bottom, one row per layer, the logits on top."""
    xy = {}
    inputs = [n.name for n in graph.nodes if n.kind != "head"]
    for i, name in enumerate(inputs):
        xy[name] = (i - (len(inputs) - 1) / 2, 0.0)
    H = graph.cfg.n_heads
    for n in graph.nodes:
        if n.kind == "head":
            x = 2.2 * (n.head - (H - 1) / 2)
            xy[n.name] = (x, 1.0 + n.layer)
            for j, slot in enumerate("qkv"):
                xy[f"{n.name}.{slot}"] = (x + 0.45 * (j - 1), 0.72 + n.layer)
    xy["logits"] = (0.0, 1.0 + graph.cfg.n_layers)
    return xy


def edge_graph(graph: Graph, circuit: Circuit | None = None, title: str = "", ax=None):
    """Draw ``graph``: senders as labelled boxes (inputs below, heads by layer), each head's q/k/v
    input slots as small dots under it, every edge as a line coloured by its slot. Edges of
    ``circuit`` are drawn thick, the others faint. Returns the figure."""
    if circuit is not None and circuit.graph is not graph:
        raise ValueError("the circuit belongs to another graph")
    fig, ax = (plt.subplots(figsize=(7.0, 4.6)) if ax is None else (ax.figure, ax))
    xy = _positions(graph)
    for e in graph.edges:
        slot = "logits" if e.receiver == "logits" else e.receiver.split(".")[1]
        (x0, y0), (x1, y1) = xy[e.sender], xy[e.receiver]
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
    x, y = xy["logits"]
    ax.text(x, y, "logits", ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round", fc="lightgrey", ec="grey"))
    for slot, colour in _SLOT_COLOURS.items():
        ax.plot([], [], color=colour, label=f"into {slot}" if slot != "logits" else "into logits")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_yticks(range(graph.cfg.n_layers + 2))
    ax.set_yticklabels(["inputs"] + [f"layer {l}" for l in range(graph.cfg.n_layers)] + ["output"],
                       fontsize=9)
    ax.set_xticks([])
    ax.set_xlim(-3.0, 3.0)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{len(graph)} edges", fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves(curves: dict[str, tuple], points: dict[str, tuple[float, float]] | None = None,
               title: str = "ROC against the reference circuit", ax=None):
    """ROC figure: ``curves`` maps a label to ``(fpr [n], tpr [n], auc)`` (a line each, the AUC in the
    legend); ``points`` maps a label to one ``(fpr, tpr)`` (a marker each). Returns the figure."""
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
    for (label, (x, y)), m in zip((points or {}).items(), markers):
        ax.scatter([x], [y], marker=m, s=80, zorder=3, label=label)
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
