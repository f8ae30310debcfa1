"""Chapter 3 — two layers: composition and virtual heads. Exercises.

In a two-layer attention-only model the heads of layer 1 read a residual
stream into which the heads of layer 0 have already written. A later head can
use an earlier head's output in its queries (Q-composition), its keys
(K-composition) or its values (V-composition); the composition score measures
how much, and the path expansion splits the logits into a direct path, one
term per head and one term per *virtual head* (a pair of heads in series).
Row vectors throughout: ``W_OV = W_V W_O``, ``W_QK = W_Q W_K^T``.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 3

or, in a notebook, ``toylab.course.grading.check("ch03", "k_composition_score")``.
The reference answers are in ``solutions/ch03_two_layers.py``: try first.
"""

from __future__ import annotations

import torch


def composition_score(W_A: torch.Tensor, W_B: torch.Tensor) -> float:
    """The composition score of two matrices.  ★  (about 5 min)

    Args:
        W_A: ``[m, k]`` the writing side (e.g. an earlier head's ``W_OV``).
        W_B: ``[k, n]`` the reading side (e.g. a later head's ``W_QK``).

    Returns:
        A Python float in ``[0, 1]``::

            C(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

        where ``||M||_F = sqrt(sum_ij M_ij^2)`` is the Frobenius norm.

    Hint: ``torch.linalg.matrix_norm`` computes the Frobenius norm by default;
    compute in float64 so that small scores are not lost to round-off.
    """
    raise NotImplementedError


def k_composition_score(model, head_a: tuple[int, int], head_b: tuple[int, int]) -> float:
    """How much head ``head_b`` reads head ``head_a``'s output in its *keys*.  ★★  (about 15 min)

    Args:
        model: an ``AttnOnlyTransformer`` (weights ``model.W_Q[layer, head]``
            ``[d_model, d_head]``, same for ``W_K``, ``W_V``; ``model.W_O[layer, head]``
            ``[d_head, d_model]``).
        head_a: ``(layer, head)`` of the earlier head (it writes).
        head_b: ``(layer, head)`` of the later head (it reads), in a later layer.

    Returns:
        A Python float: with ``W_OV^a = W_V^a W_O^a`` and ``W_QK^b = W_Q^b W_K^{bT}``
        (both ``[d_model, d_model]``)::

            C_K(a, b) = C(W_OV^a, W_QK^{bT}) = ||W_OV^a W_QK^{bT}||_F / (||W_OV^a||_F ||W_QK^b||_F)

        The attention score of a query ``x_q`` on a key whose residual vector
        holds ``a``'s output ``y W_OV^a`` is ``x_q W_QK^b (y W_OV^a)^T``: the key
        side of ``W_QK^b`` meets the *output* side of ``W_OV^a``.

    Hint: ``C(W_OV^a, W_QK^b)`` (no transpose) is the *Q*-composition score.
    The transpose of a product reverses it: ``(W_Q W_K^T)^T = W_K W_Q^T``.
    """
    raise NotImplementedError


def random_composition_baseline(d_model: int, d_head: int, n_samples: int,
                                generator: torch.Generator) -> float:
    """The mean K-composition score of two heads with random weights.  ★★  (about 10 min)

    Args:
        d_model, d_head: the shapes of the heads.
        n_samples: how many random pairs of heads to draw.
        generator: the only source of randomness (pass it to every ``torch.randn``).

    Returns:
        A Python float: the mean over ``n_samples`` draws of
        ``C(W_V^a W_O^a, (W_Q^b W_K^{bT})^T)``, where ``W_V^a, W_Q^b, W_K^b
        [d_model, d_head]`` and ``W_O^a [d_head, d_model]`` have independent
        standard normal entries (the score does not depend on their scale).
        It is close to, and a little below, ``1 / sqrt(d_model)``.

    Hint: draw all samples at once with a leading batch dimension
    (``torch.randn(n_samples, d_model, d_head, generator=generator)``) and use
    ``torch.linalg.matrix_norm``, which works on the last two dimensions.
    """
    raise NotImplementedError


def virtual_weight(model, writer: tuple[int, int], reader: tuple[int, int, str]) -> torch.Tensor:
    """The virtual weight from one head's output to a later head's query, key or value.  ★  (about 5 min)

    Args:
        model: an ``AttnOnlyTransformer``.
        writer: ``(layer, head)`` of the earlier head; it writes ``z W_O`` into the
            residual stream (``z [d_head]`` its mixed values).
        reader: ``(layer, head, kind)`` with ``kind`` one of ``"q"``, ``"k"``,
            ``"v"``: the later head's input ``x W_Q`` (or ``W_K``, ``W_V``).

    Returns:
        ``[d_head, d_head]``: ``W_O^{writer} @ W_kind^{reader}``, the matrix that
        takes the writer's ``z`` straight to the reader's ``q`` (or ``k``, ``v``).
        Raise ``ValueError`` if the reader is not in a later layer than the writer.

    Hint: the residual stream is linear, so the path ``z -> residual -> q`` is one
    matrix product through ``d_model``. ``getattr(model, "W_Q")`` picks a weight by name.
    """
    raise NotImplementedError


@torch.no_grad()
def virtual_head_term(model, tokens: torch.Tensor, head_a: tuple[int, int],
                      head_b: tuple[int, int]) -> torch.Tensor:
    """The term of the path expansion that runs through head ``a`` and then head ``b``.  ★★★  (about 20 min)

    Args:
        model: an ``AttnOnlyTransformer`` with shortformer positions (``W_pos``
            enters the queries and keys only, so the residual stream starts as
            ``x0 = W_E[tokens]``) and no LayerNorm.
        tokens: ``[batch, pos]`` token ids.
        head_a: ``(layer, head)`` of the earlier head; head_b: ``(layer, head)`` of the later one.

    Returns:
        ``[batch, pos, d_vocab]``: with the attention patterns ``A^a, A^b
        [batch, query, key]`` of the two heads on ``tokens`` (from the model's
        own forward pass, ``model.run_with_cache``)::

            term = A^b A^a x0 W_OV^a W_OV^b W_U

        i.e. head ``a`` moves the token embeddings with its pattern and its OV
        circuit, then head ``b`` moves the result again with its own pattern and
        OV circuit, and the unembedding reads it.

    Hint: ``cache["pattern", layer]`` is ``[batch, n_heads, query, key]``. Apply
    head ``a``'s pattern first: in ``A^b (A^a V)`` the rightmost factor acts first.
    """
    raise NotImplementedError


def k_composition_circuit(model, head_a: tuple[int, int], head_b: tuple[int, int]) -> torch.Tensor:
    """The K-composition circuit of head ``a`` (writing into keys) and head ``b``.  ★★  (about 10 min)

    Args:
        model: an ``AttnOnlyTransformer``.
        head_a: ``(layer, head)`` of the earlier head; head_b: ``(layer, head)`` of the later one.

    Returns:
        ``[d_vocab, d_vocab]``::

            M = W_E W_QK^b (W_E W_OV^a)^T = W_E W_Q^b W_K^{bT} W_O^{aT} W_V^{aT} W_E^T

        Entry ``M[i, j]``: the (unscaled) attention score of head ``b`` from a query
        whose token is ``i`` on a key into which head ``a`` wrote token ``j``
        (for a previous-token head ``a``: a key whose *previous* token is ``j``).

    Hint: build the two ``[d_vocab, d_head]`` halves ``W_E W_Q^b`` and
    ``W_E W_V^a W_O^a W_K^b`` first; then one product gives ``M``.
    """
    raise NotImplementedError


def diagonal_accuracy(M: torch.Tensor) -> float:
    """How often a square matrix's largest entry in a row is on the diagonal.  ★  (about 5 min)

    Args:
        M: ``[n, n]`` e.g. a K-composition circuit (rows: query token).

    Returns:
        A Python float in ``[0, 1]``: the fraction of rows ``i`` whose maximum is
        the diagonal entry, ``#{i : argmax_j M[i, j] = i} / n``. For an
        induction head's K-composition circuit it is close to 1: each query
        token attends most to the key that follows an earlier copy of itself.

    Hint: ``M.argmax(dim=-1)`` gives the column of each row's maximum.
    """
    raise NotImplementedError


def composition_kind(model, head_a: tuple[int, int], head_b: tuple[int, int]) -> str | None:
    """Decide how (and whether) a later head reads an earlier one: Q-, K- or V-composition.  ★★  (about 15 min)

    A judgement from the weights. Head ``b`` can read head ``a``'s output
    through its queries (Q-composition, ``C(W_OV^a, W_QK^b)``), its keys
    (K-composition, ``C(W_OV^a, W_QK^{bT})``) or its values (V-composition,
    ``C(W_OV^a, W_OV^b)``). A raw score means little on its own: random heads
    already score about ``1/sqrt(d_model)``. Decide:

    * ``None`` if no kind reaches 1.5 times the mean score of random heads of
      the same shape (the pair does not compose clearly more than chance);
    * otherwise the kind, ``"Q"``, ``"K"`` or ``"V"``, with the largest score
      relative to that random baseline.

    The grader plants one kind of composition in models it builds, and checks
    the shipped model's pairs and random models against the library's scores.

    Args:
        model: an ``AttnOnlyTransformer`` (not modified).
        head_a: ``(layer, head)`` of the earlier head; head_b: of a later layer.

    Returns:
        ``"Q"``, ``"K"``, ``"V"`` or ``None``.

    Hint: you already have the score and a random baseline
    (:func:`random_composition_baseline`); the Q- and K-scores differ only by
    a transpose, the V-score uses the later head's OV circuit.
    """
    raise NotImplementedError
