"""Chapter 2 — one layer: skip-trigrams and copying. Exercises.

A one-layer attention-only transformer computes its logits as the direct path
``W_E W_U`` plus one term per head, ``A^h x W_OV^h W_U``: the heads are
independent and add up. Each head is read through two ``[d_vocab, d_vocab]``
tables, the full QK circuit (where it looks) and the full OV circuit (what
looking there does to the logits); together they implement skip-trigrams
``A ... B -> C``.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 2

or, in a notebook, ``toylab.course.grading.check("ch02", "full_ov_circuit")``.
The reference answers are in ``solutions/ch02_one_layer.py``: try first.
"""

from __future__ import annotations

import math

import torch


def full_ov_circuit(W_E: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor, W_U: torch.Tensor) -> torch.Tensor:
    """Every head's full OV circuit as a dense table.  ★  (about 5 min)

    Args:
        W_E: ``[d_vocab, d_model]`` embedding.
        W_V: ``[n_heads, d_model, d_head]`` value weights of one layer.
        W_O: ``[n_heads, d_head, d_model]`` output weights of the same layer.
        W_U: ``[d_model, d_vocab]`` unembedding.

    Returns:
        ``[n_heads, d_vocab, d_vocab]``: ``OV[h] = W_E W_V[h] W_O[h] W_U``. Entry
        ``[h, s, t]`` is how much head ``h`` raises the logit of token ``t`` when it
        attends (with weight 1) to a source position holding token ``s``.

    Hint: ``W_E @ W_V`` broadcasts over the head dimension; keep the order
    ``W_V`` then ``W_O`` (row vectors: ``x W_V W_O``).
    """
    raise NotImplementedError


def full_qk_circuit(W_E: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor) -> torch.Tensor:
    """Every head's token-to-token full QK circuit as a dense table.  ★  (about 5 min)

    Args:
        W_E: ``[d_vocab, d_model]`` embedding.
        W_Q, W_K: ``[n_heads, d_model, d_head]`` query and key weights of one layer.

    Returns:
        ``[n_heads, d_vocab, d_vocab]``: ``QK[h] = W_E W_Q[h] (W_E W_K[h])^T`` (no
        ``1/sqrt(d_head)`` scale, no positions). Entry ``[h, b, a]`` is the
        attention score of a destination (query) token ``b`` on a source (key)
        token ``a``: rows are queries, columns keys.

    Hint: ``x.mT`` transposes the last two dimensions of a batched tensor.
    """
    raise NotImplementedError


def direct_path_logits(W_E: torch.Tensor, W_U: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The direct path's contribution to the logits.  ★  (about 5 min)

    Args:
        W_E: ``[d_vocab, d_model]``; W_U: ``[d_model, d_vocab]``.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[batch, pos, d_vocab]``: ``W_E[tokens] W_U``, the logits the model would
        give if no head wrote anything (the bigram part of the prediction). For a
        shortformer model positions never reach the residual stream, so they do
        not appear here.

    Hint: index the rows of ``W_E`` with the token tensor, or index the rows of
    the table ``W_E @ W_U``.
    """
    raise NotImplementedError


def one_layer_path_expansion(W_E: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor, W_U: torch.Tensor,
                             tokens: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Split a one-layer model's logits into the direct path and one term per head.  ★★  (about 15 min)

    For a one-layer attention-only model without LayerNorm whose positions
    reach only the queries and keys (``positional="shortformer"`` or ``"none"``),
    with ``x = W_E[tokens]`` and the attention pattern ``A^h`` of head ``h``::

        logits = x W_U  +  sum_h  A^h x W_V^h W_O^h W_U

    Args:
        W_E: ``[d_vocab, d_model]``; W_V: ``[n_heads, d_model, d_head]``;
        W_O: ``[n_heads, d_head, d_model]``; W_U: ``[d_model, d_vocab]``.
        tokens: ``[batch, pos]`` token ids.
        pattern: ``[batch, n_heads, query_pos, key_pos]`` the attention patterns
            of the forward pass (``cache["pattern", 0]``).

    Returns:
        ``[1 + n_heads, batch, pos, d_vocab]``: index 0 the direct path, index
        ``1 + h`` head ``h``'s term. They sum to ``model(tokens)``.

    Hint: a head's term at query ``q`` is ``sum_k A^h[q, k] OV^h[tokens[k]]``
    with the full OV circuit ``OV^h = W_E W_V^h W_O^h W_U``; ``torch.einsum``
    does the sum over ``k``. Do not add ``W_pos`` to the values.
    """
    raise NotImplementedError


def top_skip_trigrams(qk: torch.Tensor, ov: torch.Tensor, direct: torch.Tensor, k: int) -> list[tuple[int, int, int]]:
    """The ``k`` strongest skip-trigrams ``A ... B -> C`` of one head.  ★★★  (about 20 min)

    Args:
        qk: ``[d_vocab, d_vocab]`` the head's full QK circuit (row: query token
            ``B``, column: key token ``A``), already divided by ``sqrt(d_head)``.
        ov: ``[d_vocab, d_vocab]`` the head's full OV circuit (row: source ``A``,
            column: output ``C``).
        direct: ``[d_vocab, d_vocab]`` the direct path ``W_E W_U`` (row: current
            token ``B``, column: output ``C``).
        k: how many triples.

    Returns:
        A list of ``k`` tuples ``(A, B, C)`` of Python ints, best first, where::

            att[B, A]   = qk[B, A] - mean_j qk[B, j]        (B attends to A more than to an average token)
            boost[A, C] = ov[A, C] - mean_j ov[A, j]        (attending to A raises C above the rest)
            C*(A, B)    = argmax_C ( direct[B, C] + boost[A, C] )
            score(A, B) = att[B, A] * boost[A, C*(A, B)]

        Every pair ``(A, B)`` gives one triple ``(A, B, C*(A, B))``; drop the pairs
        with ``A == B``, with token 0 (BOS) among ``A, B, C*``, or with ``C*`` equal
        to ``A`` or ``B``; sort the rest by score, largest first.

    Hint: ``(direct[None, :, :] + boost[:, None, :]).argmax(-1)`` gives ``C*`` for
    all ``[A, B]`` at once (``d_vocab^3`` numbers: fine for a toy vocabulary).
    Then mask the forbidden pairs with ``-inf`` and use ``topk`` on the flattened scores.
    """
    raise NotImplementedError


def copying_score(M: torch.Tensor) -> torch.Tensor:
    """Eigenvalue copying score of one or several square matrices.  ★★  (about 10 min)

    Args:
        M: ``[..., n, n]`` real matrices, e.g. full OV circuits ``[n_heads, d_vocab, d_vocab]``.

    Returns:
        ``[...]`` float tensor: with ``lambda_1..lambda_n`` the (complex) eigenvalues of ``M``::

            copying score = Re(sum_i lambda_i) / sum_i |lambda_i|     in [-1, 1]

        1 when all eigenvalues are positive reals (the circuit maps each token to
        itself, "copying"), -1 when all are negative, near 0 for a random matrix.
        Return 0 for the zero matrix.

    Hint: ``torch.linalg.eigvals`` returns complex eigenvalues. The denominator is
    the sum of the *moduli* ``|lambda|``, not the modulus of the sum, and not the
    real parts.
    """
    raise NotImplementedError


def attention_pattern(W_E: torch.Tensor, W_pos: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor,
                      tokens: torch.Tensor) -> torch.Tensor:
    """A one-layer shortformer model's attention patterns, from the weights alone.  ★★  (about 15 min)

    With shortformer positions the queries and keys read ``x_i = W_E[t_i] + W_pos[i]``, so
    the score of query position ``i`` on key position ``j`` is::

        score[h, i, j] = x_i W_Q^h (x_j W_K^h)^T / sqrt(d_head)
                       = (token-token) + (token-pos) + (pos-token) + (pos-pos) terms,

    the first of them read off the full QK circuit ``W_E W_QK W_E^T``.

    Args:
        W_E: ``[d_vocab, d_model]``; W_pos: ``[n_ctx, d_model]``.
        W_Q, W_K: ``[n_heads, d_model, d_head]`` (layer 0).
        tokens: ``[batch, pos]`` token ids, ``pos <= n_ctx``.

    Returns:
        ``[batch, n_heads, pos, pos]``: ``softmax_j`` of the scores with the causal
        mask (key ``j > i`` gets ``-inf``, probability 0); every row sums to 1.

    Hint: build ``x [batch, pos, d_model]`` first; then
    ``torch.einsum("bid,hde->bhie", x, W_Q)``. Do not forget the ``1/sqrt(d_head)``.
    """
    raise NotImplementedError


def classify_head(pattern: torch.Tensor) -> str:
    """Interpret an attention figure: what does this head attend to?  ★★  (about 10 min)

    A judgement you usually make by looking at a heat map of a head's
    pattern. Make it from numbers instead: given one head's patterns on a
    batch, say which of four behaviours dominates, averaged over the
    destinations ``q >= 1`` (position 0 can only attend to itself):

    * ``"previous"``: most attention goes to the previous position ``q - 1``;
    * ``"self"``: most attention goes to the destination itself, ``q``;
    * ``"first"``: most attention goes to position 0 (BOS), a "resting" head;
    * ``"uniform"``: none of the three gets more than half of the attention on
      average (the head spreads out).

    Args:
        pattern: ``[batch, query_pos, key_pos]`` one head's attention patterns
            (rows sum to 1, causal). Not modified.

    Returns:
        one of ``"previous"``, ``"self"``, ``"first"``, ``"uniform"``.

    Hint: measure the mean weight on each of the three key positions, over
    the same destinations for all three; in a heat map, rows are queries and
    columns are keys.
    """
    raise NotImplementedError


def one_head_votes(truth_table: torch.Tensor) -> torch.Tensor | None:
    """Build one head that computes a function of which tokens occurred earlier, or say none can.  ★★★  (about 20 min)

    A judgement exercise about the limit of a single head (chapter 2, "What a
    single head cannot do"). A one-layer model sees ``k`` marker tokens
    ``m_0 .. m_{k-1}``, each either present somewhere earlier in the context or
    not, and at a fixed trigger token must predict ``c1`` when
    ``truth_table[x_0, ..., x_{k-1}]`` is True and ``c2`` when it is False
    (``x_i = 1`` when marker ``m_i`` is present). The other tokens of the
    context (BOS, filler, the trigger itself) are always the same.

    With the destination fixed, one head's logit difference is
    ``sum_j A_j u_j``, where ``u_j = OV[t_j, c1] - OV[t_j, c2]`` is the *vote*
    of source ``j`` and the attention ``A_j > 0``. The attention only rescales
    each source's vote by a positive factor, so it is enough to think of
    uniform attention and choose the votes: one vote per marker (counted when
    the marker is present) and one *background* vote for everything that is
    always present.

    Args:
        truth_table: bool tensor of shape ``[2] * k`` (``1 <= k <= 3``): entry
            ``[x_0, ..., x_{k-1}]`` is True when ``c1`` must win for that set of
            present markers. Not modified.

    Returns:
        ``None`` if no single head can compute the table. Otherwise a float
        tensor ``votes [k + 1]``: ``votes[i]`` the vote of marker ``m_i``,
        ``votes[k]`` the background vote, such that for every ``x``::

            votes[k] + sum_i x_i votes[i]   > 0   where truth_table[x] is True
                                            < 0   where it is False

        (no ties). The grader writes your votes into the OV circuit of a
        real one-head model with uniform attention and reads off the sign of
        its logit difference ``logit[c1] - logit[c2]`` for every ``x``.

    Hint: which tables can be split by the sign of a *sum with one term per
    present token*? Write the four conditions of an exclusive-or of two
    markers and add them up in pairs. For ``k <= 3`` small integer votes
    (between -2 and 2, with a background between -5 and 5 plus a half)
    suffice whenever any votes do, so a search is fine.
    """
    raise NotImplementedError


def skip_trigram_bugs(rules: list[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    """Predict the mistakes a single head makes when it implements several skip-trigrams.  ★★  (about 10 min)

    A judgement exercise about the "skip-trigram bug" (chapter 2, "What a
    single head cannot do"). One head has learned every rule ``A ... B -> C``
    of ``rules``: its QK circuit makes a destination ``B`` attend to an earlier
    ``A`` whenever ``(A, B, C)`` is a rule for some ``C``, and its OV circuit
    makes attending to ``A`` raise the ``C`` of A's rules. Which continuations
    that are *not* rules does it predict as well?

    Args:
        rules: a list of distinct triples ``(A, B, C)`` of token ids (Python
            ints; no two rules share the pair ``(A, B)``). Not modified.

    Returns:
        The set of triples ``(A, B, C)`` that are not rules but that the head
        predicts: in a context holding ``A`` and then ``B`` (and only filler
        otherwise), the head raises the logit of ``C`` about as much as it
        raises the planted continuation of a rule. The grader builds exactly
        such a head from the rules and measures, for every pair ``(A, B)``,
        which tokens it raises.

    Hint: does the vector the head adds after attending to ``A`` depend on
    which destination ``B`` is asking?
    """
    raise NotImplementedError
