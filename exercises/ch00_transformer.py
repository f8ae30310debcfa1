"""Chapter 0 — a transformer from scratch: exercises.

Fill in every function whose body raises ``NotImplementedError``; the
docstrings give the shapes, the formula and a hint. Row vectors throughout:
the residual stream is ``x [batch, pos, d_model]`` and weights act from the
right (``x @ W``). Check your work with

    toylab grade --chapter 0

or, in a notebook, ``toylab.course.grading.check("ch00", "embed")``. The reference
answers are in ``solutions/ch00_transformer.py``: try first.
"""

from __future__ import annotations

import math

import torch


def embed(tokens: torch.Tensor, W_E: torch.Tensor) -> torch.Tensor:
    """Look up the embedding vector of every token.  ★  (about 5 min)

    Args:
        tokens: ``[batch, pos]`` integer token ids in ``[0, d_vocab)``.
        W_E: ``[d_vocab, d_model]`` the embedding matrix.

    Returns:
        ``[batch, pos, d_model]``: ``x[b, p] = W_E[tokens[b, p]]``, the row of
        ``W_E`` that belongs to the token (the same as ``one_hot(tokens) @ W_E``).

    Hint: indexing a tensor with a tensor of ids picks whole rows.
    """
    raise NotImplementedError


def project(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """The queries (or keys, or values) of every head at every position.  ★  (about 5 min)

    Args:
        x: ``[batch, pos, d_model]`` the residual stream (the input of the layer).
        W: ``[n_heads, d_model, d_head]`` one of ``W_Q, W_K, W_V``.

    Returns:
        ``[batch, pos, n_heads, d_head]``: ``out[b, p, h] = x[b, p] @ W[h]``.

    Hint: for every head the same matrix product ``x @ W[h]``; name the
    dimensions of both inputs and of the output (einsum lets you) and see
    which one is summed away.
    """
    raise NotImplementedError


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot products of queries and keys, with the causal mask.  ★★  (about 10 min)

    Args:
        q: ``[batch, pos, n_heads, d_head]`` queries.
        k: ``[batch, pos, n_heads, d_head]`` keys.

    Returns:
        ``[batch, n_heads, query_pos, key_pos]``::

            scores[b, h, i, j] = q[b, i, h] . k[b, j, h] / sqrt(d_head)   if j <= i
                               = -inf                                     if j > i  (the future)

    Hint: ``torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)`` is
    ``True`` exactly above the diagonal; ``Tensor.masked_fill`` writes ``-inf`` there.
    """
    raise NotImplementedError


def attention_pattern(scores: torch.Tensor) -> torch.Tensor:
    """Turn masked scores into an attention pattern.  ★  (about 5 min)

    Args:
        scores: ``[batch, n_heads, query_pos, key_pos]`` with ``-inf`` on the future.

    Returns:
        ``[batch, n_heads, query_pos, key_pos]``: ``A[b, h, i, :] = softmax(scores[b, h, i, :])``.
        Every row sums to 1, and the future gets weight exactly 0.

    Hint: which dimension holds the *source* (key) positions a destination chooses among?
    """
    raise NotImplementedError


def head_outputs(pattern: torch.Tensor, v: torch.Tensor, W_O: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the values along the pattern, then write them into the residual stream.  ★★  (about 10 min)

    Args:
        pattern: ``[batch, n_heads, query_pos, key_pos]`` attention pattern ``A``.
        v: ``[batch, pos, n_heads, d_head]`` values.
        W_O: ``[n_heads, d_head, d_model]`` output weights.

    Returns:
        ``(z, result)`` with ``z [batch, pos, n_heads, d_head]`` and
        ``result [batch, pos, n_heads, d_model]``::

            z[b, i, h]      = sum_j A[b, h, i, j] v[b, j, h]
            result[b, i, h] = z[b, i, h] @ W_O[h]

        (``result`` summed over heads is the layer's output.)

    Hint: two einsums; in the first, ``j`` (the key position) is summed away.
    """
    raise NotImplementedError


def attention_layer(x: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor,
                    W_O: torch.Tensor, qk_pos: torch.Tensor | None = None) -> torch.Tensor:
    """One attention layer, all heads, from the functions above.  ★★  (about 10 min)

    Args:
        x: ``[batch, pos, d_model]`` the residual stream entering the layer.
        W_Q, W_K, W_V: ``[n_heads, d_model, d_head]``; W_O: ``[n_heads, d_head, d_model]``.
        qk_pos: ``[pos, d_model]`` or ``None``. Shortformer positions: when
            given, they are added to the input of the queries and keys only,
            so ``q = (x + qk_pos) W_Q``, ``k = (x + qk_pos) W_K`` but ``v = x W_V``.

    Returns:
        ``[batch, pos, d_model]``: ``sum_h A^h x W_V^h W_O^h``, the layer's output
        (the residual connection is *not* added here).

    Hint: ``project``, ``attention_scores``, ``attention_pattern``,
    ``head_outputs``, then sum over the head dimension.
    """
    raise NotImplementedError


def forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of a whole attention-only model, computed from its weights.  ★★★  (about 20 min)

    Use only the model's weight tensors and your functions above, never
    ``model(tokens)``: ``model.W_E``, ``model.W_pos`` (absent when
    ``model.cfg.positional == "none"``), ``model.blocks[l].attn.W_Q`` (and
    ``W_K, W_V, W_O``) for ``l`` in ``range(model.cfg.n_layers)``, ``model.W_U``.
    Assume ``model.cfg.layernorm`` is False.

    Args:
        model: a ``toylab.model.AttnOnlyTransformer``.
        tokens: ``[batch, pos]`` token ids, ``pos <= n_ctx``.

    Returns:
        ``[batch, pos, d_vocab]`` logits::

            x_0 = W_E[tokens]  (+ W_pos[:pos]  if positional == "learned")
            x_{l+1} = x_l + attention_layer_l(x_l)   (qk_pos = W_pos[:pos] if "shortformer")
            logits = x_L @ W_U

    Hint: the residual stream is a running sum; each layer *adds* to it.
    """
    raise NotImplementedError


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, in nats.  ★  (about 5 min)

    Args:
        logits: ``[batch, pos, d_vocab]``; ``logits[b, p]`` predicts ``tokens[b, p + 1]``.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[batch, pos - 1]``: ``loss[b, p] = -log softmax(logits[b, p])[tokens[b, p + 1]]``.

    Hint: ``torch.log_softmax`` is stable; ``Tensor.gather`` picks one entry per row.
    The last position predicts a token we do not have.
    """
    raise NotImplementedError


def predict_initial_loss(d_vocab: int) -> float:
    """Predict the loss of a model that knows nothing, before you measure it.  ★  (about 5 min)

    A judgement exercise: before training, every model should start near a
    known loss, and a first run that starts far from it has a bug (or an
    initialisation that is too confident). Predict that number for a model
    whose logits are all equal (it spreads its probability evenly over the
    vocabulary), in the units :func:`next_token_loss` reports.

    Args:
        d_vocab: the vocabulary size ``V >= 2``.

    Returns:
        float, the mean next-token loss of such a model on any tokens.

    Hint: the loss is a negative log-probability, in nats like
    ``torch.log_softmax``; what probability does an even model give the
    right token?
    """
    raise NotImplementedError
