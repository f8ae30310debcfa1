"""Scoring every method against a suite model's planted truth, at one seed.

**Discovery methods** (on a :class:`~toylab.suite.spec.PlantedCircuit`), each under the corruptions
``"resample"`` (the task's corrupted tokens), ``"zero"`` and ``"mean"`` (the clean batch's mean per
position; :mod:`toylab.discovery.edge_patching`):

================  ==============================================================  =========================
method            what is scored                                                  recommended setting
================  ==============================================================  =========================
``patching``      exact effect of each edge alone (``edge_effects``, noising)     ``|s| >= 0.1 max |s|``
``eap``           edge attribution patching (gradient at the clean run)           ``|s| >= 0.1 max |s|``
``eap-ig``        EAP with integrated gradients (5 steps)                         ``|s| >= 0.1 max |s|``
``atp``           node AtP (``node_attribution``) of every head's q, k, v, result  ``|s| >= 0.1 max |s|``
``atp*``          AtP with the QK fix on q and k nodes (no GradDrop)              ``|s| >= 0.1 max |s|``
``acdc``          ACDC circuits over a sweep of thresholds ``tau``                ``tau = 0.01 gap``
``sp``            subnetwork probing, one run, ranked by its learned mask logits  ``lam = 0.01 gap``
================  ==============================================================  =========================

Score-based methods rank by ``|score|`` with the metric ``next_token_loss_on`` (the clean next token's
loss at the task's positions; the behaviour's KL has zero gradient at the clean run, which would make
EAP blind); ACDC and SP use the behaviour ``M`` itself (KL to the clean run at the task's positions,
:mod:`toylab.suite.truth`). ACDC's sweep is ``gap * 10^x`` for ``n`` values of ``x`` evenly spaced in
``[-4, 0]`` (``gap``: ``M`` of the fully corrupted run on the whole task, known without the truth), run
as one :func:`~toylab.discovery.acdc.acdc_sweep` (its runs share the tests they have in common: the
same circuits, bit for bit, in 38 % of the CPU time on induction-2l). ACDC and SP, whose searches run
hundreds of forward passes, search on the first :data:`SEARCH_BATCH` sequences of the task (their
metric: the behaviour on those; ``"mean"``: their mean); every score, faithfulness included, is
measured on the whole task. On induction-2l seed 0, ACDC on 32 instead of 64 sequences moved its
AUROC by at most 0.02 (0.71 -> 0.73, 1.00 -> 1.00, 0.86 -> 0.85 under resample, zero, mean) and left
precision, recall and faithfulness as they were, at 60 % of the CPU time (the score-based methods,
cheap, keep the 64: there zero-ablation AUROCs of EAP and AtP moved by up to 0.09). SP is trained
once, at its recommended ``lam``, for ``sp_steps`` Adam steps of one gate draw, and its AUROC ranks
the edges by the learned ``sigmoid(log_alpha)`` (a continuous score, as for the score-based methods)
instead of one run per ``lam``. On induction-2l seed 0 the old sweep (21 penalties x 30 steps x 4
draws x 64 sequences: 104 s CPU under resample) gave AUROC 0.685 and precision 0.389 under resample
(the masks had hardly moved from their start in 30 steps); one run of 150 steps x 1 draw x 32
sequences (3.7 s CPU) gives 0.80 and 0.54 (resample), 0.95 and 0.58 (zero), 0.86 and 0.56 (mean);
100 steps x 4 draws x 64 sequences, at 4x the CPU time, gave 0.85 (resample) and 0.99 (zero).

For each (method, corruption): ``auroc`` (score-based and SP: the ROC of ranking by ``|score|``, ties
1/2; ACDC: the area under its sweep's ROC points, ``toylab.discovery.roc``); ``precision`` and
``recall`` of the circuit at the recommended setting (an empty circuit has precision 0);
``faithfulness``: the kept fraction of that circuit (``1 - M(circuit) / gap``) under the method's own
corruption; ``seconds`` and ``cpu_seconds``: wall and CPU time of the method (score-based: the
scores; ACDC: the whole sweep; SP: its one run). Node methods (AtP, AtP*) are scored over nodes
(``L0H1.q``, ``L0H1.result``, ...): a node is true when a truth edge enters that slot (q, k, v) or
leaves that head (result); their circuit keeps the edges whose sender (a head's result, or
``embed``/``pos``) and receiver slot (or the logits) are both kept.

**Confidence** (:func:`confidence`), defined once for every discovery method from its own output,
never from the truth: ``confidence = coverage - size``, where ``size`` is the share of the graph's
edges (nodes, for AtP and AtP*) the recommended circuit keeps, and ``coverage`` is the share of the
behaviour the method itself says that circuit carries: for a score-based method the share of the total
``|score|`` on the kept edges (nodes); for ACDC and SP, which search with the behaviour itself, the
kept fraction they measure for their circuit (``faithfulness``, clipped to ``[0, 1]``). A method that
returns a few edges carrying nearly everything claims confidence near 1; scores spread evenly give 0
(any ``k`` edges then carry their share ``k/n``). On the negative control (a dense behaviour,
:data:`toylab.suite.planted.NEGATIVE_CONTROLS`) a high confidence is a confident wrong answer: no circuit of
at most half the heads keeps 90 % of its behaviour (:func:`toylab.suite.truth.check_dense`). There the
truth is every edge, so no AUROC, precision or recall is scored (``truth=None``); ``confidence``,
``coverage``, ``size``, ``faithfulness`` and ``seconds`` are.

**Feature methods**: ``relu-sae`` and ``topk-sae`` on a :class:`~toylab.suite.entries.PlantedFeatures`
model, scored by signed ``mcc`` of the decoder against the planted directions; ``probe``: a softmax
probe with its Hewitt-Liang control task at the planted write site, scored by ``selectivity``
(accuracy minus control accuracy; :func:`probe_scores`).

Every score is checked: finite, and AUROC, precision, recall, coverage and size in ``[0, 1]``,
confidence, MCC and selectivity in ``[-1, 1]``; anything else is refused with a sentence
(:func:`check_scores`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from toylab.discovery.acdc import acdc_sweep
from toylab.discovery.attribution_patching import edge_attribution, node_attribution
from toylab.discovery.edge_patching import edge_effects, run_circuit
from toylab.discovery.graph import Graph, head_name
from toylab.discovery.metrics import next_token_loss_on
from toylab.discovery.roc import roc_curve, roc_from_scores
from toylab.discovery.subnetwork_probing import subnetwork_probing
from toylab.suite.truth import SOURCES, behaviour_gap, behaviour_metric, source_of

SCORE_METHODS = ("patching", "eap", "eap-ig", "atp", "atp*")
SWEEP_METHODS = ("acdc", "sp")
METHODS = SCORE_METHODS + SWEEP_METHODS
FEATURE_METHODS = ("relu-sae", "topk-sae", "probe")
KEEP_FRACTION = 0.1  # score-based methods keep the edges with |s| >= KEEP_FRACTION * max |s|
RECOMMENDED = 0.01  # ACDC's tau and SP's lam, as a fraction of the gap
SEARCH_BATCH = 32  # sequences ACDC and SP search on (module doc); every score is measured on the whole task
UNIT = ("auroc", "precision", "recall", "coverage", "size")
SIGNED = ("mcc", "selectivity", "confidence")


class NotApplicable(ValueError):
    """A method's score means nothing on this model (e.g. node AtP where every head node is in the truth)."""


def sweep_values(gap: float, n: int) -> list[float]:
    """``n`` values ``gap * 10^x``, ``x`` evenly spaced in ``[-4, 0]``, with ``RECOMMENDED * gap`` added."""
    xs = [-4 + 4 * i / (n - 1) for i in range(n)] if n > 1 else [-2.0]
    return sorted({gap * 10 ** x for x in xs} | {RECOMMENDED * gap})


def _auc(pos: list[float], neg: list[float]) -> float:
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def _pr(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return (tp / len(found) if found else 0.0), tp / len(truth)


def confidence(magnitudes, kept) -> dict[str, float]:
    """``{"coverage", "size", "confidence"}`` of a score-based method (module doc): ``magnitudes [n]``
    (``|score|`` per edge or node, >= 0) and ``kept [n]`` (bool: the recommended circuit).
    ``coverage = sum(magnitudes[kept]) / sum(magnitudes)`` (0 when every score is 0),
    ``size = mean(kept)``, ``confidence = coverage - size``."""
    m = torch.as_tensor(magnitudes, dtype=torch.float64).flatten()
    k = torch.as_tensor(kept, dtype=torch.bool).flatten()
    if m.numel() == 0 or m.shape != k.shape:
        raise ValueError(f"magnitudes and kept must be two [n] tensors (n >= 1), got {list(m.shape)} and "
                         f"{list(k.shape)}")
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError("magnitudes must be finite numbers >= 0 (the |score| of each edge or node)")
    total = float(m.sum())
    coverage = float(m[k].sum()) / total if total > 0 else 0.0
    size = float(k.double().mean())
    return {"coverage": coverage, "size": size, "confidence": coverage - size}


def circuit_confidence(faithfulness: float, n_kept: int, n_edges: int) -> dict[str, float]:
    """``{"coverage", "size", "confidence"}`` of a circuit a method measured itself (ACDC, SP; module
    doc): ``coverage`` = its faithfulness clipped to ``[0, 1]``, ``size = n_kept / n_edges``."""
    coverage = min(1.0, max(0.0, float(faithfulness)))
    size = n_kept / n_edges
    return {"coverage": coverage, "size": size, "confidence": coverage - size}


def node_truth(graph: Graph, truth: frozenset) -> set[str]:
    """The nodes ``"L{l}H{h}.q|k|v|result"`` a truth's edges use (module doc)."""
    out = set()
    for name in truth:
        s, r = name.split("->")
        if r != "logits" and "." in r:
            out.add(r)
        if s not in ("embed", "pos") and not s.startswith("MLP"):
            out.add(f"{s}.result")
    return out


def _node_circuit(graph: Graph, kept: set[str]):
    edges = []
    for e in graph.edges:
        s_ok = e.sender in ("embed", "pos") or e.sender.startswith("MLP") or f"{e.sender}.result" in kept
        r_ok = e.receiver == "logits" or e.receiver.startswith("MLP") or e.receiver in kept
        if s_ok and r_ok:
            edges.append(e.name)
    return graph.circuit(edges)


def _node_scores(model, task, corrupted, metric, qk_fix: bool) -> dict[str, float]:
    out = {}
    for node in ("q", "k", "v", "result"):
        s = node_attribution(model, task.clean, corrupted, metric, node=node, qk_fix=qk_fix and node in "qk")
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                out[f"{head_name(l, h)}.{node}"] = float(s[l, h])
    return out


@dataclass(frozen=True)
class Setting:
    """What every method under one corruption shares (built once per source by :func:`setting`):
    the ``corrupted`` argument, the behaviour metric, its ``gap`` and the score methods' ``loss``."""

    source: str
    corrupted: object
    behaviour: object
    gap: float
    loss: object


def setting(model, graph: Graph, task, source: str) -> Setting:
    """The :class:`Setting` of ``source`` on ``task`` (the behaviour and its gap computed once)."""
    behaviour = behaviour_metric(model, task)
    return Setting(source, source_of(task, source), behaviour, behaviour_gap(model, graph, task, source, behaviour),
                   next_token_loss_on(task.clean, task.positions))


def _search_task(task):
    """The first :data:`SEARCH_BATCH` sequences of ``task`` (all of it if they mark no read position)."""
    p = None if task.positions is None else task.positions[:SEARCH_BATCH]
    if p is not None and not bool(p.any()):
        return task
    return type(task)(task.clean[:SEARCH_BATCH], task.corrupted[:SEARCH_BATCH], p, task.description)


def score_method(model, graph: Graph, task, truth: frozenset | None, method: str, source: str, *, n_sweep: int = 20,
                 sp_steps: int = 150, ctx: Setting | None = None) -> dict[str, float]:
    """``{"auroc", "precision", "recall", "faithfulness", "coverage", "size", "confidence", "seconds"}``
    of ``method`` under ``source`` (module doc) against ``truth`` (edge names of ``graph``); with
    ``truth=None`` (a negative control: no sparse truth) no AUROC, precision or recall. ``ctx``: the
    :class:`Setting` of ``source``, if already built."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; the methods are {METHODS}")
    ctx = setting(model, graph, task, source) if ctx is None else ctx
    if ctx.source != source:
        raise ValueError(f"ctx is the setting of {ctx.source!r}, not of {source!r}")
    corrupted, behaviour, gap, loss = ctx.corrupted, ctx.behaviour, ctx.gap, ctx.loss
    ref = None if truth is None else graph.circuit(truth)
    out: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if method in ("patching", "eap", "eap-ig"):
        if method == "patching":
            s = edge_effects(model, graph, task.clean, corrupted, loss)
        else:
            s = edge_attribution(model, graph, task.clean, corrupted, loss, method=method).detach()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        top = float(s.abs().max())
        mask = (s.abs() >= KEEP_FRACTION * top) & (top > 0)
        kept = {e.name for e, k in zip(graph.edges, mask.tolist()) if k}
        circuit = graph.circuit(kept)
        out.update(confidence(s.abs(), mask))
        if ref is not None:
            out["auroc"] = roc_from_scores(graph, s, ref)[2]
            out["precision"], out["recall"] = _pr(kept, set(truth))
    elif method in ("atp", "atp*"):
        s = _node_scores(model, task, corrupted, loss, method == "atp*")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        top = max(abs(v) for v in s.values())
        kept = {k for k, v in s.items() if top > 0 and abs(v) >= KEEP_FRACTION * top}
        circuit = _node_circuit(graph, kept)
        out.update(confidence([abs(v) for v in s.values()], [k in kept for k in s]))
        if ref is not None:
            true_nodes = node_truth(graph, truth)
            pos = [abs(v) for k, v in s.items() if k in true_nodes]
            neg = [abs(v) for k, v in s.items() if k not in true_nodes]
            if not pos or not neg:
                raise NotApplicable(f"every head node is {'in' if pos else 'outside'} the truth, so a node ranking "
                                    "has no ROC")
            out["auroc"] = _auc(pos, neg)
            out["precision"], out["recall"] = _pr(kept, true_nodes)
    elif method == "acdc":
        values = sweep_values(gap, n_sweep)
        sub = _search_task(task)
        runs = acdc_sweep(model, graph, sub.clean, corrupted if isinstance(corrupted, str) else sub.corrupted,
                          values, metric=behaviour_metric(model, sub))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        circuit = runs[values.index(RECOMMENDED * gap)].circuit
        if ref is not None:
            out["auroc"] = roc_curve([r.circuit for r in runs], ref)[2]
            out["precision"], out["recall"] = _pr(set(circuit.edges), set(truth))
    else:
        sub = _search_task(task)
        corr = corrupted if isinstance(corrupted, str) else sub.corrupted
        circuit, log_alpha = subnetwork_probing(model, graph, sub.clean, corr, RECOMMENDED * gap,
                                                metric=behaviour_metric(model, sub), steps=sp_steps, samples=1)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if ref is not None:
            out["auroc"] = roc_from_scores(graph, torch.sigmoid(log_alpha), ref)[2]
            out["precision"], out["recall"] = _pr(set(circuit.edges), set(truth))
    out["faithfulness"] = 1.0 - run_circuit(model, graph, circuit, task.clean, corrupted, behaviour) / gap
    if method in SWEEP_METHODS:
        out.update(circuit_confidence(out["faithfulness"], len(circuit.edges), len(graph)))
    out["seconds"], out["cpu_seconds"] = seconds, cpu
    return check_scores(out, f"{method} ({source})")


def circuit_scores(model, entry, seed: int, methods=METHODS, sources=SOURCES, *, n_task: int = 64,
                   n_sweep: int = 20, sp_steps: int = 150, dense: bool = False) -> dict[str, dict[str, float]]:
    """Every ``method`` under every ``source`` on ``entry`` (a PlantedCircuit) at ``seed``:
    ``{"method/source": scores}``. The truth comes from ``entry.truth``; checking it is the caller's
    (:func:`toylab.suite.truth.check_truth`). ``dense=True`` (a negative control): no truth is scored
    against (``truth=None`` in :func:`score_method`)."""
    graph = Graph(model)
    task = entry.make_task(model, seed, n_task)
    truth = None if dense else entry.truth(model, graph)
    out = {}
    for src in sources:
        ctx = setting(model, graph, task, src)
        for m in methods:
            try:
                out[f"{m}/{src}"] = score_method(model, graph, task, truth, m, src, n_sweep=n_sweep,
                                                 sp_steps=sp_steps, ctx=ctx)
            except NotApplicable as err:
                out[f"{m}/{src}"] = {"n/a": str(err)}
    return out


def sae_scores(model, entry, seed: int, methods=("relu-sae", "topk-sae"), *, steps: int = 1500) -> dict:
    """``{"relu-sae" | "topk-sae": {"mcc", "seconds"}}``: SAEs (``d_sae = 2 n_features``; ReLU with L1
    0.1, TopK with ``k = 4``) trained on ``entry``'s rows, their decoders matched to the planted
    directions (signed MCC, :func:`toylab.features.metrics.mcc`)."""
    from toylab.features.metrics import mcc
    from toylab.features.sae import ReluSAE
    from toylab.features.topk import TopKSAE
    from toylab.features.train_sae import train_sae

    planted, rows = entry.planted(model)
    d_in, d_sae = rows.shape[1], 2 * planted.shape[0]
    out = {}
    for m in methods:
        t0, c0 = time.perf_counter(), time.process_time()
        if m == "relu-sae":
            sae = ReluSAE(d_in, d_sae, l1_coefficient=0.1, seed=seed)
        elif m == "topk-sae":
            sae = TopKSAE(d_in, d_sae, k=4, seed=seed)
        else:
            raise ValueError(f"unknown SAE method {m!r}; expected 'relu-sae' or 'topk-sae'")
        train_sae(sae, rows, steps=steps, batch_size=512, lr=3e-3, seed=seed, resample_every=250, progress=False)
        out[m] = check_scores({"mcc": mcc(sae.W_dec.detach().float(), planted),
                               "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}, m)
    return out


#: model -> (hook, probe variable): where the planted rule writes, and what it writes there
PROBE_SITES = {"induction-2l": ("blocks.0.hook_resid_post", "previous_token"),
               "skiptrigram-1l": ("blocks.0.hook_resid_post", "rule_active")}


def probe_scores(model, name: str, seed: int, n: int = 128) -> dict:
    """``{"probe": {"accuracy", "control_accuracy", "selectivity", "seconds"}}`` at :data:`PROBE_SITES`
    ``[name]``: induction-2l's previous token after layer 0 (the previous-token head writes it),
    skiptrigram-1l's "a rule fires here" after its one layer; the control task gives each current
    token a random label (:func:`toylab.features.probes.probe_with_control`), rows split by sequence.
    ``n = 128`` sequences (was 256: half the CPU time; on induction-2l and skiptrigram-1l seeds 0 and 1
    the selectivity moved by at most 0.009)."""
    from toylab.features.probes import induction_variables, probe_with_control, skip_trigram_variables
    from toylab.features.train_sae import gather_activations
    from toylab.suite.entries import _induction_batch, _skip_language

    if name not in PROBE_SITES:
        raise ValueError(f"no planted write site is known for {name!r}; probes run on {sorted(PROBE_SITES)}")
    hook, var = PROBE_SITES[name]
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "induction-2l":
        batch = _induction_batch(seed, n)[1]
        tokens, variables = batch.tokens, induction_variables(batch)
    else:
        lang = _skip_language()
        tokens = lang.sample(n, torch.Generator().manual_seed(7919 * seed + 5))
        variables = skip_trigram_variables(tokens, lang)
        variables["current_token"] = tokens[:, 1:].reshape(-1)
    groups = torch.arange(tokens.shape[0]).repeat_interleave(tokens.shape[1] - 1)
    acts = gather_activations(model, hook, tokens)
    r = probe_with_control(acts, variables[var], variables["current_token"], seed=seed, groups=groups)
    return {"probe": check_scores({"accuracy": r["accuracy"], "control_accuracy": r["control_accuracy"],
                                   "selectivity": r["selectivity"], "seconds": time.perf_counter() - t0,
                                   "cpu_seconds": time.process_time() - c0}, "probe")}


def check_scores(scores: dict, what: str) -> dict:
    """``scores`` itself, each a float; ``ValueError`` naming the score for a NaN/inf or a value outside
    its range (``[0, 1]`` for AUROC, precision, recall, accuracies; ``[-1, 1]`` for MCC, selectivity)."""
    out = {}
    for k, v in scores.items():
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{what}: {k} came out {v}; a suite score must be a finite number (a NaN would "
                             "average into every cell it touches), so this run is refused")
        lo, hi = (0.0, 1.0) if k in UNIT or k.endswith("accuracy") else (-1.0, 1.0) if k in SIGNED else (-math.inf,
                                                                                                       math.inf)
        if not lo - 1e-9 <= v <= hi + 1e-9:
            raise ValueError(f"{what}: {k} = {v:.4g} lies outside [{lo:g}, {hi:g}], where it must lie")
        out[k] = v
    return out
