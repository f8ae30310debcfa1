"""Chapter 1 — zero layers: the model is a bigram table. Exercises.

A zero-layer transformer computes ``logits = W_E[token] @ W_U``: its prediction
depends on the current token only, so all it can learn is a bigram table.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 1

or, in a notebook, ``toylab.course.grading.check("ch01", "bigram_table_from_weights")``.
The reference answers are in ``solutions/ch01_zero_layers.py``: try first.
"""

from __future__ import annotations

import torch


def bigram_table_from_weights(W_E: torch.Tensor, W_U: torch.Tensor) -> torch.Tensor:
    """Read a zero-layer model's bigram table out of its weights.  ★  (about 5 min)

    Args:
        W_E: ``[d_vocab, d_model]`` embedding; W_U: ``[d_model, d_vocab]`` unembedding.

    Returns:
        ``[d_vocab, d_vocab]``: ``Q[a, b] = softmax(W_E W_U)[a, b]``, the model's
        probability that token ``b`` follows token ``a``; every row sums to 1.

    Hint: row ``a`` of ``W_E @ W_U`` holds the logits the model gives after token ``a``.
    """
    raise NotImplementedError


def empirical_bigram_counts(tokens: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """Count how often each token follows each other token in a batch.  ★★  (about 10 min)

    Args:
        tokens: ``[batch, pos]`` token ids in ``[0, d_vocab)``.
        d_vocab: the number of token types.

    Returns:
        ``[d_vocab, d_vocab]`` integer (``torch.long``) counts::

            counts[a, b] = #{(n, p) : tokens[n, p] = a and tokens[n, p + 1] = b}

        Pairs never cross from one sequence into the next; the counts add up
        to ``batch * (pos - 1)``.

    Hint: the pair ``(a, b)`` has the flat index ``a * d_vocab + b``; ``torch.bincount``
    with ``minlength`` counts them all at once. No Python loop is needed.
    """
    raise NotImplementedError


def frequency_weighted_kl(P: torch.Tensor, Q: torch.Tensor, weights: torch.Tensor) -> float:
    """How far a model's bigram table ``Q`` is from the truth ``P``, in nats.  ★★  (about 10 min)

    Args:
        P: ``[d_vocab, d_vocab]`` true transition probabilities, ``P[a, b] = P(b | a)``.
        Q: ``[d_vocab, d_vocab]`` model probabilities, same layout.
        weights: ``[d_vocab]`` non-negative, how often each token ``a`` is the
            current token; normalise them to sum to 1.

    Returns:
        A Python float::

            KL_w(P || Q) = sum_a w(a) sum_b P(b|a) (log P(b|a) - log Q(b|a)),   w = weights / sum(weights)

        with the convention ``0 log 0 = 0`` (a pair the truth never produces
        costs nothing), and ``inf`` when ``Q(b|a) = 0`` where ``P(b|a) > 0`` and ``w(a) > 0``.

    Hint: work in float64 and sum only over the entries with ``P > 0`` (and
    ``w > 0``), otherwise ``0 * log 0`` gives NaN.
    """
    raise NotImplementedError


def top_k_successors(table: torch.Tensor, token: int, k: int) -> torch.Tensor:
    """The ``k`` most likely tokens to follow ``token``, most likely first.  ★  (about 5 min)

    Args:
        table: ``[d_vocab, d_vocab]`` a bigram table (probabilities or logits), rows = current token.
        token: the current token ``a``.
        k: how many successors.

    Returns:
        ``[k]`` ``torch.long`` token ids ``b_1, ..., b_k`` with
        ``table[a, b_1] >= table[a, b_2] >= ... >= table[a, b_k]`` and no other
        token above ``table[a, b_k]``.

    Hint: the row of ``table`` that belongs to ``token`` holds every candidate's
    score; you want the positions of its largest entries, in order (torch has
    a function that returns both the largest values and where they are).
    """
    raise NotImplementedError


def conditional_entropy(P: torch.Tensor, weights: torch.Tensor) -> float:
    """The lowest loss any model can reach on a bigram language, in nats per token.  ★★  (about 10 min)

    Args:
        P: ``[d_vocab, d_vocab]`` true transition probabilities, ``P[a, b] = P(b | a)``.
        weights: ``[d_vocab]`` how often each token is the current token; normalise to sum 1.

    Returns:
        A Python float::

            H_w(P) = - sum_a w(a) sum_b P(b|a) log P(b|a),   with 0 log 0 = 0

        A model ``Q`` has expected loss ``H_w(P) + KL_w(P || Q)``, so ``H_w`` is
        the floor its training loss approaches.

    Hint: the same care with zeros as in ``frequency_weighted_kl``.
    """
    raise NotImplementedError


def best_rank_r_approximation(M: torch.Tensor, r: int) -> torch.Tensor:
    """The matrix of rank at most ``r`` closest to ``M`` (in the Frobenius norm).  ★★  (about 15 min)

    A model with ``d_model < d_vocab`` can only make logit tables ``W_E W_U``
    of rank ``<= d_model``; this is the best such table it could hope for.

    Args:
        M: ``[m, n]`` a matrix, e.g. a table of logits.
        r: the rank, ``0 <= r``.

    Returns:
        ``[m, n]``: with the SVD ``M = U diag(S) V^T`` (``S`` decreasing),
        ``M_r = U[:, :r] diag(S[:r]) V[:, :r]^T`` (Eckart–Young: no matrix of
        rank ``<= r`` is closer to ``M``). For ``r >= min(m, n)`` it is ``M`` itself.

    Hint: ``torch.linalg.svd(M, full_matrices=False)`` returns ``U, S, Vh`` with ``Vh = V^T``.
    """
    raise NotImplementedError


def rank_needed(M: torch.Tensor, max_rel_error: float) -> int:
    """Choose the smallest rank that reproduces a table well enough.  ★★  (about 15 min)

    A judgement turned into a number: how wide must ``d_model`` be for a
    zero-layer model to represent this logit table? Pick the smallest rank
    whose best approximation (see :func:`best_rank_r_approximation`) is within
    the tolerance, and return it::

        r* = min { r >= 0 : ||M - M_r||_F <= max_rel_error * ||M||_F }

    Args:
        M: ``[m, n]`` a matrix (not modified).
        max_rel_error: the tolerated relative Frobenius error, ``>= 0``.

    Returns:
        int ``r*`` (``0`` for the zero matrix; at most ``min(m, n)``).

    Hint: Eckart–Young tells you the error of the best rank-``r`` matrix from
    the singular values alone — which ones, and squared or not? An error
    exactly at the tolerance is good enough.
    """
    raise NotImplementedError
