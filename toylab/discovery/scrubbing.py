"""Causal scrubbing: test a hypothesis about a circuit by resampling everything it says does not matter.

A **hypothesis** is a correspondence between the model's edge graph and an
interpretation: for each edge it names (``"L0H0->L1H1.k"``), the *feature*
of the input that edge carries; every edge it does not name carries nothing.
Features are equivalence classes of input sequences, defined by the data
generator (:class:`EquivalenceClasses`): ``"identity"`` (the sequence
itself), ``"any"`` (every sequence is equivalent), or a generator's ground
truth such as ``"offset"`` (same repeat offset), ``"structure"`` (same
offset, start and length: the same positions are predictable by induction) or
``"segment"`` (same structure and the same copied tokens, other noise).
:func:`redraw_tokens` builds a pool in which these classes have several
members, by drawing from the generator again with its structure (and, for
``"segment"``, the copied tokens) held fixed.

**Treeified resampling ablation.** The model's computation is unrolled into
a tree rooted at the logits: a slot ``r`` evaluated on input ``x`` reads, for
each incoming edge ``e = s -> r``, the sender ``s`` evaluated on a *fresh*
input ``x'`` drawn uniformly from the class of ``x`` under ``e``'s feature
(``"any"`` for unnamed edges), recursively::

    x_r(x)   = sum_{e = s -> r} out_s(x'_e),   x'_e ~ Uniform{ y : f_e(y) = f_e(x) }
    logits(x) = x_logits(x) W_U

with heads computed from their three inputs, an MLP from its one, as in :mod:`toylab.discovery.graph`.
Every branch draws its own ``x'`` (the tree is not collapsed back into a
graph), so an interpretation cannot borrow the correlations between branches.

**Score.** With ``L`` the mean next-token loss on the scored positions of the
root inputs: ``L_model`` (no resampling), ``L_hyp`` (the hypothesis) and
``L_scrub`` (every edge resampled from ``"any"``)::

    loss recovered = (L_scrub - L_hyp) / (L_scrub - L_model)

1 means the hypothesis explains all the loss the model achieves, 0 nothing;
it can leave [0, 1] (a hypothesis worse than chance, or resampling that helps).
Each root's loss is the mean over its scored positions, ``L`` the mean over roots.
The interval is a percentile bootstrap over root sequences (each root's loss
averaged over ``n_resamples`` independent treeified runs). The score tests an
*expected* loss: errors of opposite sign on different inputs cancel in it, so
:func:`position_losses` and :func:`scrubbed_position_losses` give the losses
per position, to compare by class of position or example by example.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from toylab.discovery.edge_patching import check_model_graph
from toylab.discovery.graph import SLOTS, Circuit, Graph, check_graph


class EquivalenceClasses:
    """A pool of sequences with, per feature, a class label for each: the resampling distributions.

    ``tokens [N, pos]``; ``features``: ``{name: LongTensor [N]}`` (equal labels = equivalent);
    ``"identity"`` and ``"any"`` are always present. ``positions [N, pos]`` (bool, logit positions) says
    where the loss is scored (default every position with a next token).
    """

    def __init__(self, tokens: torch.Tensor, features: dict | None = None, positions: torch.Tensor | None = None):
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[0] < 2 or tokens.shape[1] < 2:
            got = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"the pool must be a LongTensor [N, pos] of at least 2 sequences of at least 2 "
                             f"tokens, got {got}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"the pool's tokens must be integer ids, got dtype {tokens.dtype}")
        N, P = tokens.shape
        self.tokens = tokens
        self.features = {"identity": torch.arange(N), "any": torch.zeros(N, dtype=torch.long)}
        if features is not None and not isinstance(features, dict):
            raise TypeError(f"features must be a dict {{name: LongTensor [N]}}, got {type(features).__name__}")
        for name, lab in (features or {}).items():
            if not isinstance(name, str) or not isinstance(lab, torch.Tensor):
                raise TypeError(f"features maps names (str) to LongTensors of labels [{N}], got {name!r}: "
                                f"{type(lab).__name__}")
            if lab.shape != (N,) or lab.dtype.is_floating_point or lab.dtype == torch.bool:
                raise ValueError(f"feature {name!r} needs one integer label per pool sequence, [{N}], "
                                 f"got {list(lab.shape)} {lab.dtype}")
            if name in ("identity", "any") and not torch.equal(lab.long(), self.features[name]):
                raise ValueError(f"the feature {name!r} is built in (and fixed); give your feature another name")
            self.features[name] = lab.long()
        if positions is None:
            positions = torch.ones(N, P, dtype=torch.bool)
            positions[:, -1] = False
        if not isinstance(positions, torch.Tensor) or positions.shape != (N, P) or positions.dtype != torch.bool:
            got = (f"{list(positions.shape)} {positions.dtype}" if isinstance(positions, torch.Tensor)
                   else type(positions).__name__)
            raise ValueError(f"positions must be a bool mask [{N}, {P}] of logit positions, got {got}")
        if not positions.any():
            raise ValueError("the positions mask selects nothing: no pool sequence has a position to score")
        self.positions = positions
        self._sorted = {}
        for name, lab in self.features.items():
            order = torch.argsort(lab, stable=True)
            self._sorted[name] = (order, lab[order])

    @classmethod
    def from_induction(cls, batch, segment: torch.Tensor | None = None) -> "EquivalenceClasses":
        """Classes from an :class:`~toylab.data.induction.InductionBatch`: ``"offset"`` (the repeat's offset
        ``d - s``, -1 without a repeat) and ``"structure"`` (offset, start ``d``, length and whether the
        sequence starts with BOS: the same positions are predictable by induction); the loss is scored on
        the positions predictable by induction. ``segment [N]`` (optional, e.g. from :func:`redraw_tokens`
        with ``keep="segment"``): sequences with equal labels share their copied tokens; it adds the
        feature ``"segment"`` (same structure and same label)."""
        from toylab.discovery.metrics import check_induction_batch, induction_positions

        check_induction_batch(batch)
        offset = torch.where(batch.has_repeat, batch.offset, torch.full_like(batch.offset, -1))
        bos = batch.has_bos if getattr(batch, "has_bos", None) is not None else torch.ones_like(batch.has_repeat)
        keys = torch.stack([offset, torch.where(batch.has_repeat, batch.dst_start, -1),
                            torch.where(batch.has_repeat, batch.length, -1), bos.long()], 1)
        structure = torch.unique(keys, dim=0, return_inverse=True)[1]
        features = {"offset": offset, "structure": structure}
        if segment is not None:
            segment = torch.as_tensor(segment)
            if segment.shape != structure.shape or segment.dtype.is_floating_point:
                raise ValueError(f"segment needs one integer label per sequence, [{len(structure)}], "
                                 f"got {list(segment.shape)} {segment.dtype}")
            pair = torch.stack([structure, segment.long()], 1)
            features["segment"] = torch.unique(pair, dim=0, return_inverse=True)[1]
        return cls(batch.tokens, features, induction_positions(batch.is_repeat))

    def check_feature(self, name: str) -> None:
        """``ValueError`` unless ``name`` is one of the features these classes define."""
        if not isinstance(name, str) or name not in self.features:
            raise ValueError(f"unknown feature {name!r}; these classes define {sorted(self.features)}")

    def resample(self, idx: torch.Tensor, feature: str, generator: torch.Generator) -> torch.Tensor:
        """``idx [B]`` pool indices -> ``[B]`` indices drawn uniformly from each one's class under ``feature``."""
        self.check_feature(feature)
        _check_roots(self, idx, "idx")
        _check_generator(generator)
        if feature == "identity":
            return idx
        order, lab = self._sorted[feature]
        q = self.features[feature][idx]
        lo = torch.searchsorted(lab, q, side="left")
        hi = torch.searchsorted(lab, q, side="right")
        u = torch.rand(idx.shape, generator=generator, dtype=torch.float64)
        return order[lo + torch.minimum((u * (hi - lo)).long(), hi - lo - 1)]

    def __len__(self) -> int:
        return self.tokens.shape[0]


KEEP = ("structure", "segment")


def redraw_tokens(batch, d_vocab: int, n_variants: int, generator: torch.Generator, keep: str = "structure"):
    """Variants of each sequence drawn from the generator *given* part of its latent state.

    ``batch``: an :class:`~toylab.data.induction.InductionBatch` of ``N`` sequences (tokens in
    ``1..d_vocab-1``, BOS = 0). Each sequence gets ``n_variants`` variants with the same ``structure``
    (BOS, offset ``o``, start ``d``, length ``L``) and fresh tokens drawn as the generator draws them:
    ``x_p ~ Uniform{1..V-1}`` then ``x_p := x_{p-o}`` for ``d <= p < d + L``. With ``keep="segment"``
    the tokens the copy is made of (source positions ``d-o .. d-o+min(L, o)-1``) are kept too: only the
    noise around the repeat is redrawn.

    Returns ``(variants, parent)``: an InductionBatch of ``N * n_variants`` sequences (variant ``k`` of
    sequence ``i`` at row ``i * n_variants + k``) and ``parent [N * n_variants]`` = ``i``.
    """
    from toylab.data.induction import InductionBatch
    from toylab.discovery.metrics import check_induction_batch

    check_induction_batch(batch)
    _check_generator(generator)
    if isinstance(d_vocab, bool) or not isinstance(d_vocab, int) or d_vocab < 2:
        raise ValueError(f"d_vocab must be an integer >= 2 (BOS and at least one token), got {d_vocab!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if isinstance(n_variants, bool) or not isinstance(n_variants, int) or n_variants < 1:
        raise ValueError(f"n_variants must be a positive integer, got {n_variants!r}")
    if int(batch.tokens.max()) >= d_vocab:
        raise ValueError(f"the batch has token {int(batch.tokens.max())}, outside a vocabulary of {d_vocab}")
    N, n = batch.tokens.shape
    parent = torch.arange(N).repeat_interleave(n_variants)
    has_bos = batch.has_bos if batch.has_bos is not None else torch.ones(N, dtype=torch.bool)
    d, o, L = (t[parent, None] for t in (batch.dst_start, batch.offset, batch.length))
    rep = batch.has_repeat[parent, None]
    pos = torch.arange(n)[None]
    tokens = torch.randint(1, d_vocab, (len(parent), n), generator=generator, dtype=torch.long)
    if keep == "segment":
        seg = rep & (pos >= d - o) & (pos < d - o + torch.minimum(L, o))
        tokens = torch.where(seg, batch.tokens[parent], tokens)
    tokens[:, 0] = torch.where(has_bos[parent], batch.tokens[parent, 0], tokens[:, 0])
    in_copy = rep & (pos >= d) & (pos < d + L)
    tokens = tokens.gather(1, torch.where(in_copy, d - o + (pos - d).clamp_min(0) % o, pos))
    out = InductionBatch(tokens=tokens, is_repeat=batch.is_repeat[parent], has_repeat=batch.has_repeat[parent],
                         src_start=batch.src_start[parent], dst_start=batch.dst_start[parent],
                         length=batch.length[parent], has_bos=has_bos[parent])
    return out, parent


@dataclass(frozen=True)
class Hypothesis:
    """``edges``: ``{edge name: feature}`` for the edges that matter; every other edge is resampled freely."""

    edges: dict

    @classmethod
    def from_circuit(cls, circuit: Circuit, feature: str = "identity") -> "Hypothesis":
        """Every edge of ``circuit`` carries ``feature``."""
        if not isinstance(circuit, Circuit):
            raise TypeError(f"circuit must be a Circuit, got {type(circuit).__name__}")
        if not isinstance(feature, str):
            raise TypeError(f"feature must be a feature name (a string), got {type(feature).__name__}")
        return cls({e: feature for e in circuit.edges})

    def check(self, graph: Graph, classes: EquivalenceClasses) -> None:
        """``ValueError`` for an edge between nodes the model lacks, an unknown edge or feature."""
        check_graph(graph)
        if not isinstance(classes, EquivalenceClasses):
            raise TypeError(f"classes must be EquivalenceClasses, got {type(classes).__name__}")
        if not isinstance(self.edges, dict):
            raise TypeError("Hypothesis.edges must be a dict {edge name: feature}")
        nodes = {n.name for n in graph.nodes}
        slots = set(graph.receivers)
        for e, f in self.edges.items():
            if not isinstance(e, str) or "->" not in e:
                raise ValueError(f"hypothesis edges are named 'sender->receiver', got {e!r}")
            s, r = e.split("->", 1)
            if s not in nodes:
                raise ValueError(f"the hypothesis names node {s!r}, which the model lacks; its nodes are {sorted(nodes)}")
            if r not in slots:
                raise ValueError(f"the hypothesis names receiver {r!r}, which the model lacks; receivers are {graph.receivers}")
            graph.edge_index(e)
            classes.check_feature(f)


def _head_output(attn, h: int, xq, xk, xv) -> torch.Tensor:
    """One head from its inputs ``[B, P, d_model]``: ``softmax*(x_q W_Q (x_k W_K)^T / sqrt(d_head)) x_v W_V W_O``."""
    q, k, v = xq @ attn.W_Q[h], xk @ attn.W_K[h], xv @ attn.W_V[h]
    n = q.shape[1]
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v @ attn.W_O[h]


@torch.no_grad()
def treeified_logits(model, graph: Graph, classes: EquivalenceClasses, hypothesis: Hypothesis,
                     roots: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Logits ``[B, pos, d_vocab]`` of the treeified, resampled model on pool sequences ``roots [B]`` (module doc)."""
    _check_scrub_args(model, graph, classes, hypothesis)
    _check_roots(classes, roots)
    _check_generator(generator)
    feat = {graph.edges[graph.index[e]].name: f for e, f in hypothesis.edges.items()}
    incoming = {r: [graph.edges[i] for i in graph.incoming(r)] for r in graph.receivers}
    P = classes.tokens.shape[1]

    def sender(name: str, idx: torch.Tensor) -> torch.Tensor:
        node = graph.node(name)
        if node.kind == "embed":
            return model.W_E[classes.tokens[idx]]
        if node.kind == "pos":
            return model.W_pos[:P].expand(len(idx), -1, -1)
        if node.kind == "mlp":
            return model.blocks[node.layer].mlp.forward_fast(slot_input(name, idx))
        xs = [slot_input(f"{name}.{slot}", idx) for slot in SLOTS]
        return _head_output(model.blocks[node.layer].attn, node.head, *xs)

    def slot_input(receiver: str, idx: torch.Tensor) -> torch.Tensor:
        total = 0
        for e in incoming[receiver]:
            total = total + sender(e.sender, classes.resample(idx, feat.get(e.name, "any"), generator))
        return total

    return slot_input("logits", roots) @ model.W_U


def position_losses(classes: EquivalenceClasses, logits: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """``[B, pos]``: next-token loss ``-log softmax(logits)[b, p, x_{p+1}]`` of roots ``roots [B]`` at their
    scored positions (``classes.positions``), NaN elsewhere."""
    if not isinstance(classes, EquivalenceClasses):
        raise TypeError(f"classes must be EquivalenceClasses, got {type(classes).__name__}")
    _check_roots(classes, roots)
    want = (len(roots), classes.tokens.shape[1])
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != want:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be [B, pos, d_vocab] with [B, pos] = {list(want)} (one row per root), got {got}")
    tokens, mask = classes.tokens[roots], classes.positions[roots]
    nxt = torch.zeros_like(tokens)
    nxt[:, :-1] = tokens[:, 1:]
    loss = -torch.log_softmax(logits.float(), -1).gather(-1, nxt[..., None])[..., 0]
    return loss.masked_fill(~mask, float("nan"))


@dataclass(frozen=True)
class ScrubResult:
    """``recovered`` and its bootstrap interval ``(low, high)``; the three mean losses (nats).

    ``roots [B]`` (the pool sequences scored) and each root's loss, averaged over its scored positions
    and the resamples: ``per_root_model``, ``per_root_hypothesis``, ``per_root_scrubbed`` ``[B]``.
    """

    recovered: float
    low: float
    high: float
    loss_model: float
    loss_hypothesis: float
    loss_scrubbed: float
    roots: torch.Tensor = field(default=None, repr=False, compare=False)
    per_root_model: torch.Tensor = field(default=None, repr=False, compare=False)
    per_root_hypothesis: torch.Tensor = field(default=None, repr=False, compare=False)
    per_root_scrubbed: torch.Tensor = field(default=None, repr=False, compare=False)
    pool: str = field(default="", repr=False, compare=False)  # the model's and the pool's fingerprint


def scrubbed_position_losses(model, graph: Graph, classes: EquivalenceClasses, hypothesis: Hypothesis,
                             roots: torch.Tensor, n_resamples: int = 1,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, pos]``: the loss of the treeified model under ``hypothesis`` at each scored position of
    ``roots [B]``, averaged over ``n_resamples`` runs (NaN at unscored positions, see :func:`position_losses`)."""
    _check_count(n_resamples, "n_resamples")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    runs = [position_losses(classes, treeified_logits(model, graph, classes, hypothesis, roots, g), roots)
            for _ in range(n_resamples)]
    return torch.stack(runs).mean(0)


def scrub(model, graph: Graph, classes: EquivalenceClasses, hypothesis: Hypothesis, n_resamples: int = 4,
          n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
          baseline: ScrubResult | None = None) -> ScrubResult:
    """Causal-scrubbing score of ``hypothesis`` on every pool sequence as a root (module doc).

    ``n_resamples`` treeified runs per root (their losses averaged), ``n_boot`` bootstrap draws of the
    roots for the ``confidence`` interval; ``seed`` fixes every draw. ``baseline``: an earlier result on
    the same ``classes`` whose model and fully scrubbed losses are reused (one scrub costs half as much).
    """
    _check_scrub_args(model, graph, classes, hypothesis)
    _check_count(n_resamples, "n_resamples"), _check_count(n_boot, "n_boot")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    roots = torch.nonzero(classes.positions.any(1)).flatten()  # sequences with a position to score
    g = torch.Generator().manual_seed(int(seed))
    pool = graph.model_key + hashlib.sha1(classes.tokens.long().contiguous().numpy().tobytes()
                                          + classes.positions.contiguous().numpy().tobytes()).hexdigest()[:12]
    if baseline is not None:
        if not isinstance(baseline, ScrubResult) or baseline.pool != pool or not torch.equal(baseline.roots, roots):
            raise ValueError("baseline must be a ScrubResult of scrub() on the same model and the same classes "
                             "(the same pool of sequences and scored positions)")
        l_model, ls = baseline.per_root_model, baseline.per_root_scrubbed
    else:
        with torch.no_grad():
            l_model = position_losses(classes, model(classes.tokens[roots]), roots).nanmean(1)  # per root
    lh = scrubbed_position_losses(model, graph, classes, hypothesis, roots, n_resamples, g).nanmean(1)
    if baseline is None:
        ls = scrubbed_position_losses(model, graph, classes, Hypothesis({}), roots, n_resamples, g).nanmean(1)
    for what, v in (("the model's", l_model), ("the hypothesis's", lh), ("the fully scrubbed", ls)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{what} loss is NaN or inf on {int((~torch.isfinite(v)).sum())} of {len(v)} roots: "
                             "are the model's weights finite?")
    if float(ls.mean() - l_model.mean()) <= 0:
        raise ValueError("the fully scrubbed model is no worse than the model itself: there is no loss to recover")

    def ratio(i):
        return (ls[i].mean(-1) - lh[i].mean(-1)) / (ls[i].mean(-1) - l_model[i].mean(-1))

    boot = ratio(torch.randint(0, len(roots), (n_boot, len(roots)), generator=g))
    a = (1 - confidence) / 2
    low, high = torch.quantile(boot.double(), torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return ScrubResult(float(ratio(torch.arange(len(roots)))), low, high, float(l_model.mean()), float(lh.mean()),
                       float(ls.mean()), roots, l_model, lh, ls, pool)


def _check_count(v, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _check_roots(classes: EquivalenceClasses, roots, name: str = "roots") -> None:
    if not isinstance(roots, torch.Tensor) or roots.ndim != 1 or roots.dtype != torch.long:
        got = f"{list(roots.shape)} {roots.dtype}" if isinstance(roots, torch.Tensor) else type(roots).__name__
        raise ValueError(f"{name} must be a LongTensor [B] of pool indices, got {got}")
    if roots.numel() and (int(roots.min()) < 0 or int(roots.max()) >= len(classes)):
        raise ValueError(f"{name} must index the pool of {len(classes)} sequences (0..{len(classes) - 1}), "
                         f"got values {int(roots.min())}..{int(roots.max())}")


def _check_scrub_args(model, graph, classes, hypothesis) -> None:
    check_model_graph(model, graph)
    if graph.cfg.layernorm:
        raise ValueError("scrub needs a model without LayerNorm (it sums sender outputs unnormalised); ACDC handles it")
    if not isinstance(classes, EquivalenceClasses):
        raise TypeError(f"classes must be EquivalenceClasses, got {type(classes).__name__}")
    if not isinstance(hypothesis, Hypothesis):
        raise TypeError(f"hypothesis must be a Hypothesis, got {type(hypothesis).__name__}")
    hypothesis.check(graph, classes)
    model.check_tokens(classes.tokens)
