"""An offline, interactive attention-pattern viewer for notebooks and the built book.

``attention_viewer(tokens, pattern, head_names)`` returns an
:class:`AttentionViewer` whose ``_repr_html_`` is one self-contained HTML
fragment: the tokens of a sequence, a head selector, and a small inline
script. Hovering over a token (or clicking it, which keeps the choice)
makes it the *query* (destination) position ``q``; every token ``k`` is then
shaded by the chosen head's attention weight ``A[head, q, k]``, and the weight
is written under it, in its ``title`` and, at full precision, in its
``data-weight`` attribute. Tokens after ``q`` are greyed out: the causal mask
gives them weight 0.

Nothing is loaded from anywhere: the CSS and the script are inline, the
pattern is embedded as JSON, and the script makes no request of any kind.
It runs where a notebook output's scripts run (JupyterLab and Notebook once
the output is trusted, i.e. after you run the cell yourself; VS Code; the
HTML that jupyter-book builds). Every viewer gets its own element ids, so
several viewers on one page do not interfere; the ids are a hash of the data
and a counter, not random, so re-executing a notebook reproduces its output.

Shapes: ``tokens`` has ``n`` strings; ``pattern`` is ``[n_heads, n, n]``
(query position, key position), each row a probability distribution over
the key positions ``k <= q``.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AttentionViewer", "attention_viewer", "heads_from_cache"]

# How far a row sum may stray from 1, and a masked weight from 0: float32 softmax rows are
# within ~1e-6 of 1; 1e-4 leaves room for a float16 cast but catches a wrong axis or logits.
_TOL = 1e-4
_COUNTER = itertools.count()

_CSS = """
#{id} {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
        margin: 0.5em 0; line-height: 1.4; }}
#{id} .tlv-bar {{ display: flex; gap: 1em; align-items: center; flex-wrap: wrap;
                 margin-bottom: 0.4em; }}
#{id} .tlv-toks {{ display: flex; flex-wrap: wrap; gap: 3px; }}
#{id} .tlv-tok {{ display: inline-flex; flex-direction: column; align-items: center;
                 min-width: 2.2em; padding: 2px 3px; border: 1px solid #bbb;
                 border-radius: 3px; cursor: pointer; background: #fff; color: #111; }}
#{id} .tlv-tok .tlv-t {{ font-family: ui-monospace, Menlo, Consolas, monospace;
                        white-space: pre; }}
#{id} .tlv-tok .tlv-w {{ font-size: 10px; color: #333; min-height: 1.2em; }}
#{id} .tlv-tok.tlv-query {{ outline: 2px solid #d62728; outline-offset: 1px; }}
#{id} .tlv-tok.tlv-future {{ color: #aaa; border-style: dashed; }}
#{id} .tlv-readout {{ margin-top: 0.4em; font-size: 12px; color: #333; }}
#{id} .tlv-nojs {{ font-size: 12px; color: #a00; }}
"""

# The script: parse the embedded JSON, shade the tokens for (head, query). Plain ES5, no
# request, no global name: everything is looked up from this viewer's own root element.
_JS = """
(function () {
  var root = document.getElementById("{id}");
  if (!root || root.getAttribute("data-ready") === "1") return;
  var data = JSON.parse(document.getElementById("{id}-data").textContent);
  var toks = root.querySelectorAll(".tlv-tok");
  var select = document.getElementById("{id}-head");
  var readout = root.querySelector(".tlv-readout");
  var locked = data.query;
  function show(q) {
    var h = parseInt(select.value, 10);
    var row = data.pattern[h][q];
    root.setAttribute("data-head", String(h));
    root.setAttribute("data-query", String(q));
    var best = [];
    for (var k = 0; k < toks.length; k++) {
      var t = toks[k], w = row[k], lab = t.querySelector(".tlv-w");
      t.classList.toggle("tlv-query", k === q);
      t.classList.toggle("tlv-future", k > q);
      t.setAttribute("data-weight", String(w));
      if (k > q) {
        t.style.background = "#fff";
        lab.textContent = "";
        t.title = "position " + k + ": after the query, masked (weight 0)";
      } else {
        var a = Math.max(0, Math.min(1, w));
        t.style.background = "rgba(31, 119, 180, " + a.toFixed(4) + ")";
        t.style.color = a > 0.55 ? "#fff" : "#111";
        lab.style.color = a > 0.55 ? "#fff" : "#333";
        lab.textContent = w.toFixed(2);
        t.title = "position " + k + ": weight " + w.toPrecision(6);
        best.push([w, k]);
      }
    }
    best.sort(function (x, y) { return y[0] - x[0]; });
    var parts = [];
    for (var i = 0; i < Math.min(3, best.length); i++) {
      parts.push("\u00ab" + data.tokens[best[i][1]] + "\u00bb at " + best[i][1] + ": " +
                 best[i][0].toFixed(3));
    }
    readout.textContent = data.heads[h] + ": query position " + q + " \u00ab" + data.tokens[q] +
      "\u00bb attends most to " + parts.join(", ") +
      ". Hover over a token to see its row; click to keep it.";
  }
  for (var k = 0; k < toks.length; k++) {
    (function (k) {
      toks[k].addEventListener("mouseenter", function () { show(k); });
      toks[k].addEventListener("focus", function () { show(k); });
      toks[k].addEventListener("click", function () { locked = k; show(k); });
    })(k);
  }
  root.querySelector(".tlv-toks").addEventListener("mouseleave", function () { show(locked); });
  select.addEventListener("change", function () { show(parseInt(root.getAttribute("data-query"), 10)); });
  var nojs = root.querySelector(".tlv-nojs");
  if (nojs) nojs.parentNode.removeChild(nojs);
  root.setAttribute("data-ready", "1");
  show(locked);
})();
"""


def _display_token(tok: str) -> str:
    """Make whitespace visible: space -> '␣', newline -> '⏎', tab -> '⇥', empty -> '∅'."""
    if tok == "":
        return "∅"
    return tok.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")


def _as_array(pattern: Any) -> np.ndarray:
    if hasattr(pattern, "detach") and hasattr(pattern, "cpu"):  # a torch tensor, without importing torch
        pattern = pattern.detach().cpu()
        if getattr(pattern, "is_complex", lambda: False)():
            raise TypeError("pattern must be real attention weights, got a complex tensor")
        pattern = pattern.double().numpy()
    try:
        arr = np.array(pattern, dtype=np.float64)  # a copy: the caller's data is never touched
    except (TypeError, ValueError) as exc:
        raise TypeError(f"pattern must be an array of numbers [n_heads, q, k], got {type(pattern).__name__}: {exc}") from None
    return arr


def _check(tokens: Sequence[str], arr: np.ndarray, head_names: Sequence[str], tol: float) -> None:
    if arr.ndim != 3:
        hint = " (one head? pass pattern[None])" if arr.ndim == 2 else ""
        hint = " (a batch? pass pattern[b] for one sequence)" if arr.ndim == 4 else hint
        raise ValueError(f"pattern must have shape [n_heads, query_pos, key_pos], got shape {list(arr.shape)}{hint}")
    n_heads, n_q, n_k = arr.shape
    if n_heads == 0 or n_q == 0:
        raise ValueError(f"pattern must have at least one head and one position, got shape {list(arr.shape)}")
    if n_q != n_k:
        raise ValueError(f"pattern must be square in its last two dims (query_pos == key_pos), got shape {list(arr.shape)}")
    if len(tokens) != n_q:
        raise ValueError(f"got {len(tokens)} tokens but the pattern has {n_q} positions; they must match")
    if len(head_names) != n_heads:
        raise ValueError(f"got {len(head_names)} head names for {n_heads} heads in the pattern")
    if not np.isfinite(arr).all():
        raise ValueError("pattern contains NaN or inf: expected attention probabilities")
    if arr.min() < -tol or arr.max() > 1 + tol:
        raise ValueError(f"pattern values must lie in [0, 1] (probabilities), got min {arr.min():.4g}, "
                         f"max {arr.max():.4g}: did you pass attention scores (before the softmax)?")
    future = np.triu(np.ones((n_q, n_k), dtype=bool), k=1)
    leak = np.abs(arr[:, future]).max(initial=0.0)
    if leak > tol:
        h, q, k = np.argwhere(np.abs(arr) * future > tol)[0]
        raise ValueError(f"pattern is not causal: head {h}, query {q} puts weight {arr[h, q, k]:.4g} on the later "
                         f"key {k}; expected 0 above the diagonal (is the pattern transposed, [k, q]?)")
    sums = arr.sum(-1)
    bad = np.abs(sums - 1) > tol
    if bad.any():
        h, q = np.argwhere(bad)[0]
        raise ValueError(f"pattern rows must sum to 1 over the key positions, head {h} query {q} sums to "
                         f"{sums[h, q]:.6g} (softmax over the last axis, key_pos)")


class AttentionViewer:
    """An interactive attention viewer; display it in a notebook or write it to a page.

    Attributes: ``tokens`` (list of ``n`` str), ``pattern`` (float64 ndarray
    ``[n_heads, n, n]``, a copy), ``head_names`` (list of str), ``element_id``
    (the id of the root ``<div>``, unique per viewer), ``query`` (the query
    position shown first).
    """

    def __init__(self, tokens: list[str], pattern: np.ndarray, head_names: list[str], query: int,
                 title: str | None = None):
        self.tokens = tokens
        self.pattern = pattern
        self.head_names = head_names
        self.query = query
        self.title = title
        # Unique per viewer within a process (the counter), yet the same when a notebook is
        # re-executed from the top (no randomness), so stored outputs compare equal in nbval.
        digest = hashlib.sha1(self._payload().encode() + (title or "").encode()).hexdigest()[:10]
        self.element_id = f"tlv-{digest}-{next(_COUNTER)}"

    def _payload(self) -> str:
        data = {"tokens": [_display_token(t) for t in self.tokens], "heads": self.head_names,
                "query": self.query,
                # float64 repr round-trips, so the page holds the exact weights (float32 values too)
                "pattern": [[[float(w) for w in row] for row in head] for head in self.pattern]}
        # JSON inside <script>: escape "<" so no token can close the element.
        return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")

    def to_html(self) -> str:
        """The self-contained HTML fragment (``<div>`` with inline ``<style>``, JSON and ``<script>``)."""
        vid = self.element_id
        options = "".join(f'<option value="{h}">{html.escape(name)}</option>'
                          for h, name in enumerate(self.head_names))
        toks = "".join(
            f'<span class="tlv-tok" tabindex="0" data-pos="{k}"><span class="tlv-t">'
            f'{html.escape(_display_token(t))}</span><span class="tlv-w"></span></span>'
            for k, t in enumerate(self.tokens))
        title = f"<strong>{html.escape(self.title)}</strong>" if self.title else ""
        return (
            f'<div id="{vid}" class="toylab-attention-viewer" data-n-heads="{len(self.head_names)}">'
            f"<style>{_CSS.format(id=vid)}</style>"
            f'<div class="tlv-bar">{title}<label>head <select id="{vid}-head">{options}</select></label></div>'
            f'<div class="tlv-toks">{toks}</div>'
            f'<div class="tlv-readout"></div>'
            f'<div class="tlv-nojs">(interactive viewer: its script has not run. In Jupyter, run the cell '
            f"to trust its output.)</div>"
            f'<script type="application/json" id="{vid}-data">{self._payload()}</script>'
            f"<script>{_JS.replace('{id}', vid)}</script>"
            f"</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path) -> None:
        """Write a standalone HTML page holding this viewer (UTF-8), atomically: a failed write (a full
        disk, a read-only folder, a folder at ``path``) raises :class:`toylab.files.SaveError` with a
        sentence and leaves the page already at ``path`` untouched."""
        import os
        from pathlib import Path

        from toylab.files import atomic_write, check_writable

        if not isinstance(path, (str, os.PathLike)) or str(path) == "":
            raise TypeError(f"path must be a file path (str or pathlib.Path) such as 'viewer.html', got {path!r}")
        page = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>attention viewer</title></head>'
                f"<body>{self.to_html()}</body></html>")
        check_writable(path, example="viewer.html")  # a folder at path: say "such as DIR/viewer.html"
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))

    def __repr__(self) -> str:
        return (f"AttentionViewer({len(self.head_names)} heads, {len(self.tokens)} tokens; "
                "display it in a notebook to interact)")


def attention_viewer(tokens: Sequence[str], pattern: Any, head_names: Sequence[str] | None = None, *,
                     query: int = -1, title: str | None = None, tol: float = _TOL) -> AttentionViewer:
    """An interactive viewer of attention patterns over one sequence.

    Args:
        tokens: ``n`` strings, the sequence as text (e.g. ``[str(t) for t in ids]``).
        pattern: ``[n_heads, n, n]`` attention probabilities ``A[h, q, k]`` (torch tensor,
            ndarray or nested lists), e.g. ``cache["pattern", layer][b]``. Each row ``q``
            must be causal (``A[h, q, k] = 0`` for ``k > q``) and sum to 1, within ``tol``.
        head_names: ``n_heads`` labels, default ``"head 0", "head 1", ...``.
        query: the query position shown before any hover (default the last, ``-1``).
        title: optional caption.
        tol: tolerance of the row-sum and causality checks.

    Returns:
        An :class:`AttentionViewer`; in a notebook it displays itself. Hovering over token ``q``
        shades every token ``k`` by ``A[head, q, k]``.

    Raises:
        ValueError / TypeError with a sentence when the shapes, lengths or probabilities are wrong.
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of strings, one per position, not one string "
                        "(use list(text) for characters)")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string (or None), got {type(title).__name__}")
    try:
        tokens = list(tokens)
    except TypeError:
        raise TypeError(f"tokens must be a sequence of strings, one per position, got {type(tokens).__name__}") from None
    if not all(isinstance(t, str) for t in tokens):
        bad = next(t for t in tokens if not isinstance(t, str))
        raise TypeError(f"tokens must be strings, got {type(bad).__name__} {bad!r}: convert ids with str() "
                        "or a tokenizer's decode")
    arr = _as_array(pattern)
    if head_names is None:
        head_names = [f"head {h}" for h in range(arr.shape[0])] if arr.ndim == 3 else []
    if isinstance(head_names, str):
        raise TypeError("head_names must be a sequence of strings, one per head, not one string")
    try:
        head_names = [str(h) for h in head_names]
    except TypeError:
        raise TypeError(f"head_names must be a sequence of strings, got {type(head_names).__name__}") from None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    _check(tokens, arr, head_names, float(tol))
    n = arr.shape[1]
    if not isinstance(query, (int, np.integer)) or isinstance(query, bool) or not -n <= query < n:
        raise ValueError(f"query must be a position in [-{n}, {n}), got {query!r}")
    return AttentionViewer(tokens, arr, head_names, int(query) % n, title)


def heads_from_cache(cache, batch_index: int = 0, layers: Sequence[int] | None = None):
    """Every head's pattern of one sequence, stacked, with its ``L{layer}H{head}`` name.

    Args:
        cache: an ``ActivationCache`` holding ``blocks.{l}.attn.hook_pattern``
            ``[batch, n_heads, q, k]`` for the layers asked for.
        batch_index: which sequence of the batch.
        layers: the layers to include (default: every layer in the cache, in order).

    Returns:
        ``(pattern [len(layers) * n_heads, q, k], names)``, ready for :func:`attention_viewer`.
    """
    import torch

    if not (hasattr(cache, "__getitem__") and hasattr(cache, "__iter__")) or isinstance(cache, (str, torch.Tensor)):
        raise TypeError(f"cache must be an ActivationCache (model.run_with_cache(tokens)[1]), got {type(cache).__name__}")
    if isinstance(batch_index, bool) or not isinstance(batch_index, (int, np.integer)):
        raise TypeError(f"batch_index must be an integer, got {batch_index!r}")
    if layers is not None and (isinstance(layers, (str, int)) or not hasattr(layers, "__iter__")):
        raise TypeError(f"layers must be a list of layer indices (e.g. [0, 1]), got {layers!r}")
    if layers is None:
        layers = sorted(int(name.split(".")[1]) for name in cache if name.endswith("attn.hook_pattern"))
    if not layers:
        raise ValueError("the cache holds no attention pattern (blocks.{l}.attn.hook_pattern): run "
                         "run_with_cache without a names_filter that drops them")
    pats, names = [], []
    for layer in layers:
        try:
            p = cache["pattern", layer]
        except KeyError as e:
            raise ValueError(f"layers: {e.args[0] if e.args else e}") from None
        if not -p.shape[0] <= batch_index < p.shape[0]:
            raise ValueError(f"batch_index {batch_index} is out of range for a batch of {p.shape[0]}")
        pats.append(p[batch_index])
        names += [f"L{layer}H{h}" for h in range(p.shape[1])]
    return torch.cat(pats, 0), names
