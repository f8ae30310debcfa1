"""Reading a planted circuit's heads off their attention at generator-labelled positions.

The truth rule of the suite (issue 23): the truth comes from the generator. Which head plays which
part may be read off its attention *at the positions the generator labels* (where a copy's source
lies, where a rule's ``A`` sits); no discovery method is run. Each reader returns per-head scores,
the mean attention on the labelled (query, key) pairs, ``[n_layers, n_heads]``.

- :func:`attention_scores`: the mean of ``pattern[b, h, q, k]`` over labelled ``(b, q, k)`` triples;
- :func:`induction_scores`: induction (query ``p``, key ``p + 1 - o``) at the logit positions of a
  copy, and previous-token (query ``j``, key ``j - 1``) at the keys those queries need;
- :func:`two_back_scores`: two-back (query ``j``, key ``j - 2``) at the keys a copy's induction
  head reads (the second token of a two-token match);
- :func:`induction_edges`: the induction circuit's edges for the heads the scores pick.
"""

from __future__ import annotations

import torch

from toylab.model import head_name


@torch.no_grad()
def attention_scores(model, tokens: torch.Tensor, b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]``: mean attention from query ``q`` to key ``k`` in row ``b`` over the triples
    ``(b, q, k)`` (LongTensors ``[N]``, ``N >= 1``) of ``tokens [batch, pos]``."""
    if b.numel() == 0:
        raise ValueError("no labelled (row, query, key) triples to read attention on")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", l][b, :, q, k].mean(0) for l in range(model.cfg.n_layers)])


def induction_triples(positions: torch.Tensor, offset: torch.Tensor) -> tuple:
    """The labelled pairs of a copy at offset ``offset [b]``: logit positions ``positions [b, pos]``
    (``p`` predicts the copied ``x_{p+1} = x_{p+1-o}``) with the key ``p + 1 - o`` an induction head reads,
    and the pairs ``(p + 1 - o, p - o)`` a previous-token head must attend along. Returns
    ``(b, q, k)`` for induction and ``(b, q, k)`` for previous-token, LongTensors ``[N]``."""
    rows, qs = positions.nonzero(as_tuple=True)
    keys = qs + 1 - offset[rows]
    ok = keys >= 1
    rows, qs, keys = rows[ok], qs[ok], keys[ok]
    return (rows, qs, keys), (rows, keys, keys - 1)


def induction_scores(model, tokens: torch.Tensor, positions: torch.Tensor, offset: torch.Tensor):
    """``(induction [n_layers, n_heads], previous_token [n_layers, n_heads])`` read on the labelled pairs
    of :func:`induction_triples`."""
    ind, prev = induction_triples(positions, offset)
    return attention_scores(model, tokens, *ind), attention_scores(model, tokens, *prev)


def two_back_scores(model, tokens: torch.Tensor, positions: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]``: mean attention along ``(k, k - 2)`` at the keys ``k = p + 1 - o`` (``k >= 2``)
    an induction head reads from the logit positions ``p`` of :func:`induction_triples`. In a copy
    ``x_{p-1} = x_{k-2}``: a head that moves ``x_{k-2}`` to ``k`` lets the induction head match two tokens
    (its query's previous token, moved by the previous-token head, against the key's ``x_{k-2}``)."""
    (rows, _, keys), _ = induction_triples(positions, offset)
    ok = keys >= 2
    return attention_scores(model, tokens, rows[ok], keys[ok], keys[ok] - 2)


def induction_edges(model, ind: torch.Tensor, prev: torch.Tensor, ind_min: float = 0.3,
                    prev_min: float = 0.3, pos_edges: bool = True, back2: torch.Tensor | None = None,
                    back2_min: float = 0.3) -> frozenset[str]:
    """The induction circuit of the heads the scores pick: previous-token heads ``P`` (layer 0, score
    ``>= prev_min``) and induction heads ``I`` (last layer, score ``>= ind_min``).

    Edges: ``embed -> P.v`` (``P`` moves the token on), ``pos -> P.q``, ``pos -> P.k`` (it finds the
    previous position by position; with ``pos_edges`` and a model with positions), ``P -> I.k``
    (K-composition), ``embed -> I.q``, ``embed -> I.v`` and ``I -> logits`` (``I`` queries with the
    current token and copies the attended one). Empty if no ``P`` or no ``I`` formed.

    The two-token match, with ``back2`` (:func:`two_back_scores`): layer-0 heads ``T`` (not a ``P``)
    with two-back score ``>= back2_min`` move ``x_{k-2}`` to each key; then ``embed -> T.v``,
    ``pos -> T.q``, ``pos -> T.k``, ``T -> I.k`` and ``P -> I.q`` (the query's previous token, matched
    against it) join the circuit."""
    last = model.cfg.n_layers - 1
    P = [head_name(0, h) for h in range(model.cfg.n_heads) if float(prev[0, h]) >= prev_min]
    I = [head_name(last, h) for h in range(model.cfg.n_heads) if float(ind[last, h]) >= ind_min]
    if not P or not I:
        return frozenset()
    edges = set()
    for p in P:
        edges.add(f"embed->{p}.v")
        if pos_edges and model.cfg.positional != "none":
            edges |= {f"pos->{p}.q", f"pos->{p}.k"}
    for i in I:
        edges |= {f"{p}->{i}.k" for p in P} | {f"embed->{i}.q", f"embed->{i}.v", f"{i}->logits"}
    T = [] if back2 is None else [head_name(0, h) for h in range(model.cfg.n_heads)
                                  if float(back2[0, h]) >= back2_min and head_name(0, h) not in P]
    for t in T:
        edges.add(f"embed->{t}.v")
        if pos_edges and model.cfg.positional != "none":
            edges |= {f"pos->{t}.q", f"pos->{t}.k"}
        edges |= {f"{t}->{i}.k" for i in I} | {f"{p}->{i}.q" for p in P for i in I}
    return frozenset(edges)


def heads_of(edges) -> list[str]:
    """The heads named in ``edges`` (as senders or receivers), sorted."""
    out = set()
    for e in edges:
        s, r = e.split("->")
        for n in (s, r.split(".")[0]):
            if n.startswith("L") and "H" in n:
                out.add(n)
    return sorted(out)
