"""Chapter 4 — induction heads. Exercises.

An induction head completes ``[A][B] ... [A] -> [B]``: at a token ``A`` it
attends to the token right after an earlier ``A`` and copies it. On the probe
``[BOS, r, r]`` (random tokens ``r`` repeated once) a model with induction
heads predicts the second copy almost perfectly, while a one-layer model cannot.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 4

or, in a notebook, ``toylab.course.grading.check("ch04", "induction_score")``.
The reference answers are in ``solutions/ch04_induction.py``: try first.
"""

from __future__ import annotations

import math

import torch

BOS = 0  # the beginning-of-sequence token, always at position 0


def make_probe(d_vocab: int, half_len: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Build the induction probe ``[BOS, r, r]``.  ★  (about 5 min)

    Args:
        d_vocab: vocabulary size ``V``; the random tokens are uniform on ``1..V-1``
            (never ``BOS = 0``).
        half_len: ``L``, the length of ``r``.
        batch: how many sequences.
        generator: the only source of randomness.

    Returns:
        ``[batch, 1 + 2 L]`` ``torch.long``: ``x_0 = BOS``, ``x_1..x_L = r`` and
        ``x_{L+1}..x_{2L} = r`` again, so ``x_{p + L} = x_p`` for ``1 <= p <= L``.
        Draw ``r`` with one call ``torch.randint(1, d_vocab, (batch, half_len),
        generator=generator)``, so the probe equals ``toylab.data.repeated_tokens``.

    Hint: ``torch.cat`` along dim 1 of a column of ``BOS`` and ``r`` twice.
    """
    raise NotImplementedError


def per_position_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """The model's mean loss at every position of a batch.  ★★  (about 10 min)

    Args:
        model: an ``AttnOnlyTransformer``; ``model(tokens)`` gives logits
            ``[batch, pos, d_vocab]``.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[pos - 1]`` float: entry ``p`` is the cross-entropy of predicting the
        token at position ``p + 1`` from the logits at position ``p``, averaged
        over the batch::

            loss[p] = mean_b ( -log softmax(logits[b, p])[tokens[b, p + 1]] )

    Hint: the logits at the last position predict a token past the end, so
    drop them; ``torch.log_softmax`` then ``.gather`` on the last dimension.
    """
    raise NotImplementedError


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """How much each head attends to the previous position.  ★  (about 5 min)

    Args:
        pattern: ``[batch, n_heads, query_pos, key_pos]`` attention patterns
            (rows sum to 1, causal).

    Returns:
        ``[n_heads]``: ``mean_{b, q >= 1} A[b, h, q, q - 1]``, the mean attention
        from each destination to the position just before it (position 0 has
        no previous position and is left out).

    Hint: the entries ``A[..., q, q - 1]`` lie on one line of the square
    ``[query_pos, key_pos]`` matrix, parallel to its main diagonal; torch can
    pick out such a line for you. Which axes do you average over?
    """
    raise NotImplementedError


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor,
                          destinations: torch.Tensor | None = None) -> torch.Tensor:
    """How much each head attends from a token to its earlier copies.  ★★  (about 15 min)

    Args:
        pattern: ``[batch, n_heads, pos, pos]`` attention patterns.
        tokens: ``[batch, pos]`` the tokens the patterns were computed on.
        destinations: optional bool mask ``[pos]`` or ``[batch, pos]``: count only
            these destinations.

    Returns:
        ``[n_heads]``::

            score_h = mean_{(b, q) in D} sum_{k < q : t_k = t_q} A[b, h, q, k]

        where ``D`` holds the destinations ``(b, q)`` whose token occurred
        earlier in the sequence (and that are in ``destinations``, if given).
        A destination without an earlier copy is not averaged in at all.

    Hint: ``same[b, q, k] = tokens[b, q] == tokens[b, k]`` by broadcasting; keep
    only ``k < q`` with a strictly lower-triangular mask (``tril(diagonal=-1)``).
    """
    raise NotImplementedError


def induction_score(pattern: torch.Tensor, tokens: torch.Tensor,
                    destinations: torch.Tensor | None = None) -> torch.Tensor:
    """How much each head attends to the token *after* an earlier copy of the current one.  ★★★  (about 20 min)

    Args:
        pattern: ``[batch, n_heads, pos, pos]`` attention patterns.
        tokens: ``[batch, pos]``.
        destinations: optional bool mask ``[pos]`` or ``[batch, pos]`` (on the
            probe ``[BOS, r, r]``: the positions of the second copy).

    Returns:
        ``[n_heads]``::

            score_h = mean_{(b, q) in D} sum_{1 <= k <= q : t_{k-1} = t_q} A[b, h, q, k]

        ``D``: destinations whose token occurred at some ``k - 1 < q`` (and in
        ``destinations``, if given). Key ``k`` may equal ``q`` (at the last
        position of a repeat the token after the earlier copy can be ``q`` itself).

    Hint: build ``match[b, q, k] = (t_q == t_{k-1})`` for ``k >= 1`` by comparing
    ``tokens[:, :, None]`` with ``tokens[:, None, :-1]`` and writing it into
    columns ``1:`` of a ``False`` tensor; then keep ``k <= q`` (``tril()``).
    """
    raise NotImplementedError


def icl_score(model, tokens: torch.Tensor, early: int = 5, late: int | None = None) -> float:
    """The in-context-learning score: how much later tokens gain from the context.  ★  (about 10 min)

    Args:
        model: an ``AttnOnlyTransformer``.
        tokens: ``[batch, pos]`` sequences from the training distribution.
        early, late: token indices with ``1 <= early < late <= pos - 1``;
            ``late`` defaults to ``pos - 1``, the last token.

    Returns:
        A Python float, in nats::

            ICL = mean_b loss(token late) - mean_b loss(token early)

        where "loss of token ``i``" is the cross-entropy of predicting
        ``tokens[:, i]`` from ``tokens[:, :i]``. Negative: the model does better
        with more context.

    Hint: ``model(tokens, return_type="loss_per_token")`` is ``[batch, pos - 1]``
    and its column ``i - 1`` is the loss of token ``i``.
    """
    raise NotImplementedError


def find_heads(scores: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """The heads whose detector score reaches a threshold, best first.  ★  (about 5 min)

    Args:
        scores: ``[n_layers, n_heads]`` one detector's scores (e.g.
            ``head_detector_scores(model, tokens)["induction"]``).
        threshold: the score a head needs.

    Returns:
        A list of ``(layer, head)`` tuples of Python ints, one for every head with
        ``scores[layer, head] >= threshold``, sorted by score, highest first;
        an empty list if none qualifies.

    Hint: first collect the positions of the qualifying scores (a head exactly
    at the threshold qualifies), then order them by their score; convert
    tensor indices to Python ints.
    """
    raise NotImplementedError


def phase_change_step(history: list[dict], key: str = "best_induction", threshold: float = 0.5) -> int | None:
    """The training step at which a score jumps up and stays up.  ★★  (about 10 min)

    Args:
        history: evaluations in training order, each a dict with ``"step"`` and
            ``key`` (e.g. ``load_shipped("induction-2l").history``).
        key: which number to watch.
        threshold: the level it must reach.

    Returns:
        The ``"step"`` of the first evaluation from which on *every* evaluation
        (that one and all later ones) has ``entry[key] >= threshold``; ``None`` if
        the last evaluation is below the threshold (the change never happened).

    Hint: walk the history backwards while the value stays above the threshold.
    """
    raise NotImplementedError


def previous_token_head_from_positions(model, layer: int) -> int:
    """Find the previous-token head of a layer from its positional QK circuit alone.  ★★  (about 15 min)

    A judgement from the weights, before any forward pass: a head that
    attends to the previous position whatever the tokens are should do so
    because of positions. Read each head's position-only attention pattern
    from ``W_pos`` and the layer's ``W_Q, W_K`` (no tokens, no model run),
    decide which head is the previous-token head, and return it. The grader
    checks your choice against the previous-token scores measured on the
    model's real attention patterns.

    The position-only pattern of head ``h``::

        S[p, q] = (W_pos[p] W_Q[h]) . (W_pos[q] W_K[h]) / sqrt(d_head),   A = softmax over q of S

    as attention really is computed (the scale, the causal mask).

    Args:
        model: an :class:`~toylab.model.AttnOnlyTransformer` with positions
            (``"learned"`` or ``"shortformer"``; not modified).
        layer: the layer to read.

    Returns:
        int, the head whose position-only pattern puts the most weight on the
        previous position (averaged over query positions ``p >= 1``).

    Hint: read the weights with the same rules attention obeys: a query may
    not look at a later key, whatever its score.
    """
    raise NotImplementedError
