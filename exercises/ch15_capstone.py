"""Capstone — plant a rule, train a model, and get the rule back.  Exercises.

You design a skip-trigram language (rules ``A ... B -> C`` planted in a
bigram background), train a one-layer attention-only model on it with the
lab, and then recover the rules twice: from the weights (the QK circuit says
which source ``A`` the trigger ``B`` attends to, the OV circuit what attending
to ``A`` predicts) and by intervention (replace ``A`` and watch the
probability of ``C`` fall). The grader trains your model with your choices,
then checks every answer against the rules your language planted, and against
a second model it trains on a language of its own choosing.
Fill in every function whose body raises ``NotImplementedError``, then check
your work with

    toylab grade --chapter 15

or, in a notebook, ``toylab.course.grading.check("ch11", "rule_from_weights")``.
The reference answers are in ``solutions/ch15_capstone.py``: try first.
The project brief is the book page ``chapters/ch15_capstone.md``.
"""

from __future__ import annotations

import torch

from toylab.model import ModelConfig
from toylab.training.train import TrainConfig


def design_language() -> dict:
    """Design the language: a data spec for a skip-trigram language with planted rules.  ★  (about 10 min)

    Return a spec that ``toylab.data.make_dataset(spec)`` turns into a
    :class:`~toylab.data.SkipTrigramLanguage` (read its docstring: the rules
    ``(A, B, C)`` follow from ``seed``; ``make_dataset(spec).rules`` lists them).
    Constraints, so the capstone stays small and its rules are readable:

    * ``kind == "skip_trigram"``, ``d_vocab <= 32``, ``n_ctx <= 16``;
    * ``1 <= n_rules <= 3`` and ``n_triggers == n_rules`` (every trigger ``B``
      belongs to one rule, so no two rules compete for the same ``B``);
    * ``p_rule >= 0.5`` (the rule decides the next token most of the time);
    * the rules fire often enough to be learned: on sampled sequences at
      least 5 % of the predicted positions are governed by a rule
      (``language.active_rules(tokens) >= 0``). ``p_boost`` makes sources
      and triggers frequent; ``n_successors`` sets how predictable the
      background is.

    Returns:
        dict with the fields of ``SkipTrigramLanguage.spec``: ``kind, d_vocab,
        n_ctx, seed, n_rules, p_rule, n_triggers, p_boost, zipf_exponent,
        n_successors``.

    Hint: build a candidate, sample a few hundred sequences from it and
    measure how often a rule fires before you commit to it.
    """
    raise NotImplementedError


def train_config(spec: dict) -> tuple[ModelConfig, TrainConfig, int]:
    """Choose the model and the training run that learn your language's rules.  ★★  (about 15 min)

    The grader calls ``toylab.training.train.train(model_cfg, spec, train_cfg, seed,
    progress=False)`` and then measures, for every planted rule, the model's
    mean probability of ``C`` at the positions the rule governs; each must
    reach at least 3/4 of the true probability the language gives ``C`` there.
    Budget (a graded test has a minute, and trains twice):

    * ``n_layers == 1`` (the capstone reads a one-layer model), ``n_heads <= 4``,
      ``d_model <= 64``, no LayerNorm, ``d_vocab`` and ``n_ctx`` those of ``spec``;
    * ``steps * batch_size <= 40_000`` sequences (about 5 s on one core);
    * ``0 <= seed < 1000``.

    Args:
        spec: the data spec (yours from :func:`design_language`, or another).

    Returns:
        ``(model_cfg, train_cfg, seed)``: a :class:`toylab.model.ModelConfig`,
        a :class:`toylab.training.train.TrainConfig` and the training seed.

    Hint: a skip-trigram needs one head per rule only if the rules interfere;
    what limits you is how often each rule is seen. A learning rate well
    above the default and a short warm-up use the budget best. Measure a run
    before returning it.
    """
    raise NotImplementedError


def rule_firing_mask(tokens: torch.Tensor, rule: tuple[int, int, int]) -> torch.Tensor:
    """Where a rule decides the next token.  ★★  (about 10 min)

    A rule ``(A, B, C)`` governs the prediction made at position ``t`` (the
    token at ``t + 1``) when the current token is the trigger and the source
    occurred earlier in the sequence::

        mask[i, t] = (tokens[i, t] == B)  and  (A in tokens[i, 1 .. t-1])

    (for a language whose triggers each belong to one rule, as yours do).

    Args:
        tokens: ``[batch, n]`` LongTensor (BOS at position 0). Not modified.
        rule: ``(A, B, C)``.

    Returns:
        ``[batch, n]`` bool tensor.

    Hint: "A occurred before t" is a running OR along the position axis;
    mind which position the mask marks — the trigger's, not the target's.
    """
    raise NotImplementedError


def rule_from_weights(model, n_rules: int) -> list[tuple[int, int, int]]:
    """Read the planted rules off a one-layer model's weights.  ★★★  (about 25 min)

    For each head, the full QK circuit ``W_E W_Q W_K^T W_E^T`` (rows: the
    query token, i.e. the trigger ``B``; columns: the key token, i.e. the
    source ``A``) says which sources each trigger attends to, and the full OV
    circuit ``W_E W_V W_O W_U`` (rows: the attended token ``A``; columns: the
    output ``C``) says which logits attending to ``A`` raises. A rule is a
    triple where both are large: ``B`` attends to ``A`` much more than to an
    average token, and ``A``'s OV row singles out ``C``.

    Args:
        model: a trained one-layer :class:`~toylab.model.AttnOnlyTransformer`
            (not modified).
        n_rules: how many rules to return.

    Returns:
        ``n_rules`` distinct triples ``(A, B, C)`` of ints (order does not
        matter); BOS (token 0) is never part of a rule, and ``A, B, C`` differ.

    Hint: subtract each row's mean before comparing entries (softmax and the
    logit ranking ignore a per-row constant); the token predicted at ``B`` is
    decided by the direct path ``W_E W_U`` plus the boost, not by the boost
    alone; score every ``(A, B)`` pair by attention times boost, and do not
    let one strong source fill every slot.
    """
    raise NotImplementedError


def rule_by_intervention(model, tokens: torch.Tensor, rule: tuple[int, int, int], replacement: int) -> float:
    """Test a rule causally: how much does the probability of C fall without A?  ★★  (about 20 min)

    Run the model on ``tokens`` and on a corrupted copy in which every
    occurrence of the source ``A`` is replaced by ``replacement`` (a token
    that is no rule's source). At every position ``t`` where the rule fires
    (see :func:`rule_firing_mask`, on the clean tokens) compare the model's
    probability of ``C`` as the next token::

        effect = mean_{(i, t) : rule fires}  P_clean(C | x_{<=t}) - P_corrupt(C | x_{<=t})

    Args:
        model: a one-layer model (not modified).
        tokens: ``[batch, n]`` LongTensor of sequences. Not modified.
        rule: ``(A, B, C)``.
        replacement: the token put where ``A`` was.

    Returns:
        float, the mean drop in probability (positive: removing ``A`` hurts
        ``C``); ``0.0`` if the rule never fires in ``tokens``.

    Hint: probabilities, not logits or log-probabilities; the logits at
    position ``t`` are the prediction for ``t + 1``; corrupt a copy.
    """
    raise NotImplementedError


def is_rule_learned(model, language, rule: tuple[int, int, int]) -> bool:
    """Decide from measurements whether a model has learned a rule.  ★★  (about 15 min)

    A judgement call: pick the evidence and the thresholds, and defend them by
    what your function returns. The grader asks about a trained model and a
    rule it learned (answer ``True``), and about cases where the answer is
    ``False``: the same rule on an untrained model, a made-up rule that mixes
    the source of one planted rule with the trigger of another, and a rule of
    another language.

    Args:
        model: a one-layer model (not modified).
        language: a :class:`~toylab.data.SkipTrigramLanguage` (sample from it
            with your own ``torch.Generator``).
        rule: ``(A, B, C)``, possibly not one of ``language.rules``.

    Returns:
        bool.

    Hint: a model that learned ``A ... B -> C`` both predicts ``C`` where the
    rule fires and stops predicting it when ``A`` is taken away; a rule that
    never fires in the language cannot have been learned.
    """
    raise NotImplementedError
