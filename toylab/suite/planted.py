"""The suite's planted-truth models: each a preset, a task from its generator and a truth.

:data:`PLANTED` maps a suite name to its :class:`~toylab.suite.spec.PlantedCircuit`. Every truth is
read from the generator's labels (:mod:`toylab.suite.readers`: attention at labelled positions),
never from a method under test, and checked by intervention (:func:`toylab.suite.truth.check_truth`).

=======================  ==================  ==================================================
suite name               preset              what can trip a method
=======================  ==================  ==================================================
``induction``            ``induction-2l``    the clean baseline (one circuit, no traps)
``redundant``            ``redundant-2l``    two induction heads that can each do the job
``distractor``           ``distractor-2l``   high-norm topic heads the induction metric never needs
``mixture-induction``    ``mixture-2l``      the induction half of a two-task model
``mixture-skiptrigram``  ``mixture-2l``      the skip-trigram half of the same model
``layernorm``            ``layernorm-2l``    LayerNorm and learned positions (pos edges matter)
``majority``             ``majority-1l``     the negative control: dense, no small circuit
=======================  ==================  ==================================================

:data:`INTENDED` holds, per suite name, ``intended(model, graph) -> (bool, str)``: whether training
produced the structure the model is built for (two induction heads, a topic head outside the
truth, ...), with the numbers in a sentence; a seed where it did not is reported and excluded.
:data:`NEGATIVE_CONTROLS` names the models with no sparse truth: their ``truth`` is every edge, and
what a method *should* return there is low confidence (:func:`toylab.suite.truth.check_dense`: no
circuit of at most half the heads keeps 90 % of the behaviour); a small circuit returned with high
faithfulness claimed is a confident wrong answer.
"""

from __future__ import annotations

import torch

from toylab.data import make_dataset
from toylab.data.mixture import remove_rule_sources
from toylab.discovery.edge_patching import run_with_edges
from toylab.discovery.metrics import induction_positions
from toylab.model import next_token_loss
from toylab.suite.readers import attention_scores, heads_of, induction_edges, induction_scores, two_back_scores
from toylab.suite.spec import PlantedCircuit, Task
from toylab.suite.truth import check_truth
from toylab.training.presets import get_preset

TASK_SEED = 50_000  # task draws: TASK_SEED + seed (never the training stream, seed + 1)
TRUTH_SEED = 60_000  # the labelled batch the truth is read on
N_TRUTH = 256
SEEDS = (0, 1, 2)


def _data(preset: str):
    return make_dataset(get_preset(preset).data)


def _copy_task(batch, vocab_low: int, vocab_high: int, g: torch.Generator, what: str) -> Task:
    """Clean: the batch; corrupted: its copied span (``is_repeat`` and the copy's first token) redrawn
    uniformly in ``vocab_low..vocab_high-1``; positions: the logit positions inside the copy."""
    tokens = batch.tokens
    pos = torch.arange(tokens.shape[1])[None]
    in_copy = pos >= batch.dst_start[:, None]
    if hasattr(batch, "length"):
        in_copy &= pos < (batch.dst_start + batch.length)[:, None]
    fresh = torch.randint(vocab_low, vocab_high, tokens.shape, generator=g)
    return Task(tokens, torch.where(in_copy, fresh, tokens), induction_positions(batch.is_repeat),
                f"{what}; corrupted: the copied span redrawn at random (no repeat); metric at the copy's positions")


def _induction_component(ds):
    return ds.induction if hasattr(ds, "induction") else ds


def induction_task(preset: str):
    """``make_task`` of an induction-type preset (InductionData, TopicInductionData or the mixture's
    induction rows)."""
    ds = _data(preset)

    def make_task(model, seed: int, n: int = 128) -> Task:
        g = torch.Generator().manual_seed(TASK_SEED + seed)
        comp = _induction_component(ds)
        batch = comp.sample_batch(n, g)
        if hasattr(comp, "corrupt"):  # the topic data: the copy redrawn as noise of the same topic
            return Task(batch.tokens, comp.corrupt(batch, g), induction_positions(batch.is_repeat),
                        "topic sequences with a copy; corrupted: the copy redrawn as noise of the same topic; "
                        "metric at the copy's positions")
        return _copy_task(batch, 1, comp.d_vocab, g, "random tokens with a copied span")
    return make_task


def induction_truth(preset: str, pos_edges: bool = True):
    """``truth`` of an induction-type preset: :func:`~toylab.suite.readers.induction_edges` of the heads
    read on a labelled batch of its generator (previous-token, induction and two-back scores)."""
    ds = _data(preset)

    def truth(model, graph) -> frozenset:
        graph.check_model(model)
        batch = _induction_component(ds).sample_batch(N_TRUTH, torch.Generator().manual_seed(TRUTH_SEED))
        positions = induction_positions(batch.is_repeat)
        ind, prev = induction_scores(model, batch.tokens, positions, batch.offset)
        back2 = two_back_scores(model, batch.tokens, positions, batch.offset)
        return induction_edges(model, ind, prev, pos_edges=pos_edges, back2=back2)
    return truth


def skip_trigram_task(preset: str):
    lang = _data(preset).skip_trigram

    def make_task(model, seed: int, n: int = 128) -> Task:
        g = torch.Generator().manual_seed(TASK_SEED + seed)
        tokens = lang.sample(n, g)
        positions = lang.active_rules(tokens) >= 0
        positions[:, -1] = False
        return Task(tokens, remove_rule_sources(lang, tokens, g), positions,
                    "skip-trigram sequences; corrupted: every rule's A replaced by a neutral token (no rule "
                    "fires); metric where a rule fires")
    return make_task


def rule_source_triples(lang, tokens: torch.Tensor):
    """``(b, q, k)``: at every position ``q`` where a rule fires, the position ``k`` of that rule's most
    recent ``A`` (the generator's label; the token the rule's head must read)."""
    rule = lang.active_rules(tokens)
    rule[:, -1] = -1
    b, q = (rule >= 0).nonzero(as_tuple=True)
    a_tok = lang._A[rule[b, q]]
    n = tokens.shape[1]
    at = (tokens[b] == a_tok[:, None]) & (torch.arange(n)[None] <= q[:, None])
    k = torch.where(at, torch.arange(n)[None], -1).max(1).values
    return b, q, k


def skip_trigram_truth(preset: str, min_attention: float = 0.3):
    """Heads that carry a rule: for some rule, the head's mean attention from that rule's firing ``B`` to
    its ``A`` (over the positions where it fires, :func:`rule_source_triples`) is ``>= min_attention``.
    Read per rule, since a model may split the rules between heads (by trigger, say): averaged over
    every rule, a head that carries half of them reads about half its attention. Positions where the
    ``A`` sits right before its ``B`` are left out (a previous-token head attends there by position,
    whatever the rule). Each rule head's edges: ``embed -> H.q`` (the ``B``), ``embed -> H.k`` and
    ``embed -> H.v`` (the ``A``), ``H -> logits``, and from every rule head ``G`` of an earlier layer
    ``G -> H.q``, ``G -> H.k``, ``G -> H.v`` (both read the rule's ``A``: the later one may find or
    read it through the earlier one's output)."""
    lang = _data(preset).skip_trigram

    def truth(model, graph) -> frozenset:
        graph.check_model(model)
        tokens = lang.sample(N_TRUTH, torch.Generator().manual_seed(TRUTH_SEED))
        b, q, k = rule_source_triples(lang, tokens)
        far = k < q - 1  # an A right before its B: a previous-token head attends there by position
        b, q, k = b[far], q[far], k[far]
        rule = lang.active_rules(tokens)[b, q]
        carried = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
        for r in rule.unique().tolist():
            at = rule == r
            carried |= attention_scores(model, tokens, b[at], q[at], k[at]) >= min_attention
        heads = [(l, f"L{l}H{h}") for l, h in carried.nonzero().tolist()]
        edges = set()
        for l, name in heads:
            edges |= {f"embed->{name}.q", f"embed->{name}.k", f"embed->{name}.v", f"{name}->logits"}
            edges |= {f"{g}->{name}.{s}" for m, g in heads if m < l for s in "qkv"}
        return frozenset(edges)
    return truth


def majority_task(preset: str):
    ds = _data(preset)

    def make_task(model, seed: int, n: int = 128) -> Task:
        g = torch.Generator().manual_seed(TASK_SEED + seed)
        clean, corrupted = ds.sample(n, g), ds.sample(n, g)
        positions = torch.zeros_like(clean, dtype=torch.bool)
        positions[:, 8:-1] = True  # after 8 tokens the counts say something
        return Task(clean, corrupted, positions, "majority sequences; corrupted: other sequences (another "
                    "favoured token, mostly); metric from position 8 on")
    return make_task


def every_edge(model, graph) -> frozenset:
    """The negative control's truth: every edge matters a little."""
    graph.check_model(model)
    return frozenset(graph.edge_names)


def _n_induction_heads(preset: str, minimum: int):
    truth = induction_truth(preset)

    def intended(model, graph):
        last = model.cfg.n_layers - 1
        heads = [h for h in heads_of(truth(model, graph)) if h.startswith(f"L{last}")]
        return len(heads) >= minimum, f"induction heads {heads or 'none'} (needs {minimum})"
    return intended


@torch.no_grad()
def head_output_norms(model, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``[n_layers, n_heads]``: the mean norm of each head's output ``z^h W_O^h`` (``hook_result``) over
    the positions ``p >= 2`` of ``tokens [batch, pos]`` (how much a head writes, wherever it reads), or
    over ``positions [batch, pos]`` (bool) where given."""
    if positions is None:
        positions = torch.zeros_like(tokens, dtype=torch.bool)
        positions[:, 2:] = True
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_result"][positions].norm(dim=-1).mean(0)
                        for l in range(model.cfg.n_layers)])


@torch.no_grad()
def zero_loss_rise(model, graph, edges, tokens: torch.Tensor) -> float:
    """How much zero-ablating ``edges`` raises the mean next-token loss of ``tokens [batch, pos]`` over the
    predictions from position 1 on (``x_2 .. x_{n-1}``; position 0 predicts the marker), in nats:
    ``L(edges -> 0) - L(clean)``."""
    masks = torch.stack([torch.zeros(len(graph), dtype=torch.bool), graph.mask(edges)])
    loss = run_with_edges(model, graph, tokens, "zero", masks,
                          lambda logits: next_token_loss(logits, tokens)[:, 1:].mean())
    return float(loss[1] - loss[0])


def _topic_head(preset: str, min_attention: float = 0.3, min_norm: float = 0.5, max_removed: float = 0.1):
    """The distractor's intended structure: a *topic head* outside the truth (mean attention from the
    noise positions to the topic marker ``>= min_attention``) that is active and high-norm (its mean
    output norm ``>= min_norm`` times the truth heads' mean) and irrelevant to the metric (patching
    every edge out of it to the task's corrupted run removes ``< max_removed`` of the behaviour).
    Its zero-ablation effects are reported too, where a method is trapped: the fraction of the behaviour
    zero-ablating its out-edges removes, and how much that raises the clean run's next-token loss over
    every position from the marker on (:func:`zero_loss_rise`; the topic it writes is worth nats there),
    against the truth heads' own rises."""
    ds, truth, make_task = _data(preset), induction_truth(preset), induction_task(preset)

    def intended(model, graph):
        batch = ds.sample_batch(N_TRUTH, torch.Generator().manual_seed(TRUTH_SEED))
        noise = ~batch.is_repeat
        noise[:, :2] = False
        b, q = noise.nonzero(as_tuple=True)
        score = attention_scores(model, batch.tokens, b, q, torch.ones_like(q))  # to the topic marker
        edges = truth(model, graph)
        inside = set(heads_of(edges))
        topic = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
                 if float(score[l, h]) >= min_attention and f"L{l}H{h}" not in inside]
        if not topic or not inside:
            return False, (f"topic heads outside the truth {topic or 'none'} (attention to the marker >= "
                           f"{min_attention}); truth heads {sorted(inside) or 'none'}")
        norms = head_output_norms(model, batch.tokens)
        norm = {f"L{l}H{h}": float(norms[l, h]) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
        circuit_norm = sum(norm[h] for h in inside) / len(inside)
        task = make_task(model, 0, 128)
        at_metric = head_output_norms(model, task.clean, task.positions)
        truth_rise = [zero_loss_rise(model, graph, {e.name for e in graph.edges if e.sender == h}, task.clean)
                      for h in inside]
        good, parts = [], []
        for h in topic:
            out = {e.name for e in graph.edges if e.sender == h}
            resample = check_truth(model, graph, out, task, "resample").removed
            zero = check_truth(model, graph, out, task, "zero").removed
            rise = zero_loss_rise(model, graph, out, task.clean)
            ok = norm[h] >= min_norm * circuit_norm and resample < max_removed
            good += [h] if ok else []
            l, i = int(h[1]), int(h[3:])
            parts.append(f"{h} (marker {float(score[l, i]):.2f}, norm {norm[h]:.2f}, {float(at_metric[l, i]):.2f} "
                         f"at the metric's positions, removing it removes {resample:.2f} resample / {zero:.2f} zero; "
                         f"zero-ablated, the clean loss rises {rise:.2f} nats, more than for "
                         f"{sum(r < rise for r in truth_rise)} of the {len(inside)} truth heads)")
        metric_norm = sum(float(at_metric[int(h[1]), int(h[3:])]) for h in inside) / len(inside)
        return bool(good), (f"topic heads {', '.join(parts)}; truth heads {sorted(inside)} (mean norm "
                            f"{circuit_norm:.2f}, {metric_norm:.2f} at the metric's positions); active, high-norm "
                            f"(>= {min_norm} x) and irrelevant (< {max_removed}): {good or 'none'}")
    return intended


def _two_circuits(preset: str):
    """The mixture's intended structure: an induction circuit and a skip-trigram circuit, distinct
    (different edge sets) and sharing at least one head."""
    t_ind, t_skip = induction_truth(preset), skip_trigram_truth(preset)

    def intended(model, graph):
        a, b = t_ind(model, graph), t_skip(model, graph)
        shared = sorted(set(heads_of(a)) & set(heads_of(b)))
        return bool(a) and bool(b) and a != b and bool(shared), (
            f"induction heads {heads_of(a) or 'none'}, skip-trigram heads {heads_of(b) or 'none'}, shared "
            f"{shared or 'none'}")
    return intended


def _nonempty(preset: str):
    truth = induction_truth(preset)

    def intended(model, graph):
        t = truth(model, graph)
        return bool(t), f"heads {heads_of(t) or 'none'}"
    return intended


def _dense(model, graph):
    return True, "no sparse truth (checked by check_dense)"


PLANTED: dict[str, PlantedCircuit] = {p.name: p for p in [
    PlantedCircuit("induction", "induction-2l", SEEDS, induction_task("induction-2l"), induction_truth("induction-2l"),
                   "none by design: the clean baseline every method should get right"),
    PlantedCircuit("redundant", "redundant-2l", SEEDS, induction_task("redundant-2l"), induction_truth("redundant-2l"),
                   "ablation one edge at a time (ACDC, exact edge patching, AtP) under-reports each of the two "
                   "induction heads, since the other one covers for it"),
    PlantedCircuit("distractor", "distractor-2l", SEEDS, induction_task("distractor-2l"),
                   induction_truth("distractor-2l"),
                   "a layer-1 head reads the topic marker everywhere and writes more than the truth heads do; "
                   "zero-ablating it raises the clean loss more than for some induction heads, so a reading by "
                   "output norm or by zero-ablated loss takes it for part of the circuit; the induction metric "
                   "against a same-topic corrupted run does not need it while the induction heads work, though "
                   "it carries part of the behaviour once they are removed (chapter 13: 0.41 at seed 0)"),
    PlantedCircuit("mixture-induction", "mixture-2l", SEEDS, induction_task("mixture-2l"),
                   induction_truth("mixture-2l"),
                   "the heads are shared with a second task, so a method must keep the edges of this task's "
                   "circuit only"),
    PlantedCircuit("mixture-skiptrigram", "mixture-2l", SEEDS, skip_trigram_task("mixture-2l"),
                   skip_trigram_truth("mixture-2l"),
                   "the skip-trigram rules live in heads that also serve induction; their edges differ"),
    PlantedCircuit("layernorm", "layernorm-2l", SEEDS, induction_task("layernorm-2l"), induction_truth("layernorm-2l"),
                   "LayerNorm makes edge effects non-additive (EAP's linearisation) and the previous-token head "
                   "needs its pos edges, which resample ablation cannot see"),
    PlantedCircuit("majority", "majority-1l", SEEDS, majority_task("majority-1l"), every_edge,
                   "a dense behaviour: every head carries part of the token counts; a method should report low "
                   "confidence, not a small circuit"),
]}

INTENDED = {
    "induction": _nonempty("induction-2l"),
    "redundant": _n_induction_heads("redundant-2l", 2),
    "distractor": _topic_head("distractor-2l"),
    "mixture-induction": _two_circuits("mixture-2l"),
    "mixture-skiptrigram": _two_circuits("mixture-2l"),
    "layernorm": _nonempty("layernorm-2l"),
    "majority": _dense,
}

NEGATIVE_CONTROLS = frozenset({"majority"})
