"""Chapter 7 — probes and steering. Reference answers.

A probe asks where a variable the data generator knows can be read off the
model's activations; steering writes a vector into the residual stream and
watches what the model does with it. Both are easy to over-read, so every answer
here is checked against what the lab planted: the generator's variables, models
built with a previous-token head in a known layer, and observed steered runs.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 7

or, in a notebook, ``toylab.course.grading.check("ch07", "majority_baseline")``.
The reference answers are in ``solutions/ch07_probes_and_steering.py``: try first.
"""

from __future__ import annotations

import torch


def majority_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """The accuracy of always answering the training set's most frequent class.  ★  (about 5 min)

    Args:
        train_labels: ``[N_train]`` integer labels, ``-1`` for rows outside the task.
        test_labels: ``[N_test]`` integer labels, ``-1`` for rows outside the task.

    Returns:
        The float ``mean_i 1[test_i = m]`` over the test rows with a label ``>= 0``,
        where ``m`` is the most frequent label among the training rows with a label
        ``>= 0`` (ties: the smallest such label).

    Hint: ``torch.bincount`` counts the classes; leave the ``-1`` rows out of
    both the count and the average. The majority comes from the *training* rows.
    """
    train = train_labels[train_labels >= 0].long()
    test = test_labels[test_labels >= 0].long()
    m = int(torch.bincount(train).argmax())
    return float((test == m).double().mean())


def grouped_split(groups: torch.Tensor, test_frac: float, seed: int) -> torch.Tensor:
    """A held-out split that keeps every group (sequence) on one side.  ★★  (about 15 min)

    Args:
        groups: ``[N]`` integer group id of every row (any integers, e.g. the
            sequence index; not necessarily sorted or contiguous).
        test_frac: the share of *groups* to hold out, in ``(0, 1)``.
        seed: seeds a ``torch.Generator`` that chooses the held-out groups.

    Returns:
        A bool tensor ``[N]``, ``True`` for test rows: all rows of
        ``round(test_frac * G)`` groups (clamped to ``[1, G - 1]``, ``G`` the number
        of distinct groups), chosen at random; the same seed gives the same split.
        The input is not modified.

    Hint: draw the test set among the *distinct* group ids (``torch.unique`` with
    ``return_inverse=True``), then map the choice back to the rows.
    """
    uniq, inverse = torch.unique(groups, return_inverse=True)
    n_test = min(max(1, int(round(test_frac * uniq.numel()))), uniq.numel() - 1)
    g = torch.Generator().manual_seed(int(seed))
    is_test = torch.zeros(uniq.numel(), dtype=torch.bool)
    is_test[torch.randperm(uniq.numel(), generator=g)[:n_test]] = True
    return is_test[inverse]


def control_task_labels(types: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The control task of Hewitt & Liang (2019): a random label per token type.  ★★  (about 15 min)

    Args:
        types: ``[N]`` integer token type of every row (e.g. the current token).
        labels: ``[N]`` the task's integer labels, ``-1`` for rows outside the task.
        seed: seeds a ``torch.Generator`` for the random labels.

    Returns:
        ``[N]`` long labels: every distinct type gets ONE label, drawn at random
        from the task's empirical label distribution (the frequencies of the labels
        ``>= 0``); each row gets its type's label, and rows with ``labels == -1``
        stay ``-1``. Inputs are not modified.

    Hint: ``torch.multinomial(counts, n_types, replacement=True, generator=g)``
    draws one label per type with probabilities proportional to ``counts``.
    """
    labels = labels.long()
    valid = labels >= 0
    counts = torch.bincount(labels[valid]).double()
    uniq, inverse = torch.unique(types, return_inverse=True)
    g = torch.Generator().manual_seed(int(seed))
    per_type = torch.multinomial(counts, uniq.numel(), replacement=True, generator=g)
    return torch.where(valid, per_type[inverse], torch.full_like(labels, -1))


def least_squares_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                        n_classes: int, ridge: float) -> torch.Tensor:
    """A closed-form linear probe: ridge regression onto one-hot labels.  ★★  (about 20 min)

    Args:
        x_train: ``[N, d]`` training activations.
        y_train: ``[N]`` integer labels in ``[0, n_classes)``.
        x_test: ``[M, d]`` activations to score.
        n_classes: ``C``.
        ridge: ``lambda >= 0``.

    Returns:
        Scores ``[M, C]`` (float64): standardise with the *training* statistics,
        ``z = (x - mu) / sigma`` (``mu = x_train.mean(0)``,
        ``sigma = x_train.std(0).clamp_min(1e-8)``), let ``Y [N, C]`` be the
        one-hot labels and ``Ybar [C]`` their mean, and

            W = (Z^T Z + lambda N I)^{-1} Z^T (Y - Ybar)        [d, C]
            scores = z_test W + Ybar

        (``Z`` the standardised training rows). The probe predicts
        ``scores.argmax(1)``.

    Hint: work in float64 and use ``torch.linalg.solve`` rather than an inverse;
    the test rows must be standardised with the training ``mu`` and ``sigma``.
    """
    x, xt = x_train.double(), x_test.double()
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-8)
    Z, Zt = (x - mu) / sigma, (xt - mu) / sigma
    Y = torch.nn.functional.one_hot(y_train.long(), n_classes).double()
    ybar = Y.mean(0)
    A = Z.T @ Z + ridge * Z.shape[0] * torch.eye(Z.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(A, Z.T @ (Y - ybar))
    return Zt @ W + ybar


def predicted_logit_shift(W_U: torch.Tensor, vector: torch.Tensor, coeff: float) -> torch.Tensor:
    """The exact logit shift of steering after the last layer.  ★  (about 5 min)

    Args:
        W_U: ``[d_model, d_vocab]`` the unembedding.
        vector: ``[d_model]`` the steering vector ``v``.
        coeff: the coefficient ``c``.

    Returns:
        ``[d_vocab]``: ``c v W_U``, the change of every logit at a position where
        ``c v`` is added to the residual stream after the last layer of a model
        without LayerNorm.

    Hint: the logits are ``resid W_U``; the map is linear in ``resid``.
    """
    return coeff * (vector @ W_U)


def which_hook_for_previous_token(model, tokens: torch.Tensor) -> str:
    """Find, with probes, where the previous token becomes readable.  ★★★  (about 25 min)

    A judgement exercise: decide what counts as "readable" and defend it with
    held-out numbers, not with train accuracy.

    Args:
        model: an :class:`~toylab.model.AttnOnlyTransformer` (any number of layers)
            with a previous-token head somewhere.
        tokens: ``[batch, pos]`` sequences to probe on.

    Returns:
        The earliest hook, in the order ``"hook_embed"``,
        ``"blocks.0.hook_resid_post"``, ``"blocks.1.hook_resid_post"``, ...,
        at which a linear probe reads the previous token ``x_{p-1}`` well on
        held-out sequences (the layer whose attention writes it).

    Hint: ``toylab.features.train_sae.gather_activations`` gives the rows,
    ``toylab.features.probes.induction_variables`` shows how the labels line up
    with them, and ``toylab.features.probes.fit_probe(..., groups=...)`` gives a
    held-out accuracy. Compare it with what chance would give, not with 0.
    """
    from toylab.features.probes import fit_probe
    from toylab.features.train_sae import gather_activations

    b, n = tokens.shape
    labels = tokens[:, :-1].reshape(-1)              # x_{p-1} for rows p = 1 .. n-1
    groups = torch.arange(b).repeat_interleave(n - 1)
    hooks = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    n_classes = int(labels.max()) + 1
    for hook in hooks:
        acts = gather_activations(model, hook, tokens)
        acc = fit_probe(acts, labels, groups=groups, seed=0, max_iter=50).test_accuracy
        if acc > 0.5 and acc > 5.0 / n_classes:
            return hook
    raise ValueError("the previous token is not readable at any residual hook of this model")


def predict_logit_change(model, hook: str, vector: torch.Tensor, coeff: float,
                         token: int) -> float | None:
    """Predict before you run: the change of one logit under steering, or None.  ★★  (about 15 min)

    A judgement exercise: decide whether an exact prediction exists.

    Args:
        model: an attention-only model without LayerNorm.
        hook: a residual-stream hook (``hook_embed``, ``blocks.{l}.hook_resid_pre``,
            ``blocks.{l}.hook_resid_post``, ``blocks.{l}.hook_attn_out``) where
            ``coeff * vector`` is added at every position.
        vector: ``[d_model]``.
        coeff: the coefficient ``c``.
        token: the logit to predict.

    Returns:
        The float change of ``logits[..., token]`` (the same at every position)
        when nothing but the unembedding lies between ``hook`` and the logits;
        ``None`` when some attention layer reads the steered stream after ``hook``
        (then the change depends on the attention patterns and no formula gives it).

    Hint: which hooks of an ``L``-layer model lie after the last attention
    layer? Count ``hook_embed`` and ``blocks.0.hook_resid_pre`` for a 0-layer model too.
    """
    L = model.cfg.n_layers
    after_last = {f"blocks.{L - 1}.hook_resid_post", f"blocks.{L - 1}.hook_attn_out"} if L else {"hook_embed"}
    if hook not in after_last:
        return None
    return float(coeff * (vector @ model.W_U.detach())[token])


def probe_verdict(accuracy: float, control_accuracy: float, majority: float) -> str:
    """Read a probe's result against its two baselines.  ★★  (about 15 min)

    A judgement exercise. The three numbers come from
    :func:`toylab.features.probes.probe_with_control`: held-out accuracy of the
    probe, of the same probe on the control task (a random label per token type),
    and of the majority-class baseline.

    Args:
        accuracy: held-out accuracy of the probe for the variable.
        control_accuracy: held-out accuracy of the same probe on the control task.
        majority: held-out accuracy of always answering the training majority.

    Returns:
        ``"nothing"`` if the probe does not beat the majority baseline clearly;
        ``"token identity"`` if it does, but the control task is solved about as
        well (the hook holds the token type, and the probe may be reading that);
        ``"readable"`` if it beats both clearly (the variable is there, beyond the
        token type).

    Hint: check the majority first; "clearly" means by a margin larger than the
    noise of a few hundred held-out rows (a few per cent), not by 0.001.
    """
    if accuracy < majority + 0.05:
        return "nothing"
    if accuracy - control_accuracy < 0.1:
        return "token identity"
    return "readable"
