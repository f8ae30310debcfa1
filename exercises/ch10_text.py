"""Chapter 10 — the lab on text. Exercises.

A character model of the standard library's docstrings has no planted rules,
but its corpus can be counted: the character-bigram table, how often a
character follows another one a few places back, where a span repeats. These
exercises score a model's weights and attention against such counts, and ask
you to decide what the counts can and cannot show.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 10

or, in a notebook, ``toylab.course.grading.check("ch10", "bigram_fit")``.
The reference answers are in ``solutions/ch10_text.py``: try first.
"""

from __future__ import annotations

import torch

BOS = 0  # the beginning-of-sequence token, always at position 0


def char_bigram_table(ids: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """The corpus's character-bigram table ``P(next | current)``.  ★  (about 10 min)

    Args:
        ids: ``[N]`` token ids of a corpus (``0 <= ids < d_vocab``); not modified.
        d_vocab: the number of token ids ``V``.

    Returns:
        ``[V, V]`` float: ``P[a, b] = n(a, b) / sum_b' n(a, b')`` where
        ``n(a, b) = #{t < N - 1 : ids[t] = a, ids[t + 1] = b}`` counts the
        neighbouring pairs. A row whose character is never followed by
        anything (it never occurs before the last place) is all zeros.

    Hint: one pass over the ``N - 1`` pairs ``(ids[:-1], ids[1:])`` fills a count
    table (``index_put_`` with ``accumulate=True``, or ``bincount`` of ``a * V + b``);
    then normalise each row by its own total, guarding the empty rows.
    """
    raise NotImplementedError


def bigram_fit(logits: torch.Tensor, P: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """How well a table of logits predicts a bigram table.  ★★  (about 15 min)

    Args:
        logits: ``[V, V]``: row ``a`` is a prediction of the next character after
            ``a`` (e.g. the direct path ``W_E W_U``); not modified.
        P: ``[V, V]`` the true conditional distributions (rows sum to 1, or are
            all zero for characters that never occur); not modified.
        weights: ``[V]`` non-negative, how much each row counts (e.g. how often
            the character occurs); normalised here to sum to 1.

    Returns:
        ``(kl, top1)``, two floats with ``w = weights / sum(weights)``:

        * ``kl = sum_a w_a KL(P_a || Q_a) = sum_a w_a sum_b P[a, b] (ln P[a, b] - ln Q[a, b])``
          with ``Q_a = softmax(logits[a])`` and ``0 ln 0 = 0`` (nats);
        * ``top1 = sum_a w_a 1[argmax_b P[a, b] = argmax_b logits[a, b]]``.

    Hint: ``log_softmax`` gives ``ln Q``; the term ``P ln P`` needs care where
    ``P`` is 0. Which distribution is the truth decides the direction of the KL.
    """
    raise NotImplementedError


def skip_trigram_lift(ids: torch.Tensor, a: int, c: int, window: int) -> float:
    """How much more often ``c`` comes next when ``a`` was seen shortly before.  ★★  (about 15 min)

    A skip-trigram ``a ... b -> c`` says: a character ``a`` somewhere in the recent
    context raises the chance that ``c`` comes next. Count it in the corpus.

    Args:
        ids: ``[N]`` token ids of a corpus; not modified.
        a: the earlier character's id; ``c``: the predicted character's id.
        window: ``W >= 1``: "recent" means among the last ``W`` characters,
            the current one included.

    Returns:
        The float ``lift = P(ids[t+1] = c | a in ids[t-W+1 .. t]) / P(ids[t+1] = c)``
        over the prediction places ``t = 0 .. N - 2`` (the window is cut at the
        start of the corpus: ``ids[max(0, t-W+1) .. t]``). 1 means ``a`` tells
        nothing about ``c``.

    Raises:
        ValueError: if no place has ``a`` in its window or ``c`` never comes next.

    Hint: a running count of ``a``'s (a cumulative sum) tells, for every ``t``,
    how many ``a``'s the window holds. Count the window ending at ``t``, not at ``t + 1``.
    """
    raise NotImplementedError


def attention_by_offset(pattern: torch.Tensor, max_offset: int) -> torch.Tensor:
    """Each head's mean attention at each relative offset.  ★★  (about 10 min)

    Args:
        pattern: ``[batch, n_heads, pos, pos]`` causal attention (``hook_pattern``);
            not modified.
        max_offset: the largest offset ``D`` to report (``0 <= D < pos``).

    Returns:
        ``[n_heads, D + 1]`` float: entry ``[h, d]`` is
        ``mean_{b, q >= max(d, 1)} A[b, h, q, q - d]``: ``d = 0`` is attention to
        the current token, ``d = 1`` to the previous one. Query 0 (BOS, which
        can only attend to itself) is left out of every mean.

    Hint: ``torch.diagonal`` with a negative ``offset`` reads the entries
    ``A[q, q - d]``; mind which queries each diagonal starts at.
    """
    raise NotImplementedError


def is_induction_head(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Decide which heads do induction on these tokens (judgement).  ★★★  (about 25 min)

    On text, characters repeat all the time and often at short distances: in
    ``"======"`` the token after the earlier ``"="`` is the previous token, in
    ``"-=-=-="`` it is two back. A head that only looks one back then gets
    "induction" attention for free, and a raw induction score with a threshold
    cannot tell it from a head that really looks up earlier occurrences.

    Args:
        pattern: ``[batch, n_heads, pos, pos]`` attention of some heads on
            ``tokens``; not modified.
        tokens: ``[batch, pos]`` character ids (text with runs, period-2 stretches
            and a repeated span).

    Returns:
        ``[n_heads]`` bool: ``True`` for the induction heads. The test builds
        heads whose kind is known: induction heads (at least half of their
        attention on the tokens right after earlier occurrences of the current
        token, the rest on BOS) and heads that are not (previous-token,
        current-token, uniform, BOS-resting heads, and mixtures of those), on
        several batches of text. No single threshold on the raw induction
        score of :func:`toylab.circuits.scores.induction_score` separates them.

    Hint: choose where to look. At which destinations does a previous-token
    or a current-token head get no induction score at all, while an induction
    head still does? Then compare with what a head that attends uniformly
    would score there.
    """
    raise NotImplementedError


def bigram_lives_in(model, P: torch.Tensor, weights: torch.Tensor) -> str:
    """Decide where a model keeps its bigram statistics (judgement).  ★★  (about 20 min)

    In a zero-layer model the direct path ``W_E W_U`` *is* the bigram table. A
    model with attention layers can also carry them through its heads: a head
    that attends to the current token (or, at the first position, has only BOS
    and the current token to choose from) can add ``W_E W_OV W_U`` of the
    current character. Decide which is the case for ``model``.

    Args:
        model: an ``AttnOnlyTransformer`` (any number of layers, BOS = token 0).
        P: ``[V, V]`` the language's bigram table ``P(next | current)``.
        weights: ``[V]`` how often each character occurs.

    Returns:
        ``"direct"`` if the direct path alone predicts the bigram table about as
        well as the whole model does from one character of context, ``"heads"``
        if the model's one-character predictions fit the table and its direct
        path does not. The test's models are clear cases of one or the other
        (the shipped ``bigram-0l`` and ``text-2l``, and hand-built models).

    Hint: measure both with :func:`bigram_fit`: the direct path's logits, and
    the model's logits at position 1 of the sequences ``[BOS, c]`` for every ``c``.
    """
    raise NotImplementedError
