"""Matplotlib figures used by the book (PNG-friendly, deterministic).

Every function takes plain tensors (or lists) and an optional ``ax``; it
returns the matplotlib ``Figure`` so a notebook can show it or save it with
``fig.savefig(path, dpi=...)``. Nothing here computes interpretability
quantities: the analysis modules do that, and these functions only draw.

Shapes and label counts are checked before anything is drawn, and a function
that raises closes the figure it had opened (no half-drawn figure is left
behind in a notebook).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if not x.is_complex() else x.resolve_conj().numpy()
    return np.asarray(x)


def _closes_on_error(fn):
    """Close the figures ``fn`` opened if it raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(plt.get_fignums())
        try:
            return fn(*args, **kwargs)
        except BaseException:
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
            raise
    return wrapper


def _check_count(items, n: int, what: str, of: str) -> None:
    if items is not None and len(items) != n:
        raise ValueError(f"got {len(items)} {what} for {n} {of}: give exactly {n}, one per entry")


def _check_positive(name: str, value, meaning: str) -> None:
    """``value`` is ``None`` (use the default) or a positive number; else a ValueError that says what it is."""
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be a positive number ({meaning}), got {value!r}")


def _axes(ax, n: int = 1, size=(4.0, 3.6)):
    if ax is not None:
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) < n:
            raise ValueError(f"{len(axes)} axes given for {n} panels")
        return axes[0].figure, axes[:n]
    fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False, constrained_layout=True)
    return fig, list(axes[0])


@_closes_on_error
def attention_patterns(pattern, labels: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                       ax=None, vmax: float = 1.0):
    """Attention patterns ``[n_heads, query_pos, key_pos]`` (or one ``[q, k]``), one panel per head.

    Rows are destinations (queries), columns sources (keys); ``labels`` names the
    positions (tokens) on both axes.
    """
    p = _np(pattern)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"pattern must be [n_heads, pos, pos] or [pos, pos], got {list(p.shape)}")
    _check_count(labels, p.shape[-1], "labels", "positions")
    _check_count(titles, p.shape[0], "titles", "heads")
    fig, axes = _axes(ax, p.shape[0])
    for i, a in enumerate(axes):
        im = a.imshow(p[i], cmap="Blues", vmin=0.0, vmax=vmax)
        a.set_title(titles[i] if titles else f"head {i}", fontsize=10)
        a.set_xlabel("source (key) position")
        a.set_ylabel("destination (query) position")
        if labels is not None:
            a.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
            a.set_yticks(range(len(labels)), labels, fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention")
    return fig


@_closes_on_error
def composition(scores, baseline: float, row_labels: Sequence[str], col_labels: Sequence[str],
                title: str = "K-composition", ax=None, span: float | None = None):
    """A heat map of composition scores ``[n_earlier, n_later]`` with the random baseline marked.

    The colour scale is centred on ``baseline``: red cells compose more than random
    matrices of the same shapes, blue less; each cell shows ``score / baseline``.
    The scale runs over ``baseline ± span`` (default: the largest ``|score - baseline|``);
    give several panels the same ``span`` to compare them on one scale.
    """
    s = _np(scores)
    if not isinstance(baseline, (int, float)) or not baseline > 0:
        raise ValueError(f"baseline must be a positive number (the random composition score), got {baseline!r}")
    if s.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"scores {list(s.shape)} do not match {len(row_labels)} x {len(col_labels)} labels")
    _check_positive("span", span, "half the colour scale")
    fig, (a,) = _axes(ax)
    span = max(np.abs(s - baseline).max(), 1e-9) if span is None else span
    im = a.imshow(s, cmap="RdBu_r", vmin=baseline - span, vmax=baseline + span)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            dark = abs(s[i, j] - baseline) > 0.6 * span          # white text on dark cells
            a.text(j, i, f"{s[i, j]:.2f}\n({s[i, j] / baseline:.1f}x)", ha="center", va="center",
                   fontsize=8, color="white" if dark else "black")
    a.set_xticks(range(len(col_labels)), col_labels)
    a.set_yticks(range(len(row_labels)), row_labels)
    a.set_xlabel("later head (reads)")
    a.set_ylabel("earlier head (writes)")
    a.set_title(f"{title} (random baseline {baseline:.2f})", fontsize=10)
    fig.colorbar(im, ax=a, shrink=0.8, label="composition score")
    return fig


@_closes_on_error
def eigenvalues(eigs, titles: Sequence[str] | None = None, ax=None, lim: float | None = None):
    """Each head's eigenvalues ``[n_heads, k]`` (complex) in the complex plane.

    Positive real eigenvalues mean the circuit copies (maps a token to itself);
    the title shows the copying score ``Re(sum λ) / sum |λ|``. Each panel spans
    ``[-lim, lim]`` on both axes: pass one ``lim`` to several calls to compare
    panels on one scale (default: 1.1 times each panel's largest ``|λ|``).
    """
    e = _np(eigs)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[-1] == 0:
        raise ValueError(f"eigs must be [n_heads, k] or [k] with k >= 1, got {list(e.shape)}")
    _check_count(titles, e.shape[0], "titles", "heads")
    _check_positive("lim", lim, "the half width of each panel")
    fig, axes = _axes(ax, e.shape[0], size=(3.2, 3.2))
    for i, a in enumerate(axes):
        lam = e[i]
        score = np.real(lam.sum()) / max(np.abs(lam).sum(), 1e-12)
        r = max(np.abs(lam).max(), 1e-12) * 1.1 if lim is None else lim
        a.axhline(0, color="0.7", lw=0.8)
        a.axvline(0, color="0.7", lw=0.8)
        a.scatter(np.real(lam), np.imag(lam), s=12, c=np.where(np.real(lam) >= 0, "tab:red", "tab:blue"))
        a.set_xlim(-r, r)
        a.set_ylim(-r, r)
        a.set_aspect("equal")
        a.set_xlabel("Re λ")
        a.set_ylabel("Im λ")
        name = titles[i] if titles else f"head {i}"
        a.set_title(f"{name}: copying {score:+.2f}", fontsize=10)
    return fig


@_closes_on_error
def circuit(matrix, row_label: str = "source token", col_label: str = "output token", title: str = "",
            ticks: Sequence[str] | None = None, ax=None, center: bool = True, vmax: float | None = None):
    """An image of a ``[d_vocab, d_vocab]`` circuit (e.g. the full OV or QK circuit).

    With ``center`` the colour scale is symmetric, ``[-vmax, vmax]`` (default: the
    matrix's largest ``|entry|``); give several panels the same ``vmax`` to compare
    them on one scale.
    """
    m = _np(matrix)
    if m.ndim != 2:
        raise ValueError(f"a circuit image needs a 2-D matrix, got shape {list(m.shape)}")
    if ticks is not None and (len(ticks) != m.shape[0] or len(ticks) != m.shape[1]):
        raise ValueError(f"{len(ticks)} ticks for a {m.shape[0]} x {m.shape[1]} matrix (ticks name both axes)")
    _check_positive("vmax", vmax, "the colour scale's end")
    fig, (a,) = _axes(ax, size=(4.4, 4.0))
    if center:
        span = max(np.abs(m).max(), 1e-12) if vmax is None else vmax
        im = a.imshow(m, cmap="RdBu_r", vmin=-span, vmax=span)
    else:
        im = a.imshow(m, cmap="viridis")
    a.set_xlabel(col_label)
    a.set_ylabel(row_label)
    a.set_title(title, fontsize=10)
    if ticks is not None:
        a.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=8)
        a.set_yticks(range(len(ticks)), ticks, fontsize=8)
    fig.colorbar(im, ax=a, shrink=0.8)
    return fig


@_closes_on_error
def head_scores(scores: dict[str, object], title: str = "head scores", ax=None):
    """A grid of per-head scores: ``{score name: [n_layers, n_heads]}``, one panel per score."""
    names = list(scores)
    arrays = [_np(scores[n]) for n in names]
    if not arrays or any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError("head_scores needs {name: [n_layers, n_heads]} arrays of one shape")
    n_layers, n_heads = arrays[0].shape
    fig, axes = _axes(ax, len(names), size=(0.9 * n_heads + 1.8, 0.8 * n_layers + 1.6))
    for a, name, arr in zip(axes, names, arrays):
        a.imshow(arr, cmap="Greens", vmin=min(0.0, arr.min()), vmax=max(1.0, arr.max()))
        for l in range(n_layers):
            for h in range(n_heads):
                a.text(h, l, f"{arr[l, h]:.2f}", ha="center", va="center", fontsize=8)
        a.set_xticks(range(n_heads), [f"H{h}" for h in range(n_heads)])
        a.set_yticks(range(n_layers), [f"L{l}" for l in range(n_layers)])
        a.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


@_closes_on_error
def training_history(history: Sequence[dict], keys: Sequence[str] = ("loss_first", "loss_repeat"),
                     score_keys: Sequence[str] = ("best_induction", "best_prev_token"), ax=None,
                     log_steps: bool = False):
    """Losses (left axis) and head scores (right axis) against the training step.

    ``log_steps`` puts the steps on a logarithmic axis (step 0 is left out), so that an
    early event such as a phase change is not squeezed against the left edge.
    """
    if not history:
        raise ValueError("training_history needs at least one evaluation entry")
    missing = sorted({k for e in history for k in ("step", *keys, *score_keys) if k not in e})
    if missing:
        raise ValueError(f"training_history entries lack {missing}; they have {sorted(history[0])}")
    if log_steps:
        history = [e for e in history if e["step"] > 0]
        if not history:
            raise ValueError("log_steps needs at least one entry after step 0")
    steps = [e["step"] for e in history]
    fig, (a,) = _axes(ax, size=(6.0, 3.4))
    if log_steps:
        a.set_xscale("log")
    for k in keys:
        a.plot(steps, [e[k] for e in history], label=k.replace("_", " "))
    a.set_xlabel("training step")
    a.set_ylabel("loss (nats)")
    b = a.twinx()
    for k, style in zip(score_keys, ("--", ":")):
        b.plot(steps, [e[k] for e in history], style, color="k", label=k.replace("_", " "))
    b.set_ylim(0, 1.05)
    b.set_ylabel("score")
    lines = a.get_legend_handles_labels()[0] + b.get_legend_handles_labels()[0]
    a.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    return fig


@_closes_on_error
def patching(effect, row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
             title: str = "activation patching", ax=None, vmax: float | None = None):
    """A heat map of a patching sweep ``[n_components, n_pos]`` (normalised effect: 0 corrupted, 1 clean).

    The colour scale is ``[-vmax, vmax]`` (default: the largest ``|effect|``); give
    several sweeps the same ``vmax`` to compare them on one scale.
    """
    e = _np(effect)
    if e.ndim != 2 or e.shape[0] != len(row_labels):
        raise ValueError(f"effect must be [len(row_labels) = {len(row_labels)}, n_pos], got {list(e.shape)}")
    _check_count(col_labels, e.shape[1], "col_labels", "positions")
    _check_positive("vmax", vmax, "the colour scale's end")
    fig, (a,) = _axes(ax, size=(max(4.0, 0.22 * e.shape[1] + 1.5), 0.35 * e.shape[0] + 1.6))
    span = max(np.abs(e).max(), 1e-12) if vmax is None else vmax
    im = a.imshow(e, cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    a.set_yticks(range(len(row_labels)), row_labels)
    if col_labels is not None:
        a.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=8)
    a.set_xlabel("position")
    a.set_title(title, fontsize=10)
    fig.colorbar(im, ax=a, shrink=0.8, label="normalised effect")
    return fig
