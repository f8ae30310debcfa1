"""Checking a suite model's truth by intervention: does the planted circuit carry the behaviour?

**Behaviour** (one definition, used everywhere in the suite): the KL divergence of a run's
next-token distribution from the clean run's, averaged over the task's positions,

    M(run) = mean_{(b, p) in task.positions} KL( softmax(clean logits) || softmax(run logits) )

(:func:`toylab.discovery.metrics.kl_to_clean`). The clean run has ``M = 0``; the fully corrupted
run (every edge of the graph patched to the source) has ``M = gap``. For a circuit ``C``:

    kept    = 1 - M(only C kept, every other edge patched) / gap     (:func:`run_circuit`)
    removed = M(the edges of C patched, every other edge kept) / gap

``kept = 1``: the circuit alone reproduces the clean output; ``removed = 1``: taking it out does as
much damage as corrupting everything. A truth holds when ``kept >= KEEP_MIN`` (0.9) and
``removed >= REMOVE_MIN`` (0.8), the issue's bar. Both fractions can leave ``[0, 1]`` (a circuit
that does worse than the corrupted run); they are not clipped.

The source is ``"resample"`` (the task's corrupted tokens, the default), ``"zero"`` or ``"mean"``
(:mod:`toylab.discovery.edge_patching`).
"""

from __future__ import annotations

import math

import torch

from toylab.discovery.edge_patching import check_model_graph, run_circuit, run_with_edges
from toylab.discovery.graph import check_circuit
from toylab.discovery.metrics import kl_to_clean
from toylab.suite.spec import Task

KEEP_MIN, REMOVE_MIN = 0.9, 0.8
SOURCES = ("resample", "zero", "mean")


def source_of(task: Task, source: str):
    """What the discovery functions take as ``corrupted`` for ``source``: the task's corrupted tokens
    for ``"resample"``, else the string ``"zero"`` or ``"mean"``."""
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return task.corrupted if source == "resample" else source


def behaviour_metric(model, task: Task):
    """The suite's behaviour ``M`` (module doc): KL to the clean run at ``task.positions``."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a toylab.suite.spec.Task, got {type(task).__name__}")
    with torch.no_grad():
        return kl_to_clean(model(task.clean), task.positions)


def behaviour_gap(model, graph, task: Task, source: str = "resample", metric=None) -> float:
    """``M`` of the fully corrupted run (every edge patched to the source); ``ValueError`` if it is ~0
    (the corruption changes nothing at the task's positions, so no fraction of it means anything)."""
    check_model_graph(model, graph)
    metric = behaviour_metric(model, task) if metric is None else metric
    with torch.no_grad():
        gap = float(run_with_edges(model, graph, task.clean, source_of(task, source), torch.ones(len(graph)),
                                   metric)[0])
    if not math.isfinite(gap) or gap < 1e-6:
        raise ValueError(f"the fully corrupted run ({source}) is {gap:.3g} nats from the clean one at the task's "
                         "positions: the corruption removes no behaviour to recover")
    return gap


def check_truth(model, graph, circuit, task: Task, source: str = "resample") -> tuple[float, float]:
    """``(kept, removed)`` of ``circuit`` (a :class:`~toylab.discovery.graph.Circuit` of ``graph``) on
    ``task`` under ``source`` (module doc for the formulas)."""
    check_model_graph(model, graph)
    check_circuit(circuit, graph)
    metric = behaviour_metric(model, task)
    gap = behaviour_gap(model, graph, task, source, metric)
    src = source_of(task, source)
    kept = 1.0 - run_circuit(model, graph, circuit, task.clean, src, metric) / gap
    with torch.no_grad():
        removed = float(run_with_edges(model, graph, task.clean, src, circuit.mask, metric)[0]) / gap
    return kept, removed


def truth_holds(kept: float, removed: float) -> bool:
    """Whether a truth passes the issue's bar: ``kept >= 0.9`` and ``removed >= 0.8``."""
    return kept >= KEEP_MIN and removed >= REMOVE_MIN
