"""Chapter 8 — attribution patching and automated circuit discovery. Exercises.

An attention-only model without LayerNorm is exactly a graph of edges
(sender -> a head's query, key or value input, or the logits). Patching one
edge, estimating every edge with one backward pass, scoring the estimate
against the exact answer, and pruning the graph greedily (ACDC) are the tools
of this chapter; the lab knows the induction circuit of ``induction-2l``, so
each answer is checked against it.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 8

or, in a notebook, ``toylab.course.grading.check("ch08", "spearman")``.
The reference answers are in ``solutions/ch08_attribution_patching_and_acdc.py``: try first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def edge_patch_effect(model, clean: torch.Tensor, corrupted: torch.Tensor, metric: Callable,
                      sender: str, receiver: str) -> float:
    """The exact effect of patching ONE edge of the graph (noising).  ★★★  (about 30 min)

    Args:
        model: an ``AttnOnlyTransformer`` without LayerNorm (any number of layers and heads).
        clean, corrupted: ``[batch, pos]`` token batches of the same shape.
        metric: ``logits [batch, pos, d_vocab] -> 0-dim tensor``.
        sender: ``"embed"``, ``"pos"`` or a head ``"L{l}H{h}"`` (its output ``z^h W_O^h``,
            hook ``blocks.{l}.attn.hook_result[:, :, h]``; the embeddings are ``hook_embed``
            and ``hook_pos_embed``).
        receiver: a head's input slot ``"L{l}H{h}.q"`` (``.k``, ``.v``) downstream of the sender,
            or ``"logits"``.

    Returns:
        The float ``M(clean run with x_r := x_r - out_s^clean + out_s^corrupted) - M(clean run)``:
        only receiver ``r`` reads the sender's corrupted output, every other reader of the
        sender still sees its clean output.

    Hint: the model has per-head input hooks ``blocks.{l}.attn.hook_q_input`` (and ``_k_``,
    ``_v_``), ``[batch, pos, n_heads, d_model]``, and the logits read
    ``blocks.{L-1}.hook_resid_post``. Add a difference to one head's slice there; do not touch
    the sender's own output (that would patch every edge out of it).
    """
    raise NotImplementedError


def atp_estimate(grad: torch.Tensor, base_act: torch.Tensor, other_act: torch.Tensor) -> torch.Tensor:
    """The attribution-patching estimate of patching each head's activation.  ★  (about 10 min)

    Args:
        grad: ``[batch, pos, n_heads, d]``, ``dM/da`` at the base run (the run you start from).
        base_act: ``[batch, pos, n_heads, d]``, the activation ``a`` on the base run.
        other_act: ``[batch, pos, n_heads, d]``, the activation on the run you patch in.

    Returns:
        ``[n_heads]``: ``sum_{batch, pos, d} (a_other - a_base) * dM/da``, the first-order
        estimate of ``M(base with a := a_other) - M(base)`` for each head. Noising: base =
        clean, other = corrupted; denoising: base = corrupted, other = clean.

    Hint: a first-order Taylor step from the base run towards the other run; keep the head axis.
    """
    raise NotImplementedError


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation, tied values sharing their average rank.  ★★  (about 15 min)

    Args:
        a, b: ``[n]`` float tensors (e.g. estimated and exact effects of ``n`` edges).

    Returns:
        The float Pearson correlation of ``rank(a)`` and ``rank(b)``, where the ``m`` values
        tied at one value all get the mean of the ``m`` ranks they occupy (values ``[5, 1, 5]``
        get ranks ``[1.5, 0, 1.5]`` counting from 0).

    Hint: exact effects of 0 are common (many edges do nothing), so ties matter. The rank of
    ``x_i`` is how many values are below it plus half of how many others equal it.
    """
    raise NotImplementedError


def roc_auc(scores: torch.Tensor, in_reference: torch.Tensor) -> float:
    """The ROC AUC of ranking edges by ``|score|`` against a reference circuit.  ★★  (about 15 min)

    Args:
        scores: ``[n]`` one score per edge, any sign (an effect of -3 matters as much as +3).
        in_reference: ``[n]`` bool, True for the edges of the reference circuit (at least one
            True and one False).

    Returns:
        The float probability that a random reference edge has a larger ``|score|`` than a
        random edge outside the reference, ties counting 1/2: 1 for a perfect ranking, 0.5
        for a useless one.

    Hint: compare every (reference, non-reference) pair of ``|score|``s; the mean of
    ``1[p > n] + 1/2 1[p = n]`` over the pairs is the area under the ROC curve.
    """
    raise NotImplementedError


def acdc_prune(metric_of: Callable, edges: Sequence[str], tau: float) -> list[str]:
    """The greedy pruning loop of ACDC.  ★★  (about 20 min)

    Args:
        metric_of: ``frozenset of removed edge names -> float``, the metric (e.g. KL to the
            clean output) of the graph with those edges patched; ``metric_of(frozenset())`` is
            the full graph's.
        edges: the edge names in the order ACDC visits them.
        tau: the threshold, >= 0.

    Returns:
        The kept edges (a list, in visiting order). Visit each edge once: tentatively remove
        it on top of everything removed so far; if the metric rose by less than ``tau``
        (``M(removed + e) - M(current) < tau``), the removal stands and the current metric
        becomes ``M(removed + e)``; otherwise the edge is restored and kept.

    Hint: compare with the metric of the graph *as it is now*, not with the full graph's;
    a removal that lowers the metric is always accepted.
    """
    raise NotImplementedError


def choose_metric() -> str:
    """Judgement: which metric should edge attribution patching linearise?  ★★  (about 10 min)

    EAP takes one gradient at the clean run and estimates every edge's noising effect as
    ``(out_s^corr - out_s^clean) . dM/dx_r``. The candidates: ``"kl"`` (KL divergence of the
    patched output from the clean output), ``"logit_diff"`` (clean next token's logit minus
    the corrupted next token's) and ``"loss"`` (next-token loss on the positions induction
    predicts).

    Returns:
        The name of one metric. Graded by running EAP with it on ``induction-2l`` (two
        batches) and checking that its ranking of the edges agrees with exact edge patching
        on that same metric (Spearman >= 0.7, top-9 recall >= 0.75).

    Hint: where does KL(clean || patched) have its minimum, and what is a gradient there?
    """
    raise NotImplementedError


def choose_tau(taus: Sequence[float], n_edges: Sequence[int], kl: Sequence[float]) -> float:
    """Judgement: pick ACDC's threshold from a sweep, without knowing the answer.  ★★★  (about 25 min)

    Args:
        taus: increasing thresholds of a sweep, from tiny to large.
        n_edges: the number of edges ACDC kept at each threshold (non-increasing).
        kl: the KL divergence of each kept circuit's output from the full model's output.

    Returns:
        One of ``taus``. Graded by whether the circuit ACDC keeps at your threshold is the
        circuit the lab knows (every reference edge kept, precision >= 0.75), on sweeps the
        test runs on ``induction-2l`` and on ``skiptrigram-1l`` with different threshold grids.

    Hint: small thresholds keep noise edges that cost almost nothing; too large a threshold
    throws away real mechanism and the circuit's KL jumps by orders of magnitude. Look for
    where the KL of the kept circuit jumps, and stop just before it.
    """
    raise NotImplementedError


def is_edge_real(exact_alone: float, exact_without_partner: float, approx: float, tau: float) -> bool:
    """Judgement: is this edge part of the circuit?  ★★  (about 15 min)

    For one edge you are given three numbers, all the increase of the KL divergence from the
    clean output when the edge is patched to the corrupted run:

    Args:
        exact_alone: exact patching of this edge alone.
        exact_without_partner: exact patching of this edge after its counterpart at the other,
            partly redundant induction head is already patched (equal to ``exact_alone`` for an
            edge without a counterpart).
        approx: the EAP estimate (a gradient at the clean run) of ``exact_alone``.
        tau: how large an increase makes an edge matter (an increase of at least ``tau``).

    Returns:
        True if the edge is part of the mechanism. Graded on every edge of ``induction-2l``
        against the known induction circuit, at several ``tau``.

    Hint: which of the three numbers is a measurement and which an estimate? And can two
    heads that back each other up both look unimportant when tested one at a time?
    """
    raise NotImplementedError
