"""Linear (softmax-regression) probes on cached activations, with control tasks.

A probe for a variable with ``C`` classes is ``p(y | x) = softmax(z W + c)`` on the
standardised activation ``z = (x - mu) / sigma`` (``mu, sigma`` from the training
rows), ``W [d, C]``, trained by full-batch L-BFGS on the cross-entropy plus
``weight_decay * ||W||^2`` on a seeded random split of the rows. It reports
held-out accuracy beside two baselines:

- the **majority** baseline: always predict the training set's most frequent class;
- a **control task** (Hewitt & Liang 2019): every token *type* gets a random label,
  drawn from the task's own label distribution, fixed per type. A probe that can
  learn the control can memorise token identity; **selectivity** =
  ``accuracy(task) - accuracy(control)`` says how much of the task's accuracy is
  more than that. (A probe for "previous token" whose control, keyed on the
  *current* token, scores as high is reading the current token, not the previous one.)

The variables the generators know: for induction data (:func:`induction_variables`)
the current token, the previous token, whether the position is predictable by
induction, and the repeat offset (at repeated positions only); for the
skip-trigram language (:func:`skip_trigram_variables`) whether a planted source
token ``A`` occurred earlier, and whether a rule ``A ... B -> C`` fires here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toylab.features.checks import (check_bool, check_device, check_finite, check_int, check_model, check_number,
                                    check_seed)
from toylab.training.optim import LBFGS

IGNORE = -1  # label for rows that do not belong to the task (e.g. the offset of a non-repeat)


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy of one probe and its baselines (all in [0, 1])."""

    train_accuracy: float
    test_accuracy: float
    majority_accuracy: float
    n_classes: int
    n_train: int
    n_test: int


def _check_labels(acts, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or not acts.dtype.is_floating_point:
        got = f"{acts.dtype} {list(acts.shape)}" if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise ValueError(f"acts must be a floating tensor of shape [N, d], got {got}")
    if acts.shape[1] == 0:
        raise ValueError(f"acts has no features (shape {list(acts.shape)}): a probe needs d >= 1")
    check_finite(check_device(acts, "acts"), "acts")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.ndim != 1:
        raise ValueError("labels must be a 1-D integer tensor [N] (use -1 for rows outside the task)")
    check_device(labels, "labels")
    if labels.shape[0] != acts.shape[0]:
        raise ValueError(f"labels has length {labels.shape[0]} but there are {acts.shape[0]} activation rows: "
                         "one label per row (rows are batch-major positions, without position 0 by default)")
    return acts, labels.long()


def fit_probe(acts: torch.Tensor, labels: torch.Tensor, *, groups: torch.Tensor | None = None,
              test_frac: float = 0.25, seed: int = 0, max_iter: int = 100,
              weight_decay: float = 1e-3) -> ProbeResult:
    """Train a softmax probe on ``acts [N, d]`` for ``labels [N]`` (ints >= 0; ``-1`` rows are
    dropped) and score it on a held-out ``test_frac`` of the rows (seeded split).

    ``groups [N]`` (e.g. the sequence index of each row) keeps rows of one group on the
    same side of the split: positions of one sequence share its tokens (a repeated
    segment holds the same (token, previous token) pairs twice), so a row split leaks.

    Refused, as requests that mean nothing: non-finite ``acts``, a single class (overall or
    in the training split: any probe would score 1.0), ``max_iter < 1`` (the untrained
    probe), a negative or non-finite ``weight_decay``."""
    acts, labels = _check_labels(acts, labels)
    if groups is None:
        groups = torch.arange(labels.shape[0])
    if not isinstance(groups, torch.Tensor) or groups.shape != labels.shape or groups.dtype.is_floating_point:
        raise ValueError(f"groups must be an integer tensor of the labels' shape {list(labels.shape)}")
    if isinstance(test_frac, bool) or not isinstance(test_frac, (int, float)) or not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac!r}")
    seed = check_seed(seed)
    max_iter = check_int("max_iter", max_iter, minimum=1, meaning="L-BFGS iterations; 0 would score the untrained "
                                                                   "all-zero probe")
    weight_decay = check_number("weight_decay", weight_decay, minimum=0.0, meaning="the L2 penalty on W")
    keep = labels != IGNORE
    if bool((labels[keep] < 0).any()):
        raise ValueError("labels must be >= 0 (or -1 to ignore a row)")
    x, y, grp = acts[keep].double(), labels[keep], groups[keep]
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"a probe needs at least 4 labelled rows, got {n}")
    n_classes = int(y.max()) + 1
    present = torch.unique(y)
    if present.numel() < 2:
        raise ValueError(f"every labelled row has class {int(present[0])}: a probe needs at least 2 classes "
                         "(with one, any probe scores 1.0 and says nothing)")
    g = torch.Generator().manual_seed(seed)
    uniq, inverse = torch.unique(grp, return_inverse=True)
    if uniq.numel() < 2:
        raise ValueError("a held-out split needs at least 2 groups")
    n_test_groups = min(max(1, int(round(test_frac * uniq.numel()))), uniq.numel() - 1)
    is_test = torch.zeros(uniq.numel(), dtype=torch.bool)
    is_test[torch.randperm(uniq.numel(), generator=g)[:n_test_groups]] = True
    test, train = torch.nonzero(is_test[inverse]).squeeze(1), torch.nonzero(~is_test[inverse]).squeeze(1)
    n_test = int(test.numel())
    if torch.unique(y[train]).numel() < 2:
        raise ValueError(f"the training split holds only class {int(y[train][0])} ({train.numel()} rows): "
                         "a probe trained on one class always predicts it; use more rows or groups")
    mu, sigma = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    z = (x - mu) / sigma
    W = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([W, c], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")
    zt, yt = z[train], y[train]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(zt @ W + c, yt) + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        opt.step(closure)
    finally:
        torch.set_grad_enabled(grad_was)
    with torch.no_grad():
        pred = (z @ W + c).argmax(1)
    majority = int(torch.bincount(y[train], minlength=n_classes).argmax())
    return ProbeResult(
        train_accuracy=float((pred[train] == y[train]).double().mean()),
        test_accuracy=float((pred[test] == y[test]).double().mean()),
        majority_accuracy=float((y[test] == majority).double().mean()),
        n_classes=n_classes, n_train=int(train.numel()), n_test=int(n_test))


def control_labels(types: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang control task: ``[N]`` labels, one random label per distinct value of
    ``types [N]`` (e.g. the current token), drawn from the empirical distribution of
    ``labels [N]`` (ignoring ``-1``); rows with ``labels == -1`` stay ``-1``."""
    if not isinstance(types, torch.Tensor) or types.ndim != 1 or types.dtype.is_floating_point:
        raise ValueError("types must be a 1-D integer tensor [N]")
    if not isinstance(labels, torch.Tensor) or labels.shape != types.shape:
        raise ValueError(f"labels must have the same shape as types {list(types.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor (use -1 for rows outside the task), got {labels.dtype}")
    labels = labels.long()
    valid = labels != IGNORE
    if not bool(valid.any()):
        raise ValueError("every label is -1 (ignored): there is no label distribution to draw the control from")
    if bool((labels[valid] < 0).any()):
        raise ValueError("labels must be >= 0 (or -1 to ignore a row)")
    g = torch.Generator().manual_seed(check_seed(seed))
    counts = torch.bincount(labels[valid]).double()
    uniq, inverse = torch.unique(types, return_inverse=True)
    per_type = torch.multinomial(counts, uniq.numel(), replacement=True, generator=g)
    return torch.where(valid, per_type[inverse], torch.full_like(labels, IGNORE))


def induction_variables(batch, skip_first: bool = True) -> dict[str, torch.Tensor]:
    """Probe targets from an :class:`toylab.data.InductionBatch`, each ``[b * (n_ctx - skip_first)]``,
    in the row order of :func:`toylab.features.train_sae.gather_activations`.

    ``current_token`` ``x_p``; ``previous_token`` ``x_{p-1}`` (-1 at p = 0);
    ``is_repeat`` 0/1 (predictable by induction); ``repeat_offset`` ``d - s`` at repeated
    positions, -1 elsewhere.
    """
    if not all(hasattr(batch, a) for a in ("tokens", "is_repeat", "offset")):
        raise TypeError(f"induction_variables needs an InductionBatch (tokens, is_repeat, offset), "
                        f"got {type(batch).__name__}")
    check_bool("skip_first", skip_first)
    tokens = batch.tokens
    b, n = tokens.shape
    if skip_first and n < 2:
        raise ValueError("the batch has 1 position and skip_first=True drops it: no rows are left")
    prev = torch.cat([torch.full((b, 1), IGNORE, dtype=torch.long), tokens[:, :-1]], 1)
    offset = torch.where(batch.is_repeat, batch.offset[:, None].expand(b, n), torch.full((b, n), IGNORE))
    out = {"current_token": tokens, "previous_token": prev, "is_repeat": batch.is_repeat.long(),
           "repeat_offset": offset}
    start = 1 if skip_first else 0
    return {k: v[:, start:].reshape(-1) for k, v in out.items()}


def skip_trigram_variables(tokens: torch.Tensor, language, skip_first: bool = True) -> dict[str, torch.Tensor]:
    """Probe targets from a :class:`toylab.data.SkipTrigramLanguage` on ``tokens [b, n]``, each
    ``[b * (n - skip_first)]`` in the row order of ``gather_activations``.

    ``source_earlier``: 1 if some rule source ``A_i`` occurs at a position ``< p``;
    ``rule_active``: 1 if a rule fires for predicting ``x_{p+1}`` (``language.active_rules >= 0``).
    """
    if not hasattr(language, "rules") or not hasattr(language, "active_rules"):
        raise TypeError(f"skip_trigram_variables needs a SkipTrigramLanguage, got {type(language).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point \
            or tokens.dtype.is_complex or tokens.dtype == torch.bool or tokens.numel() == 0:
        got = f"{tokens.dtype} {list(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a non-empty [batch, pos] integer tensor, got {got}")
    check_bool("skip_first", skip_first)
    if skip_first and tokens.shape[1] < 2:
        raise ValueError("tokens have 1 position and skip_first=True drops it: no rows are left")
    sources = torch.tensor(sorted({a for a, _, _ in language.rules}))
    is_source = (tokens.unsqueeze(-1) == sources).any(-1)  # [b, n]
    seen_before = torch.cat([torch.zeros_like(is_source[:, :1]), is_source[:, :-1]], 1).cummax(1).values
    out = {"source_earlier": seen_before.long(), "rule_active": (language.active_rules(tokens) >= 0).long()}
    start = 1 if skip_first else 0
    return {k: v[:, start:].reshape(-1) for k, v in out.items()}


def probe_with_control(acts: torch.Tensor, labels: torch.Tensor, types: torch.Tensor, seed: int = 0,
                       groups: torch.Tensor | None = None, **kw) -> dict[str, float]:
    """Fit the task and its control task on ``acts [N, d]``; returns
    ``{"accuracy", "control_accuracy", "selectivity", "majority", "chance"}``
    (``chance = 1 / n_classes``, ``selectivity = accuracy - control_accuracy``)."""
    acts, labels = _check_labels(acts, labels)
    if not isinstance(types, torch.Tensor) or types.shape != labels.shape:
        raise ValueError(f"types must have the same shape as labels {list(labels.shape)}")
    seed = check_seed(seed)
    task = fit_probe(acts, labels, seed=seed, groups=groups, **kw)
    ctrl = fit_probe(acts, control_labels(types, labels, seed=seed + 1), seed=seed, groups=groups, **kw)
    return {"accuracy": task.test_accuracy, "control_accuracy": ctrl.test_accuracy,
            "selectivity": task.test_accuracy - ctrl.test_accuracy, "majority": task.majority_accuracy,
            "chance": 1.0 / task.n_classes}


def probe_across_hooks(model, batch, variable: str, hooks: list[str] | None = None, seed: int = 0,
                       **kw) -> dict[str, dict[str, float]]:
    """:func:`probe_with_control` for ``variable`` (a key of :func:`induction_variables`) at
    every hook in ``hooks`` (default: ``hook_embed`` and every layer's ``hook_resid_post``),
    with the current token as the control's token type and the split made by sequence.
    Returns ``{hook: scores}``."""
    from toylab.features.train_sae import gather_activations  # gather lives with the SAE trainer

    check_model(model, "probe_across_hooks")
    variables = induction_variables(batch)
    if variable not in variables:
        raise ValueError(f"unknown variable {variable!r}; expected one of {sorted(variables)}")
    if hooks is None:
        hooks = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    if isinstance(hooks, str) or not isinstance(hooks, (list, tuple)) or not hooks:
        raise ValueError(f"hooks must be a non-empty list of hook names, got {hooks!r}"
                         + (f" (a single name: write [{hooks!r}])" if isinstance(hooks, str) else ""))
    b, n = batch.tokens.shape
    groups = torch.arange(b).repeat_interleave(n - 1)
    out = {}
    for hook in hooks:
        acts = gather_activations(model, hook, batch.tokens)
        out[hook] = probe_with_control(acts, variables[variable], variables["current_token"], seed=seed,
                                       groups=groups, **kw)
    return out
