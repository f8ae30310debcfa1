"""Chapter 13 — When methods fail. Exercises.

Every method of chapters 5-9 gives its right answer on a clean model. On
the suite's models it does not: a backup head hides from single ablations,
a saturated softmax hides from a gradient, a greedy search keeps whichever
of two redundant heads it met last, a probe reads a feature that merely
correlates with the planted one, an SAE's score moves from seed to seed,
and on a dense model a method still returns a small circuit. These
exercises compute the numbers that expose each failure and ask you to
decide, from them, whether to trust a method's output.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 13

or, in a notebook, ``toylab.course.grading.check("ch13", "kept_and_removed")``.
The reference answers are in ``solutions/ch13_when_methods_fail.py``: try first.
"""

from __future__ import annotations

import math  # noqa: F401  (math.inf and math.nan, for your answers)

import torch


def kept_and_removed(b_keep: float, b_remove: float, b_all: float) -> tuple[float, float, bool]:
    """The intervention check of a circuit: what it keeps, what removing it destroys.  ★  (about 5 min)

    The behaviour ``B`` of a run is its distance from the clean run (``B = 0``
    for the clean run itself, ``b_all > 0`` with every edge patched).

    Args:
        b_keep: ``B`` with every edge *outside* the circuit patched;
        b_remove: ``B`` with every edge *of* the circuit patched;
        b_all: ``B`` with every edge patched.

    Returns:
        ``(kept, removed, holds)``: ``kept = 1 - b_keep / b_all`` (the circuit's
        faithfulness), ``removed = b_remove / b_all``, and ``holds``: whether
        ``kept >= 0.9`` and ``removed >= 0.8`` (the suite's bar for a truth).

    Hint: ``b_keep`` is a distance from the clean run, so a faithful circuit
    has a *small* ``b_keep``.
    """
    raise NotImplementedError


def auroc_by_magnitude(scores: torch.Tensor, is_true: torch.Tensor) -> float:
    """The AUROC of ranking edges by the size of a method's score.  ★★  (about 15 min)

    Args:
        scores: ``[n_edges]`` float, a method's score per edge (its sign says
            only which way the metric moved); not modified.
        is_true: ``[n_edges]`` bool, the planted truth (at least one True and
            one False); not modified.

    Returns:
        The probability that a true edge has a larger ``|score|`` than a
        false edge, over every (true, false) pair; a tie counts 1/2.

    Hint: compare every true edge with every false edge (a ``[P, N]`` table).
    """
    raise NotImplementedError


def decorrelated_accuracy(pred: torch.Tensor, labels: torch.Tensor,
                          correlate: torch.Tensor) -> tuple[float, float]:
    """A probe's accuracy, overall and where a correlated feature disagrees.  ★  (about 10 min)

    Args:
        pred: ``[N]`` LongTensor, the probe's predicted class per row; not modified.
        labels: ``[N]`` LongTensor, the planted variable's value per row; not modified.
        correlate: ``[N]`` LongTensor, a feature that often equals the label
            (e.g. the current token); not modified.

    Returns:
        ``(accuracy, decorrelated)``: the share of rows with ``pred == labels``,
        and the same share over only the rows where ``correlate != labels``
        (``nan`` if there are none).

    Hint: the rows to keep are chosen by the truth and the correlate, not by
    what the probe predicted.
    """
    raise NotImplementedError


def trust_single_ablations(e_a: float, e_b: float, e_ab: float) -> tuple[str, float]:
    """Judgement: can two heads be scored one ablation at a time?  ★★  (about 15 min)

    ``e_a`` and ``e_b`` are the shares of the behaviour lost when head A, or
    head B, is ablated alone; ``e_ab`` the share lost when both are ablated
    together (all ``>= 0``).

    Returns:
        ``(choice, ratio)``: ``ratio = e_ab / (e_a + e_b)`` (``math.inf`` when
        ``e_a + e_b == 0`` and ``e_ab > 0``; ``1.0`` when all three are 0);
        ``choice`` is ``"ablate jointly"`` when ``ratio >= 1.5`` (the heads back
        each other up: single ablations under-report both), else ``"trust"``.

    Hint: two small single effects do not make two unimportant heads; the
    joint effect decides.
    """
    raise NotImplementedError


def trust_eap_ranking(eap: torch.Tensor, exact: torch.Tensor, k: int) -> tuple[str, float]:
    """Judgement: does a gradient estimate find the edges that matter?  ★★  (about 15 min)

    Args:
        eap: ``[n_edges]`` the estimate (e.g. EAP) of each edge's effect; not modified.
        exact: ``[n_edges]`` the exact effect of patching each edge alone
            (measured on a sample to check the estimate); not modified.
        k: how many top edges matter.

    Returns:
        ``(choice, recall)``: ``recall`` is the share of the ``k`` edges with
        the largest ``|exact|`` that are among the ``k`` edges with the largest
        ``|eap|``; ``choice`` is ``"trust"`` if ``recall == 1.0``, else
        ``"re-check"`` (patch the edges the estimate ranks low exactly).

    Hint: a high rank correlation over all edges can hide one large edge the
    estimate puts near zero (a saturated softmax has almost no gradient).
    """
    raise NotImplementedError


def trust_acdc_circuit(circuit_a, circuit_b) -> tuple[str, float]:
    """Judgement: is ACDC's circuit a fact about the model or about its search?  ★  (about 10 min)

    Args:
        circuit_a, circuit_b: the edge names (any collection of strings) ACDC
            kept at one threshold with two sender orders; not modified.

    Returns:
        ``(choice, jaccard)``: ``jaccard = |A & B| / |A | B|`` (``1.0`` if both
        are empty); ``choice`` is ``"stable"`` if the two circuits are the same
        set of edges, else ``"order-dependent"``.

    Hint: two circuits of the same size can keep different heads.
    """
    raise NotImplementedError


def trust_returned_circuit(faithfulness: float, random_faithfulness) -> tuple[str, float]:
    """Judgement: a method returned a circuit; is it one?  ★★  (about 15 min)

    Args:
        faithfulness: the share of the behaviour the returned circuit keeps alone.
        random_faithfulness: the same share for random circuits of the same
            number of edges (a list or 1-D tensor, at least one value).

    Returns:
        ``(choice, margin)``: ``margin = faithfulness - max(random_faithfulness)``;
        ``choice`` is ``"trust"`` when ``faithfulness >= 0.9`` and
        ``margin >= 0.1``, else ``"low confidence"``.

    Hint: where the behaviour is spread over the whole model, any circuit of
    that size keeps as much; a faithful circuit is then no discovery.
    """
    raise NotImplementedError


def trust_probe(accuracy: float, decorrelated: float, chance: float) -> tuple[str, float]:
    """Judgement: does a probe read the planted variable, or a correlate of it?  ★★  (about 10 min)

    Args:
        accuracy: the probe's held-out accuracy on every row.
        decorrelated: its accuracy on the rows where the correlated feature
            disagrees with the planted variable.
        chance: ``1 / n_classes``.

    Returns:
        ``(choice, lift)``: ``lift = decorrelated - chance``; ``choice`` is
        ``"planted"`` when ``lift >= 0.5 * (accuracy - chance)`` (the probe keeps
        at least half its lift over chance where the correlate cannot help),
        else ``"correlated"``.

    Hint: an accuracy far above chance says the variable is predictable from
    the activation, not that the model computed it.
    """
    raise NotImplementedError


def trust_sae_mcc(mccs, threshold: float = 0.9) -> tuple[str, float]:
    """Judgement: does an SAE recover the planted features?  ★  (about 5 min)

    Args:
        mccs: the SAE's MCC against the planted directions, one per training
            seed (a list or 1-D tensor, at least one value).
        threshold: the MCC a recovery must reach.

    Returns:
        ``(choice, worst)``: ``worst`` the lowest MCC over the seeds; ``choice``
        is ``"trust"`` if ``worst >= threshold``, else ``"do not trust"``.

    Hint: a claim about a method holds at every seed you ran, not on average.
    """
    raise NotImplementedError
