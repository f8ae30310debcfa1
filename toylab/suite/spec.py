"""What a suite model is: its task (clean and corrupted inputs, where the metric reads) and its truth.

A :class:`PlantedCircuit` names a preset, the seeds it is trained at, how to draw its task from the
generator, and its truth: the set of edges of the discovery graph (:mod:`toylab.discovery.graph`) that
carry the planted rule. The truth is a function of the generator's labels and the graph, never of a
method under test; :mod:`toylab.suite` checks it by intervention before any method is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """One batch of a suite model's task.

    ``clean [batch, pos]`` and ``corrupted [batch, pos]`` are token ids (the corrupted run is the
    resample ablation source: the same structure, the planted information destroyed); ``positions
    [batch, pos]`` (bool, or ``None`` for every position) marks where the metric reads the logits.
    ``description`` says in a sentence what the clean and corrupted inputs are.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    positions: torch.Tensor | None
    description: str

    def __post_init__(self) -> None:
        for name in ("clean", "corrupted"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype != torch.long:
                raise ValueError(f"Task.{name} must be a long tensor [batch, pos] of token ids, got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"Task.clean and Task.corrupted must have one shape, got {list(self.clean.shape)} "
                             f"and {list(self.corrupted.shape)}")
        p = self.positions
        if p is not None and (not isinstance(p, torch.Tensor) or p.dtype != torch.bool or p.shape != self.clean.shape):
            raise ValueError(f"Task.positions must be None or a bool tensor shaped like clean "
                             f"{list(self.clean.shape)}, got {getattr(p, 'shape', type(p).__name__)}")
        if p is not None and not bool(p.any()):
            raise ValueError("Task.positions marks no position: the metric would read nothing")


@dataclass(frozen=True)
class PlantedCircuit:
    """A suite model whose truth is a circuit.

    ``name``: the suite's name for it; ``preset``: the training preset (:mod:`toylab.training.presets`);
    ``seeds``: the seeds it is trained and scored at; ``make_task(model, seed, n) -> Task``: ``n``
    sequences from the generator (``seed`` fixes the draw); ``truth(model, graph) -> frozenset[str]``:
    the edge names that carry the planted rule, from the generator's labels (which heads attend where
    the rule says may be read off attention on generator-labelled positions; no discovery method is
    run); ``trap``: which methods this model is built to trip, and why, in a sentence.
    """

    name: str
    preset: str
    seeds: tuple[int, ...]
    make_task: Callable[..., Task]
    truth: Callable[..., frozenset]
    trap: str
