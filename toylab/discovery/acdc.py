"""ACDC: automated circuit discovery by recursive edge patching (Conmy et al. 2023).

Start from the full graph (nothing patched). Visit the receivers in reverse
topological order (the logits first, then the last layer's MLP input if the
model has MLPs, its heads' ``v, k, q`` inputs, down to layer 0). For each incoming edge ``e`` of the receiver, in
``sender_order``, patch ``e`` on top of everything removed so far and
measure ``M``; if

    M(G without e) - M(G) < tau

the edge is removed for good (``M(G) <- M(G without e)``), else it is kept.
A head (or an MLP) none of whose outgoing edges survived cannot affect the output, so
its incoming edges are removed without a test (``skip_dead=True``).

``M`` defaults to the KL divergence of the patched output from the clean
output (:func:`~toylab.discovery.metrics.kl_to_clean`, ``M = 0`` for the full
graph). Patching reads the sender's output on the corrupted tokens, or 0
(``corrupted="zero"``, zero ablation), or its mean over the clean batch (``"mean"``). Each test is one forward pass.
:func:`acdc_sweep` runs several thresholds; score the circuits with
:mod:`toylab.discovery.roc`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from toylab.discovery.edge_patching import _source_outputs, check_model_graph, check_pair, run_with_edges
from toylab.discovery.graph import Circuit, Graph
from toylab.discovery.metrics import check_metric, kl_to_clean

SENDER_ORDERS = ("reverse", "forward")


@dataclass
class AcdcResult:
    """What one ACDC run found.

    ``circuit``: the kept edges; ``tau``; ``metric``: ``M`` of the final graph; ``n_evaluations``:
    forward passes spent on tests; ``log``: ``(edge name, M(without e) - M(before), removed)`` per test.
    """

    circuit: Circuit
    tau: float
    metric: float
    n_evaluations: int
    log: list = field(default_factory=list)


def check_tau(tau) -> float:
    """``tau`` as a float; ``ValueError`` unless it is a finite number >= 0."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a number >= 0, got {type(tau).__name__}")
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0 (a metric increase that is still tolerated), got {tau}")
    return tau


def _order(graph: Graph, incoming: list[int], sender_order) -> list[int]:
    if isinstance(sender_order, str):
        if sender_order not in SENDER_ORDERS:
            raise ValueError(f"sender_order must be one of {SENDER_ORDERS} or a list of node names, "
                             f"got {sender_order!r}")
        return incoming[::-1] if sender_order == "reverse" else list(incoming)
    if not isinstance(sender_order, (list, tuple)):
        raise TypeError(f"sender_order must be 'reverse', 'forward' or a list of node names, "
                        f"got {type(sender_order).__name__}")
    rank = {}
    for i, name in enumerate(sender_order):
        graph.node(name)
        if name in rank:
            raise ValueError(f"a sender order lists each node once; {name!r} appears twice")
        rank[name] = i
    missing = [n.name for n in graph.nodes if n.name not in rank]
    if missing:
        raise ValueError(f"a sender order must list every node; missing {missing}")
    return sorted(incoming, key=lambda i: rank[graph.edges[i].sender])


def acdc(model, graph: Graph, clean, corrupted, tau: float, metric: Callable | None = None, positions=None,
         sender_order: str | Sequence[str] = "reverse", skip_dead: bool = True) -> AcdcResult:
    """Run ACDC at threshold ``tau`` (see the module doc) -> :class:`AcdcResult`.

    ``clean [batch, pos]``, ``corrupted`` tokens of the same shape, ``"zero"`` or ``"mean"``; ``metric``
    ``logits [batch, pos, d_vocab] -> scalar`` (default: KL to the clean output on ``positions``, a
    bool mask ``[pos]`` or ``[batch, pos]`` of logit positions); ``sender_order``: ``"reverse"``
    (the latest sender first), ``"forward"`` (the embedding first) or a list of every node name.
    """
    return _acdc(model, graph, clean, corrupted, tau, metric, positions, sender_order, skip_dead, {})


def _acdc(model, graph, clean, corrupted, tau, metric, positions, sender_order, skip_dead, memo) -> AcdcResult:
    """:func:`acdc`, reading and filling ``memo`` (patched edges as bytes -> ``M``)."""
    tau = check_tau(tau)
    check_model_graph(model, graph)
    if not isinstance(skip_dead, bool):
        raise TypeError(f"skip_dead must be True or False, got {skip_dead!r}")
    if metric is not None:
        check_metric(metric)
        if positions is not None:
            raise ValueError("positions selects where the default metric (KL to the clean output) is taken; "
                             "with your own metric, put the positions into the metric instead")
    _order(graph, graph.incoming("logits"), sender_order)  # a bad order is refused before any forward pass
    clean, corrupted = check_pair(model, clean, corrupted)
    if metric is None:
        with torch.no_grad():
            metric = kl_to_clean(model(clean), positions)
    src = _source_outputs(model, graph, clean, corrupted)
    w = torch.zeros(len(graph))

    def evaluate() -> float:
        key = w.to(torch.bool).numpy().tobytes()
        if key not in memo:
            memo[key] = float(run_with_edges(model, graph, clean, corrupted, w, metric, source_outputs=src)[0])
        return memo[key]

    log, n_eval = [], 0
    with torch.no_grad():
        current = evaluate()
        for receiver in reversed(graph.receivers):
            incoming = _order(graph, graph.incoming(receiver), sender_order)
            if skip_dead and receiver != "logits":
                node = receiver.split(".")[0]  # "L1H0.k" -> its head; "MLP0" is its own node
                if all(w[i] == 1 for i in graph.outgoing(node)):
                    w[incoming] = 1.0
                    continue
            for i in incoming:
                w[i] = 1.0
                m = evaluate()
                n_eval += 1
                removed = m - current < tau
                log.append((graph.edges[i].name, m - current, bool(removed)))
                if removed:
                    current = m
                else:
                    w[i] = 0.0
    kept = [graph.edges[i].name for i in range(len(graph)) if w[i] == 0]
    return AcdcResult(graph.circuit(kept), tau, current, n_eval, log)


def acdc_sweep(model, graph: Graph, clean, corrupted, taus: Sequence[float], **kwargs) -> list[AcdcResult]:
    """:func:`acdc` at each threshold of ``taus`` (same arguments otherwise) -> one result per ``tau``.

    The runs share one table of ``M`` per set of patched edges: two thresholds make the same decisions
    until some test's increase lies between them, so the later run reads those tests from the table
    instead of running them again (the same forward passes, so the same numbers bit for bit;
    ``n_evaluations`` still counts every test a run made)."""
    if isinstance(taus, (int, float, str)) or not hasattr(taus, "__iter__"):
        raise TypeError(f"taus must be a list of thresholds, got {type(taus).__name__} {taus!r} "
                        "(for one threshold, call acdc)")
    taus = [check_tau(t) for t in taus]
    if not taus:
        raise ValueError("taus is empty: give at least one threshold")
    allowed = {"metric", "positions", "sender_order", "skip_dead"}
    if set(kwargs) - allowed:
        raise TypeError(f"acdc_sweep got unexpected argument(s) {sorted(set(kwargs) - allowed)}; it takes "
                        f"acdc's {sorted(allowed)}")
    memo: dict = {}
    return [_acdc(model, graph, clean, corrupted, t, kwargs.get("metric"), kwargs.get("positions"),
                  kwargs.get("sender_order", "reverse"), kwargs.get("skip_dead", True), memo) for t in taus]
