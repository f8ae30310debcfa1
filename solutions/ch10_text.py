"""Chapter 10 — the lab on text. Reference answers.

A character model of the standard library's docstrings has no planted rules,
but its corpus can be counted: the character-bigram table, how often a
character follows another one a few places back, where a span repeats. These
exercises score a model's weights and attention against such counts, and ask
you to decide what the counts can and cannot show.
Grade your own answers in ``exercises/ch10_text.py`` with
``toylab grade --chapter 10``.
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
    ids = torch.as_tensor(ids)
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be a 1-D tensor of at least 2 token ids, got shape {list(ids.shape)}")
    flat = ids[:-1].long() * d_vocab + ids[1:].long()
    counts = torch.bincount(flat, minlength=d_vocab * d_vocab).view(d_vocab, d_vocab).double()
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1), torch.zeros_like(counts))


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
    if logits.shape != P.shape or logits.ndim != 2 or weights.shape != P.shape[:1]:
        raise ValueError(f"need logits and P of the same shape [V, V] and weights [V], got "
                         f"{list(logits.shape)}, {list(P.shape)}, {list(weights.shape)}")
    w = weights.double() / weights.double().sum()
    p = P.double()
    log_q = torch.log_softmax(logits.double(), dim=-1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    kl_rows = (plogp - p * log_q).sum(-1)
    hit = (p.argmax(-1) == logits.argmax(-1)).double()
    return float((w * kl_rows).sum()), float((w * hit).sum())


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
    ids = torch.as_tensor(ids)
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be a 1-D tensor of at least 2 token ids, got shape {list(ids.shape)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    is_a = torch.cat([torch.zeros(1, dtype=torch.long), (ids == a).long().cumsum(0)])  # is_a[i] = #a in ids[:i]
    t = torch.arange(ids.numel() - 1)
    start = (t - window + 1).clamp_min(0)
    seen = (is_a[t + 1] - is_a[start]) > 0
    nxt = ids[1:] == c
    if not seen.any():
        raise ValueError(f"character {a} never occurs in a window of {window}: the lift is undefined")
    if not nxt.any():
        raise ValueError(f"character {c} never comes next: the lift is undefined")
    p_cond = nxt[seen].double().mean()
    p = nxt.double().mean()
    return float(p_cond / p)


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
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be [batch, n_heads, pos, pos], got {list(pattern.shape)}")
    n = pattern.shape[-1]
    if isinstance(max_offset, bool) or not isinstance(max_offset, int) or not 0 <= max_offset < n:
        raise ValueError(f"max_offset must be an int in [0, {n - 1}], got {max_offset!r}")
    cols = []
    for d in range(max_offset + 1):
        diag = pattern.diagonal(offset=-d, dim1=-2, dim2=-1)      # [b, h, n - d]: queries d .. n-1
        first = max(d, 1) - d                                      # drop query 0
        cols.append(diag[..., first:].mean(dim=(0, 2)))
    return torch.stack(cols, dim=-1)


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
    from toylab.circuits.scores import induction_score

    b, n = tokens.shape
    q = torch.arange(n)
    prev1 = torch.zeros(b, n, dtype=torch.bool)
    prev1[:, 1:] = tokens[:, 1:] == tokens[:, :-1]     # target at k = q (t[q-1] = t[q])
    prev2 = torch.zeros(b, n, dtype=torch.bool)
    prev2[:, 2:] = tokens[:, 2:] == tokens[:, :-2]     # target at k = q - 1 (t[q-2] = t[q])
    clean = ~prev1 & ~prev2 & (q >= 2)                 # only a real look-up reaches a target here
    score = induction_score(pattern, tokens, clean)
    uniform = torch.ones(n, n).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(b, 1, n, n)
    u = float(induction_score(uniform, tokens, clean)[0])
    corrected = (score - u) / (1 - u)
    return corrected >= 0.3


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
    V = model.cfg.d_vocab
    with torch.no_grad():
        direct = model.W_E @ model.W_U
        toks = torch.stack([torch.full((V,), BOS, dtype=torch.long), torch.arange(V)], dim=1)
        one_char = model(toks)[:, 1]
    kl_direct, _ = bigram_fit(direct, P, weights)
    kl_model, _ = bigram_fit(one_char, P, weights)
    return "direct" if kl_direct <= 1.5 * kl_model + 1e-3 else "heads"
