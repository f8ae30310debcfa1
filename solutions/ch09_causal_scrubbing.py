"""Chapter 9 — causal scrubbing. Reference answers.

A hypothesis about a circuit names edges of the model's graph and, for each,
the input feature it carries; causal scrubbing resamples every edge within the
classes of inputs the hypothesis calls equivalent and scores the loss that
survives. The lab's generator defines those classes exactly, so every answer
here is checked against ground truth. Grade your own answers in
``exercises/ch09_causal_scrubbing.py`` with ``toylab grade --chapter 9``.
"""

from __future__ import annotations

import torch


def loss_recovered(loss_model: float, loss_hypothesis: float, loss_scrubbed: float) -> float:
    """The causal-scrubbing score of a hypothesis from three mean losses.  ★  (about 5 min)

    Args:
        loss_model: mean loss of the model itself (nats).
        loss_hypothesis: mean loss of the treeified model resampled as the hypothesis allows.
        loss_scrubbed: mean loss with every edge resampled from unrelated inputs.

    Returns:
        The float ``(L_scrub - L_hyp) / (L_scrub - L_model)``: 1 when the hypothesis keeps all of the
        model's performance, 0 when it keeps none (it may leave ``[0, 1]``).
        A ``ValueError`` when ``L_scrub == L_model`` (no gap: the score is undefined).

    Hint: which of the three losses is the score's zero, and which is its one?
    """
    gap = float(loss_scrubbed) - float(loss_model)
    if gap == 0:
        raise ValueError("the scrubbed model is as good as the model: there is no loss to recover")
    return (float(loss_scrubbed) - float(loss_hypothesis)) / gap


def offset_classes(batch) -> torch.Tensor:
    """Equivalence classes "same repeat offset" for a batch of the induction generator.  ★  (about 10 min)

    Args:
        batch: an :class:`~toylab.data.induction.InductionBatch` with ``has_repeat [N]`` (bool),
            ``src_start [N]``, ``dst_start [N]`` (the copy at ``d`` repeats the tokens from ``s``).

    Returns:
        A LongTensor ``[N]`` of class labels: two sequences get the same label exactly when both have a
        repeat with the same offset ``o = d - s``, or when neither has a repeat (one class of its own).
        Any labelling with that partition is right; the batch is not changed.

    Hint: the generator draws an offset even for a sequence without a repeat.
    """
    offset = batch.dst_start - batch.src_start
    return torch.where(batch.has_repeat, offset, torch.full_like(offset, -1)).long()


def resample_within_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of the pool that stays inside each equivalence class.  ★★  (about 15 min)

    Args:
        labels: LongTensor ``[N]``, the class of each pool sequence (equal labels = equivalent).
        generator: the ``torch.Generator`` every random draw must use.

    Returns:
        LongTensor ``[N]`` ``idx``: a permutation of ``0..N-1`` with ``labels[idx] == labels``, drawn
        uniformly among such permutations (each class shuffled by its own uniform random permutation).
        ``labels`` is not changed.

    Hint: ``torch.randperm(k, generator=...)`` shuffles ``k`` things; do it for the members of
    each class and put them back in the class's own slots.
    """
    out = torch.arange(len(labels))
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        out[members] = members[torch.randperm(len(members), generator=generator)]
    return out


def bootstrap_interval(loss_model: torch.Tensor, loss_hypothesis: torch.Tensor, loss_scrubbed: torch.Tensor,
                       n_boot: int, confidence: float, generator: torch.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of the loss recovered, over root sequences.  ★★  (about 15 min)

    Args:
        loss_model, loss_hypothesis, loss_scrubbed: ``[N]`` each root sequence's loss under the model,
            the hypothesis and the full scrub.
        n_boot: number of bootstrap draws ``B``.
        confidence: e.g. 0.95.
        generator: the ``torch.Generator`` for the draws.

    Returns:
        ``(low, high)``: draw ``B`` samples of ``N`` roots with replacement; for each, the loss recovered
        ``(mean L_scrub - mean L_hyp) / (mean L_scrub - mean L_model)`` over the drawn roots (a ratio of
        means, as the point estimate is); ``low, high`` are the ``(1 - confidence) / 2`` and
        ``(1 + confidence) / 2`` quantiles of those ``B`` ratios.

    Hint: index all three losses with the *same* ``[B, N]`` draw, average over the roots, then take
    quantiles over the ``B`` draws.
    """
    N = loss_model.shape[0]
    idx = torch.randint(0, N, (n_boot, N), generator=generator)
    lm, lh, ls = (t.double()[idx].mean(-1) for t in (loss_model, loss_hypothesis, loss_scrubbed))
    ratios = (ls - lh) / (ls - lm)
    a = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return low, high


def which_hypotheses_are_falsified(results: dict, required: float = 0.9) -> list[str]:
    """Read a table of scrubbing scores and say which hypotheses it falsifies (judgement).  ★★  (about 10 min)

    Each hypothesis claims two things: resampling within its classes does not change the model's
    expected loss, and so it explains at least ``required`` of the loss.

    Args:
        results: ``{name: (recovered, low, high)}``, the loss recovered and its 95% bootstrap interval.
        required: the share of the loss a hypothesis must explain to survive.

    Returns:
        The sorted list of the names whose scores are incompatible with their claim.

    Hint: a point estimate alone is not a verdict, and an interval that reaches ``required`` does not
    rule it out. Then ask what a *true* hypothesis recovers in expectation, and what a score
    clearly on the far side of that would mean.
    """
    return sorted(name for name, (_, low, high) in results.items() if high < required or low > 1.0)


def predict_one_induction_head() -> float:
    """Predict a score before computing it (judgement).  ★  (about 5 min)

    Take the minimal induction circuit of the chapter (``"+ tokens into queries and values"``, 9 edges)
    and keep only the edges of one induction head, L1H1: ``L1H1->logits``, ``L0H0->L1H1.k``,
    ``embed->L0H0.v``, ``embed->L1H1.q``, ``embed->L1H1.v`` (5 edges, each ``"identity"``). Before
    running it, predict the loss recovered on a pool drawn as in the chapter. The test computes it; your
    prediction must fall within 0.15.

    Returns:
        Your predicted loss recovered (a float).

    Hint: are the two induction heads two halves of one mechanism, or two copies of it? The ladder
    says what happens when a head's inputs are resampled; which of the two writes more of the
    prediction?
    """
    return 0.75


def design_hypothesis(model, graph, tokens: torch.Tensor) -> dict:
    """A hypothesis of at most 9 edges that explains at least 0.9 of the loss (judgement).  ★★★  (about 20 min)

    Args:
        model: a two-layer attention-only model trained on the induction data (the shipped
            ``induction-2l``, or a copy whose heads are renumbered).
        graph: its :class:`~toylab.discovery.graph.Graph`.
        tokens: ``[batch, pos]`` sequences with repeats, to find the heads with.

    Returns:
        ``{edge name: feature}`` with at most 9 edges; features are ``"identity"``, ``"segment"``,
        ``"structure"``, ``"offset"`` or ``"any"``. The test scrubs it on a pool drawn as in the
        chapter and requires a loss recovered of at least 0.9.

    Hint: find the heads with the detectors instead of writing their indices
    (``toylab.discovery.reference.induction_heads``); then think about which three inputs an
    induction head needs, and where its keys get "the token before" from.
    """
    from toylab.discovery.graph import head_name
    from toylab.discovery.reference import induction_heads

    prev, heads = induction_heads(model, tokens)
    p = head_name(*prev)
    edges = {f"embed->{p}.v": "identity"}
    for layer, h in heads:
        i = head_name(layer, h)
        edges.update({f"{i}->logits": "identity", f"{p}->{i}.k": "identity",
                      f"embed->{i}.q": "identity", f"embed->{i}.v": "identity"})
    return edges
