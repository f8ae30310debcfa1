"""Reference circuits derived from a model's own heads, to score discovered circuits against.

:func:`induction_circuit`: in a model with a previous-token head in layer 0
and induction heads in the last layer (the lab's ``induction-2l``), the
induction circuit of Olsson et al. as edges of the graph:

- ``embed -> P.v``: the previous-token head ``P`` moves the *token* one position on;
- ``P -> I.k``: K-composition, the induction head ``I`` keys on "the token before was x";
- ``embed -> I.q``: it queries with the current token;
- ``embed -> I.v`` and ``I -> logits``: it copies the attended token into the output.

With ``composition=True`` the circuit also takes every
layer-0 -> last-layer edge that the *weights* say is used: ``a -> b.q``
(``.k``, ``.v``) when the Q- (K-, V-) composition score of heads ``a, b``
(:mod:`toylab.circuits.composition`) is at least ``min_ratio`` times the mean score of
random heads, with ``embed -> a.v`` for each such ``a`` (that head moves
tokens too). On the first shipped ``induction-2l`` this added the second
route chapter 3 found by reading the weights (head L1H0 as a two-token
induction head); ``min_ratio`` is a judgement call (trained heads compose
above chance almost everywhere), so the minimal circuit is the default.

``P`` is the layer-0 head with the largest previous-token score; the
induction heads are the last-layer heads whose induction score is at least
``threshold`` (at least the best one), both measured on ``tokens`` by the
detectors of :mod:`toylab.circuits.scores`, so no head index is hard-coded.
"""

from __future__ import annotations

import math

import torch

from toylab.discovery.graph import Circuit, Graph, check_graph, head_name
from toylab.discovery.metrics import check_induction_batch
from toylab.circuits.composition import relative_composition_scores
from toylab.circuits.scores import head_detector_scores


def induction_heads(model, tokens: torch.Tensor, threshold: float = 0.5) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """``(previous-token head, [induction heads])`` as ``(layer, head)`` pairs, from the detectors on
    ``tokens [batch, pos]`` (sequences with repeats); needs at least two layers."""
    if not callable(getattr(model, "check_tokens", None)):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    _check_number(threshold, "threshold", 0.0, 1.0)  # an induction score lies in [0, 1]
    if model.cfg.n_layers < 2:
        raise ValueError(f"an induction circuit needs at least two layers; this model has {model.cfg.n_layers}")
    with torch.no_grad():
        scores = head_detector_scores(model, tokens, exclude_bos=True)
    prev = (0, int(scores["previous_token"][0].argmax()))
    last = model.cfg.n_layers - 1
    ind = scores["induction"][last]
    heads = [(last, h) for h in range(model.cfg.n_heads) if float(ind[h]) >= threshold]
    if not heads:
        heads = [(last, int(ind.argmax()))]
    return prev, heads


def induction_circuit(model, graph: Graph, tokens: torch.Tensor, threshold: float = 0.5,
                      composition: bool = False, min_ratio: float = 1.0) -> Circuit:
    """The induction circuit (module doc) of ``model`` as a :class:`Circuit` of ``graph``.

    ``tokens [batch, pos]``: sequences with repeats for the detectors; ``threshold``: the induction
    score that makes a last-layer head an induction head; ``composition``/``min_ratio``: add the
    composition edges read off the weights (module doc).
    """
    check_graph(graph).check_model(model)
    if not isinstance(composition, bool):
        raise TypeError(f"composition must be True or False, got {composition!r}")
    _check_number(min_ratio, "min_ratio")
    prev, heads = induction_heads(model, tokens, threshold)
    p = head_name(*prev)
    edges = [f"embed->{p}.v"]
    for l, h in heads:
        i = head_name(l, h)
        edges += [f"{p}->{i}.k", f"embed->{i}.q", f"embed->{i}.v", f"{i}->logits"]
    if composition:
        last = model.cfg.n_layers - 1
        for kind in ("Q", "K", "V"):
            rel = relative_composition_scores(model, kind)[0, :, last]  # [heads of layer 0, heads of last layer]
            for a in range(model.cfg.n_heads):
                for l, b in heads:
                    if float(rel[a, b]) >= min_ratio:
                        edges += [f"{head_name(0, a)}->{head_name(l, b)}.{kind.lower()}", f"embed->{head_name(0, a)}.v"]
    return graph.circuit(edges)


def induction_hypotheses(model, graph: Graph, tokens: torch.Tensor, threshold: float = 0.5) -> dict:
    """Causal-scrubbing hypotheses for induction, ``{name: Hypothesis}`` (every named edge ``"identity"``).

    The ladder, each step adding to the one before (``P``, ``I`` as in :func:`induction_circuit`):

    - ``"layer-1 heads only"``: ``I -> logits`` (what the heads read is resampled);
    - ``"+ K-composition"``: ``P -> I.k`` and ``embed -> P.v``;
    - ``"+ tokens into queries and values"``: ``embed -> I.q``, ``embed -> I.v`` (the minimal circuit);
    - ``"full circuit"``: :func:`induction_circuit` with the composition edges read off the weights
      (``composition=True``);

    and ``"layer-1 reading tokens only"``: ``I -> logits`` with ``embed -> I.q, I.k, I.v``, no layer 0.
    """
    from toylab.discovery.scrubbing import Hypothesis

    check_graph(graph).check_model(model)
    prev, heads = induction_heads(model, tokens, threshold)
    p = head_name(*prev)
    ind = [head_name(l, h) for l, h in heads]
    steps = [[f"{i}->logits" for i in ind],
             [f"{p}->{i}.k" for i in ind] + [f"embed->{p}.v"],
             [f"embed->{i}.{s}" for i in ind for s in "qv"]]
    out, edges = {}, []
    for name, step in zip(("layer-1 heads only", "+ K-composition", "+ tokens into queries and values"), steps):
        edges = edges + step
        out[name] = Hypothesis({e: "identity" for e in edges})
    out["full circuit"] = Hypothesis.from_circuit(induction_circuit(model, graph, tokens, threshold, composition=True))
    out["layer-1 reading tokens only"] = Hypothesis(
        {e: "identity" for e in [f"{i}->logits" for i in ind] + [f"embed->{i}.{s}" for i in ind for s in "qkv"]})
    for h in out.values():
        for e in h.edges:
            graph.edge_index(e)
    return out



def _check_number(v, name: str, low: float = 0.0, high: float = math.inf) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {v!r}")


def copied_positions(batch) -> torch.Tensor:
    """``[N, pos]`` bool: the positions of the copied segment, its source ``d-o .. d-o+min(L, o)-1`` and the
    copy ``d .. d+L-1`` (every other position is noise drawn independently; ``batch``: an
    :class:`~toylab.data.induction.InductionBatch`)."""
    check_induction_batch(batch)
    N, n = batch.tokens.shape
    pos = torch.arange(n)[None]
    d, o, L = (t[:, None] for t in (batch.dst_start, batch.offset, batch.length))
    src = (pos >= d - o) & (pos < d - o + torch.minimum(L, o))
    return batch.has_repeat[:, None] & (src | ((pos >= d) & (pos < d + L)))


def distractors(batch, within: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, pos]`` bool at logit positions: where induction has a *wrong* earlier match to follow.

    At a logit position ``p`` (predicting ``x_{p+1}``) an induction head queries with ``x_p`` and looks for
    a key ``j <= p`` whose previous token ``x_{j-1}`` equals it, then copies ``x_j``. The true match is
    ``j = p + 1 - o`` (``o`` the offset); a *distractor* is any other ``1 <= j <= p`` with
    ``x_{j-1} = x_p`` and ``x_j != x_{p+1}`` (a chance repeat, which would copy a wrong token).
    ``within [N, pos]`` (bool, optional): count only matches whose token ``x_{j-1}`` lies there (e.g.
    ``~copied_positions(batch)``: chance matches in the noise). ``batch``: an InductionBatch.
    """
    check_induction_batch(batch)
    x = batch.tokens
    N, n = x.shape
    nxt = torch.zeros_like(x)
    nxt[:, :-1] = x[:, 1:]
    prev = torch.zeros_like(x)
    prev[:, 1:] = x[:, :-1]
    p = torch.arange(n)[None, :, None]
    j = torch.arange(n)[None, None, :]
    match = (prev[:, None, :] == x[:, :, None]) & (j >= 1) & (j <= p)  # [N, p, j]
    wrong = x[:, None, :] != nxt[:, :, None]
    true_key = (p + 1 - batch.offset[:, None, None]) == j
    found = match & wrong & ~true_key
    if within is not None:
        if not isinstance(within, torch.Tensor) or within.shape != x.shape or within.dtype != torch.bool:
            raise ValueError(f"within must be a bool mask {list(x.shape)} over the matched token's position")
        prev_in = torch.zeros_like(within)
        prev_in[:, 1:] = within[:, :-1]
        found = found & prev_in[:, None, :]
    out = found.any(-1)
    out[:, -1] = False
    return out
