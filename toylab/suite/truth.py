"""The intervention check of a planted truth: does the truth carry the behaviour, and only it?

**Behaviour**, defined once for the whole suite: the KL divergence from the clean run's
next-token distribution, at the task's positions (:func:`toylab.discovery.metrics.kl_to_clean`),

    B(run) = mean_{(b, p) in task.positions} KL(softmax(clean logits) || softmax(run's logits)),

so the clean model has ``B = 0`` and the run with *every* edge patched to the source has the gap
``B_all``. With the source ``"resample"`` (the task's corrupted tokens), ``"zero"`` or ``"mean"``
(:mod:`toylab.discovery.edge_patching`):

- ``kept = 1 - B(every edge outside the truth patched) / B_all`` (the truth alone keeps this much);
- ``removed = B(every truth edge patched) / B_all`` (removing the truth destroys this much).

A truth passes when ``kept >= 0.9`` and ``removed >= 0.8`` (the issue's rule). The patching is
exact (:func:`toylab.discovery.edge_patching.run_with_edges`), three runs in one forward pass.

**Dense behaviour** (the negative control, :func:`check_dense`): no truth to keep. What a method
should report there is low confidence; the check says that no *small* circuit keeps the behaviour:
over every set of at most half the heads, the circuit of those heads (their edges, with the
embedding's and positions' edges into them and into the logits) keeps less than 90 %.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from toylab.discovery.edge_patching import check_model_graph, run_with_edges
from toylab.discovery.graph import Circuit, check_circuit
from toylab.discovery.metrics import kl_to_clean
from toylab.suite.spec import Task

MIN_KEPT = 0.9
MIN_REMOVED = 0.8
SOURCES = ("resample", "zero", "mean")


@dataclass(frozen=True)
class TruthCheck:
    """The result of :func:`check_truth`: ``kept`` and ``removed`` fractions of the behaviour, the gap
    ``B_all`` (nats) they are fractions of, the ``source`` patched in, the edge count, and ``passed``."""

    kept: float
    removed: float
    gap: float
    source: str
    n_edges: int
    passed: bool


def _check_task(task) -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a toylab.suite.spec.Task, got {type(task).__name__}")
    return task


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} (the task's corrupted tokens, zero or mean "
                         f"ablation), got {source!r}")
    return source


def source_of(task: Task, source: str):
    """What the discovery functions take as ``corrupted`` for ``source``: the task's corrupted tokens
    for ``"resample"``, else the string ``"zero"`` or ``"mean"``."""
    _check_source(source)
    return task.corrupted if source == "resample" else source


def behaviour_metric(model, task: Task):
    """The suite's behaviour ``M`` (module doc): KL to the clean run at ``task.positions``."""
    task = _check_task(task)
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


def _check_fraction(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
    return float(v)


def _behaviours(model, graph, task: Task, source: str, masks: torch.Tensor) -> torch.Tensor:
    """``B`` (module doc) of each row of ``masks [G, n_edges]`` (True: the edge is patched), ``[G]``."""
    metric = behaviour_metric(model, task)
    with torch.no_grad():
        return run_with_edges(model, graph, task.clean, source_of(task, source), masks, metric).double()


def check_truth(model, graph, circuit: Circuit | Iterable[str], task: Task, source: str = "resample",
                min_kept: float = MIN_KEPT, min_removed: float = MIN_REMOVED) -> TruthCheck:
    """Check a planted truth by intervention (module doc): the fractions of the behaviour it keeps alone
    and destroys when removed.

    Args:
        model, graph: the model and its :class:`~toylab.discovery.graph.Graph`.
        circuit: the truth, a :class:`~toylab.discovery.graph.Circuit` of ``graph`` or edge names.
        task: the :class:`~toylab.suite.spec.Task` (clean and corrupted tokens ``[batch, pos]``, positions).
        source: ``"resample"`` (patch in the task's corrupted run), ``"zero"`` or ``"mean"``.
        min_kept, min_removed: the pass thresholds (the issue's 0.9 and 0.8).

    Returns:
        :class:`TruthCheck` with ``kept = 1 - B_keep / B_all``, ``removed = B_remove / B_all``.
    """
    check_model_graph(model, graph)
    task = _check_task(task)
    source = _check_source(source)
    min_kept, min_removed = _check_fraction(min_kept, "min_kept"), _check_fraction(min_removed, "min_removed")
    if not isinstance(circuit, Circuit):
        if isinstance(circuit, str):
            raise TypeError("circuit must be a Circuit or a collection of edge names, not one string")
        circuit = graph.circuit(circuit)
    circuit = check_circuit(circuit, graph, "circuit")
    mask = circuit.mask
    masks = torch.stack([torch.ones_like(mask), ~mask, mask])
    b_all, b_keep, b_remove = (float(v) for v in _behaviours(model, graph, task, source, masks))
    if not b_all > 1e-9:
        raise ValueError(f"patching every edge to the {source} source changes nothing at the task's positions "
                         f"(B_all = {b_all:.3g} nats): the task measures no behaviour to keep or remove")
    kept, removed = 1.0 - b_keep / b_all, b_remove / b_all
    return TruthCheck(kept, removed, b_all, source, len(circuit.edges),
                      bool(kept >= min_kept and removed >= min_removed))


def heads_circuit(graph, heads: Iterable[str]) -> frozenset[str]:
    """The circuit of a set of heads: every edge between them, from ``embed``/``pos`` into them and from
    them or ``embed``/``pos`` into the logits (and every MLP edge, in a model with MLPs)."""
    keep = set(heads)
    inputs = {"embed", "pos"}
    out = set()
    for e in graph.edges:
        rnode = e.receiver.split(".")[0]
        s_ok = e.sender in inputs or e.sender in keep or e.sender.startswith("MLP")
        r_ok = rnode == "logits" or rnode in keep or rnode.startswith("MLP")
        if s_ok and r_ok:
            out.add(e.name)
    return frozenset(out)


@dataclass(frozen=True)
class DenseCheck:
    """The result of :func:`check_dense`: the best kept fraction of a circuit of at most ``max_heads``
    heads (``best_heads``), the fraction each single head's removal destroys (``removed_by_head``), the
    gap and source, and ``passed`` (``best_kept < min_kept``: no small circuit carries the behaviour)."""

    best_kept: float
    best_heads: tuple[str, ...]
    max_heads: int
    removed_by_head: dict
    gap: float
    source: str
    passed: bool


def check_dense(model, graph, task: Task, source: str = "resample", max_fraction: float = 0.5,
                min_kept: float = MIN_KEPT) -> DenseCheck:
    """The negative control's check (module doc): over every set of at most ``max_fraction`` of the
    heads (at most 4096 sets), the kept fraction of :func:`heads_circuit`; passes when the best one keeps
    less than ``min_kept``. Also the fraction each single head's removal destroys."""
    check_model_graph(model, graph)
    task = _check_task(task)
    source = _check_source(source)
    max_fraction, min_kept = _check_fraction(max_fraction, "max_fraction"), _check_fraction(min_kept, "min_kept")
    heads = [n.name for n in graph.nodes if n.kind == "head"]
    k_max = int(len(heads) * max_fraction)
    subsets = [c for k in range(k_max + 1) for c in itertools.combinations(heads, k)]
    if len(subsets) > 4096:
        raise ValueError(f"{len(subsets)} head sets to try: check_dense enumerates them all, so it is for "
                         f"small models (lower max_fraction)")
    everything = heads_circuit(graph, heads)
    rows = [torch.ones(len(graph), dtype=torch.bool)]
    rows += [~graph.mask(heads_circuit(graph, s)) for s in subsets]
    rows += [graph.mask(everything - heads_circuit(graph, [h for h in heads if h != x])) for x in heads]
    b = _behaviours(model, graph, task, source, torch.stack(rows))
    b_all = float(b[0])
    if not b_all > 1e-9:
        raise ValueError(f"patching every edge to the {source} source changes nothing at the task's positions")
    kept = 1.0 - b[1:1 + len(subsets)] / b_all
    best = int(kept.argmax())
    removed = {h: float(v) / b_all for h, v in zip(heads, b[1 + len(subsets):])}
    return DenseCheck(float(kept[best]), tuple(subsets[best]), k_max, removed, b_all, source,
                      bool(float(kept[best]) < min_kept))


def truth_holds(kept: float, removed: float) -> bool:
    """Whether a truth passes the issue's bar: ``kept >= 0.9`` and ``removed >= 0.8``."""
    return kept >= MIN_KEPT and removed >= MIN_REMOVED
