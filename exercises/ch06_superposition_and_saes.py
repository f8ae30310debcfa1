"""Chapter 6 — superposition and dictionary learning. Exercises.

A model can store more features than it has dimensions when the features are
sparse (superposition); a sparse autoencoder tries to undo that and recover the
feature directions. In the lab's models some of those directions are known
exactly, so every answer here can be checked against ground truth.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 6

or, in a notebook, ``toylab.course.grading.check("ch06", "mmcs")``.
The reference answers are in ``solutions/ch06_superposition_and_saes.py``: try first.
"""

from __future__ import annotations

import torch


def tms_reconstruct(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The ReLU output model of Toy Models of Superposition.  ★  (about 5 min)

    Args:
        W: ``[m, n]``; column ``W[:, i]`` is feature ``i``'s direction in the ``m`` hidden dimensions.
        b: ``[n]`` output bias.
        x: ``[batch, n]`` feature values (rows are examples: row-vector notation).

    Returns:
        ``x' [batch, n]`` with ``x' = ReLU(W^T W x + b)`` for each example, i.e. in rows
        ``x' = ReLU(x W^T W + b)``.

    Hint: compress first, ``h = x @ W.T`` is ``[batch, m]``; then read out with ``h @ W``.
    """
    raise NotImplementedError


def dimensions_per_feature(W: torch.Tensor) -> float:
    """How many hidden dimensions each feature gets, on average.  ★  (about 5 min)

    Args:
        W: ``[m, n]`` the weights of one toy model.

    Returns:
        The float ``m / ||W||_F^2``: 1 for a dedicated dimension per represented
        feature, 1/2 for antipodal pairs, 2/5 for a pentagon of 5 features in 2 dimensions.

    Hint: ``||W||_F^2`` is the sum of squares of every entry; each represented unit
    column contributes 1 to it.
    """
    raise NotImplementedError


def superposition_regime(relative_importance: float, density: float) -> str:
    """Predict, before training, what a 2-features-in-1-dimension model does.  ★★  (about 20 min)

    Feature 1 has importance 1, feature 2 has importance ``r``; both are
    ``Uniform[0, 1]`` with probability ``p`` (the density) and 0 otherwise. The
    model ``x' = ReLU(W^T W x + b)`` with ``W [1, 2]`` can:

    - ``"not_represented"``: ``W = [1, 0]``: feature 2 is left to its bias;
    - ``"dedicated"``: ``W = [0, 1]``: feature 2 takes the dimension, feature 1 is dropped;
    - ``"superposed"``: ``W = [1, -1]``: both share the dimension, antipodally.

    Returns:
        The name of the regime with the lowest expected loss
        ``E[(x_1 - x'_1)^2 + r (x_2 - x'_2)^2]``. Only points well inside a region are graded.

    Hint: a feature left to its bias costs its variance, ``p/3 - p^2/4`` (times its
    importance). For ``W = [1, -1]``, ``b = 0``, a lone feature is reconstructed
    exactly (the other output is ``ReLU(-x) = 0``); when both are on (probability
    ``p^2``) the loss is ``(1 + r) E[min(x_1, x_2)^2] = (1 + r) / 6``. That is an upper
    bound on the superposed loss, and good enough away from the boundaries.
    """
    raise NotImplementedError


def sae_forward(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                b_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of a ReLU sparse autoencoder.  ★  (about 10 min)

    Args:
        x: ``[batch, d_in]`` activations.
        W_enc: ``[d_in, d_sae]``, b_enc: ``[d_sae]``, W_dec: ``[d_sae, d_in]``, b_dec: ``[d_in]``.

    Returns:
        ``(f, x_hat)`` with ``f = ReLU((x - b_dec) W_enc + b_enc)`` ``[batch, d_sae]`` and
        ``x_hat = f W_dec + b_dec`` ``[batch, d_in]``.

    Hint: ``b_dec`` is subtracted before encoding *and* added back after decoding.
    """
    raise NotImplementedError


def remove_parallel_grad(grad: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Keep only the part of the decoder gradient that moves along the unit sphere.  ★★  (about 10 min)

    The decoder rows ``W_dec[i]`` are kept at unit norm. The component of a row's
    gradient along the row itself would only change its length (which the next
    renormalisation undoes), and with Adam it would distort the step.

    Args:
        grad: ``[d_sae, d_in]`` the gradient of the loss with respect to ``W_dec``.
        W_dec: ``[d_sae, d_in]`` with unit-norm rows.

    Returns:
        A new tensor ``[d_sae, d_in]``: ``g_i - (g_i . d_i) d_i`` for every row ``i``.
        Do not modify ``grad``.

    Hint: a row-wise dot product is ``(grad * W_dec).sum(1, keepdim=True)``.
    """
    raise NotImplementedError


def mmcs(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Mean max cosine similarity of a learned dictionary to the true one.  ★  (about 10 min)

    Args:
        learned: ``[n_learned, d]`` decoder directions (any norms).
        true: ``[n_true, d]`` true feature directions (any norms).

    Returns:
        The float ``mean_j max_i cos(learned_i, true_j)``: for each *true* feature, its
        best match among the learned ones.

    Hint: normalise the rows of both, take ``C = L @ T.T`` ``[n_learned, n_true]``, then
    the max over the learned axis (dim 0) and the mean over the true features.
    """
    raise NotImplementedError


def token_dictionary_hook() -> str:
    """Where in ``induction-2l`` is the activation exactly a row of ``W_E``?  ★  (about 5 min)

    ``induction-2l`` has no LayerNorm and shortformer positions (``W_pos`` enters only
    queries and keys). An SAE trained where each activation is exactly ``W_E[token]``
    should recover the token directions, with ground truth to check it against.

    Returns:
        A hook name (a string) at which every activation is ``W_E[token]`` for the token
        at that position.

    Hint: the residual stream before any head has written to it.
    """
    raise NotImplementedError


def choose_k_after_layer_0() -> int:
    """Choose the L0 of a TopK SAE on ``blocks.0.hook_resid_post`` of ``induction-2l``.  ★★  (about 10 min)

    After layer 0 the residual stream at position ``p`` is its token embedding plus
    what the two layer-0 heads wrote. One of them is a previous-token head: it writes
    ``W_E[t_{p-1}] W_OV``, a second known direction. (Assume the other head's output
    is small or spread out.) A TopK SAE keeps exactly ``k`` latents per position.

    Returns:
        The integer ``k`` that matches the true number of active features per position.

    Hint: count the known families that are active at every position. Too small a k
    merges features, too large a k splits them ("sparse but wrong" in both directions).
    """
    raise NotImplementedError
