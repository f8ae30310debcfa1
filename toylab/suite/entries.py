"""The suite's models that exist today, with their tasks and truths from the generator.

- ``induction-2l`` (:class:`~toylab.suite.spec.PlantedCircuit`): the induction circuit. The task is a
  batch of the preset's generator; the corrupted run resamples every token *before* the copy
  (``x_p`` for ``1 <= p < d``, fresh uniform tokens), so the copy's source is gone while the query
  tokens stay; the metric reads the logit positions ``q`` whose next token is predictable by
  induction from that source (``is_repeat[q + 1]`` and ``q + 1 - o < d``). The truth's heads are
  read off attention on generator-labelled positions: the previous-token head ``P`` is the layer-0
  head with the largest mean attention ``A[q, q - 1]`` (``q >= 2``); the induction heads ``I`` are the
  last-layer heads whose mean attention to the token after the earlier copy, ``A[q, q + 1 - o]`` at
  the task's positions, is at least :data:`ATTENTION_MIN`. The edges they need:
  ``embed -> P.v`` (the token it moves), ``pos -> P.q``, ``pos -> P.k`` (it finds the previous
  position by position, where positions enter), ``P -> I.k`` (K-composition), ``embed -> I.q``,
  ``embed -> I.v`` and ``I -> logits``; where a layer-0 head ``T`` attends two back at the keys the
  induction heads read (a two-token match: seeds 1 and 2 grow one), also ``embed -> T.v``,
  ``pos -> T.q``, ``pos -> T.k``, ``T -> I.k`` and ``P -> I.q``.
- ``skiptrigram-1l``: the rule table. The task's clean sequences are the generator's; the corrupted
  run replaces every rule source ``A_i`` by a filler token that is no rule's ``A``, ``B`` or ``C``,
  so no rule fires; the metric reads the positions where a rule fires in the clean run. A head
  carries a rule when its mean attention to the firing rule's ``A`` (its most recent position), over
  the positions where that rule fires, is at least :data:`ATTENTION_MIN` (the shipped model splits the
  rules between its two heads by trigger; a rule no head carries is not learned, and a seed where
  fewer than half the rules are carried is excluded); each rule head's edges are ``embed -> H.q`` (the trigger ``B``),
  ``embed -> H.k`` (the source ``A``), ``embed -> H.v`` (``A``'s token, mapped to ``C``) and
  ``H -> logits``.
- ``facts-1l`` (:class:`PlantedFeatures`): the planted fact directions in neuron space
  (:func:`toylab.features.fact_features.planted_fact_directions`), scored by MCC.

A seed whose heads do not reach :data:`ATTENTION_MIN` raises :class:`NoPlantedCircuit`: the suite
reports it and leaves the seed out; the truth is never redefined to fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from toylab.data import make_dataset
from toylab.discovery.graph import head_name
from toylab.discovery.metrics import induction_positions
from toylab.suite.planted import PLANTED
from toylab.suite.spec import PlantedCircuit, Task
from toylab.training.presets import get_preset

ATTENTION_MIN = 0.5
SEEDS = (0, 1, 2)


class NoPlantedCircuit(ValueError):
    """Training did not produce the intended circuit at this seed (the suite excludes the seed)."""


@dataclass(frozen=True)
class PlantedFeatures:
    """A suite model whose truth is a set of feature directions.

    ``planted(model) -> (directions [n_features, width], rows [n_rows, width])``: the planted directions
    and the activations a dictionary is trained on; ``hook``: where they live; ``trap``: as for
    :class:`~toylab.suite.spec.PlantedCircuit`."""

    name: str
    preset: str
    seeds: tuple[int, ...]
    hook: str
    planted: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    trap: str


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * int(seed) + salt)


@torch.no_grad()
def _patterns(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name]  # [b, head, q, k]


# ----------------------------------------------------------------------------------------- induction

def _induction_batch(seed: int, n: int):
    ds = make_dataset(get_preset("induction-2l").data)
    return ds, ds.sample_batch(n, _gen(seed, 23))


def induction_task(model, seed: int, n: int = 64) -> Task:
    """The induction task (module doc): ``n`` generator sequences, their sources resampled."""
    ds, batch = _induction_batch(seed, n)
    clean = batch.tokens
    pos = torch.arange(clean.shape[1])[None]
    d, o = batch.dst_start[:, None], batch.offset[:, None]
    before = (pos >= 1) & (pos < d)
    fresh = torch.randint(1, ds.d_vocab, clean.shape, generator=_gen(seed, 24))
    corrupted = torch.where(before, fresh, clean)
    from_source = induction_positions(batch.is_repeat) & (pos + 1 - o < d)
    return Task(clean, corrupted, from_source,
                "generator sequences with a copied segment; corrupted: every token before the copy resampled, "
                "read where the next token is copied from that source")


def induction_heads_from_labels(model, task: Task, seed: int) -> tuple[int, list[int]]:
    """``(P, [I...])``: the previous-token head of layer 0 and the last layer's induction heads, read off
    attention on the generator's labelled positions (module doc); :class:`NoPlantedCircuit` if absent."""
    _, batch = _induction_batch(seed, task.clean.shape[0])
    A0 = _patterns(model, task.clean, 0)
    prev = torch.diagonal(A0, offset=-1, dim1=2, dim2=3)[:, :, 1:].mean((0, 2))  # A[q, q-1], q >= 2
    p = int(prev.argmax())
    if float(prev[p]) < ATTENTION_MIN:
        raise NoPlantedCircuit(f"no previous-token head: the best layer-0 head attends {float(prev[p]):.2f} "
                               f"to the previous position (< {ATTENTION_MIN})")
    last = model.cfg.n_layers - 1
    A = _patterns(model, task.clean, last)
    b, q = task.positions.nonzero(as_tuple=True)
    key = q + 1 - batch.offset[b]
    score = A[b, :, q, key].mean(0)  # [head]
    heads = [h for h in range(model.cfg.n_heads) if float(score[h]) >= ATTENTION_MIN]
    if not heads:
        raise NoPlantedCircuit(f"no induction head: the best last-layer head attends {float(score.max()):.2f} "
                               f"to the token after the earlier copy (< {ATTENTION_MIN})")
    return p, heads


def induction_truth(model, graph, seed: int = 0, n: int = 64) -> frozenset:
    """The induction circuit's edges (module doc) for ``model``, with the two-token match where a layer-0
    head ``T`` (not ``P``) attends two back at the keys the copy's induction heads read (mean
    :func:`~toylab.suite.readers.two_back_scores` ``>= ATTENTION_MIN``): ``embed -> T.v``, ``pos -> T.q``,
    ``pos -> T.k``, ``T -> I.k`` and ``P -> I.q`` (the query's previous token against the key's
    ``x_{k-2}``; seeds 1 and 2 of ``induction-2l`` grow such a head)."""
    from toylab.suite.readers import two_back_scores

    task = induction_task(model, seed, n)
    p, heads = induction_heads_from_labels(model, task, seed)
    P = head_name(0, p)
    pos = graph.positional != "none"
    edges = {f"embed->{P}.v"} | ({f"pos->{P}.q", f"pos->{P}.k"} if pos else set())
    last = model.cfg.n_layers - 1
    for h in heads:
        I = head_name(last, h)
        edges |= {f"{P}->{I}.k", f"embed->{I}.q", f"embed->{I}.v", f"{I}->logits"}
    _, batch = _induction_batch(seed, n)
    back2 = two_back_scores(model, task.clean, task.positions, batch.offset)[0]
    for t in [h for h in range(model.cfg.n_heads) if h != p and float(back2[h]) >= ATTENTION_MIN]:
        T = head_name(0, t)
        edges |= {f"embed->{T}.v"} | ({f"pos->{T}.q", f"pos->{T}.k"} if pos else set())
        edges |= {f"{T}->{head_name(last, h)}.k" for h in heads} | {f"{P}->{head_name(last, h)}.q" for h in heads}
    return frozenset(edges)


# ----------------------------------------------------------------------------------------- skip-trigram

def _skip_language():
    return make_dataset(get_preset("skiptrigram-1l").data)


def skiptrigram_task(model, seed: int, n: int = 64) -> Task:
    """The skip-trigram task (module doc): rule sources replaced by inert filler in the corrupted run."""
    lang = _skip_language()
    clean = lang.sample(n, _gen(seed, 31))
    rules = torch.tensor(lang.rules)
    used = set(rules.flatten().tolist()) | {0}
    inert = torch.tensor([t for t in range(1, lang.d_vocab) if t not in used])
    is_source = (clean[..., None] == rules[:, 0]).any(-1)
    fill = inert[torch.randint(0, len(inert), clean.shape, generator=_gen(seed, 32))]
    corrupted = torch.where(is_source, fill, clean)
    fires = lang.active_rules(clean) >= 0
    fires[:, -1] = False
    return Task(clean, corrupted, fires, "skip-trigram sequences; corrupted: every rule source A replaced by a "
                "token of no rule, read where a rule fires")


def skiptrigram_truth(model, graph, seed: int = 0, n: int = 64) -> frozenset:
    """The rule heads' edges (module doc) for ``model``."""
    lang = _skip_language()
    task = skiptrigram_task(model, seed, n)
    A = _patterns(model, task.clean, 0)  # [b, head, q, k]
    rule = lang.active_rules(task.clean)
    sources = torch.tensor([r[0] for r in lang.rules])
    b, q = task.positions.nonzero(as_tuple=True)
    src_tok = sources[rule[b, q]]
    keys = torch.arange(task.clean.shape[1])[None]
    is_src = (task.clean[b] == src_tok[:, None]) & (keys <= q[:, None])
    last_src = torch.where(is_src, keys, -1).max(1).values  # the most recent A (the one the rule reads)
    att = A[b, :, q, last_src]  # [n, head]
    fired = rule[b, q]
    carried = {}  # rule -> the heads that attend >= ATTENTION_MIN to its source where it fires
    for r in fired.unique().tolist():
        mean = att[fired == r].mean(0)
        carried[r] = [h for h in range(model.cfg.n_heads) if float(mean[h]) >= ATTENTION_MIN]
    heads = sorted({h for hs in carried.values() for h in hs})
    n_carried = sum(bool(hs) for hs in carried.values())
    if 2 * n_carried < len(carried):
        raise NoPlantedCircuit(f"only {n_carried} of the {len(carried)} rules that fire have a head attending "
                               f">= {ATTENTION_MIN} to their source")
    edges = set()
    for h in heads:
        H = head_name(0, h)
        edges |= {f"embed->{H}.q", f"embed->{H}.k", f"embed->{H}.v", f"{H}->logits"}
    return frozenset(edges)


# ----------------------------------------------------------------------------------------- facts

def facts_planted(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(planted fact directions [S, d_mlp], neuron rows [N, d_mlp])`` of a ``facts-1l`` model."""
    from toylab.features.fact_features import neuron_rows, planted_fact_directions
    from toylab.neurons.facts import fact_batch

    lang = make_dataset(get_preset("facts-1l").data)
    tokens = fact_batch(lang)
    return planted_fact_directions(model, lang, tokens).float(), neuron_rows(model, lang, tokens)


CIRCUITS: dict[str, PlantedCircuit] = {
    "induction-2l": PlantedCircuit(
        "induction-2l", "induction-2l", SEEDS, induction_task, lambda model, graph, seed=0: induction_truth(
            model, graph, seed), "clean: one circuit, no redundancy; but its "
        "previous-token head's pattern is nearly one-hot (a saturated softmax), so under zero ablation a "
        "gradient (EAP, AtP) misses how much its position edges matter"),
    "skiptrigram-1l": PlantedCircuit(
        "skiptrigram-1l", "skiptrigram-1l", SEEDS, skiptrigram_task, lambda model, graph, seed=0: skiptrigram_truth(
            model, graph, seed), "zero and mean ablation also remove the bigram background (embed -> logits), "
        "which the rules do not need: they flag it"),
}

FEATURES: dict[str, PlantedFeatures] = {
    "facts-1l": PlantedFeatures("facts-1l", "facts-1l", SEEDS, "blocks.0.mlp.hook_post", facts_planted,
                                "96 facts share 128 neurons: a dictionary may split or merge them"),
}


# The planted models (toylab.suite.planted) the suite scores: those whose recipe plants its truth at
# at least 2 of 3 seeds (benchmarks/suite_truths.py). Left out:
# - "induction": it is induction-2l, above;
# - the negative control "majority": its truth is every edge; the runner takes it from
#   toylab.suite.planted.NEGATIVE_CONTROLS and checks it with check_dense.
FROM_PLANTED = ("redundant", "distractor", "mixture-induction", "mixture-skiptrigram", "layernorm")


def _intended_first(pc: PlantedCircuit) -> PlantedCircuit:
    """``pc`` with a truth that first checks the intended structure (:data:`toylab.suite.planted.INTENDED`)
    and raises :class:`NoPlantedCircuit` where training did not produce it (the seed is excluded)."""
    from toylab.suite.planted import INTENDED

    def truth(model, graph) -> frozenset:
        ok, why = INTENDED[pc.name](model, graph)
        if not ok:
            raise NoPlantedCircuit(f"training did not produce the structure {pc.name} is built for: {why}")
        return pc.truth(model, graph)
    return dataclasses.replace(pc, truth=truth)


def registry() -> dict[str, PlantedCircuit]:
    """Every circuit model the suite scores: :data:`CIRCUITS` and :data:`FROM_PLANTED` (whose truths raise
    :class:`NoPlantedCircuit` at a seed without the intended structure)."""
    return {**CIRCUITS, **{name: _intended_first(PLANTED[name]) for name in FROM_PLANTED}}
