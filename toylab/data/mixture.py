"""Two tasks in one language: induction sequences and skip-trigram sequences, mixed by sequence.

The methods suite's mixture model (:mod:`toylab.suite.planted`) is trained on it: the two tasks
share the model's heads but are carried by distinct circuits, and each has its own truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from toylab.data.induction import InductionData
from toylab.data.sampling import check_batch_size, check_generator
from toylab.data.skip_trigram import SkipTrigramLanguage
from toylab.data.spec import check_int, check_json_able, check_probability, check_seed, check_spec


@dataclass(frozen=True)
class MixtureBatch:
    """One batch of :class:`InductionSkipTrigramMixture` with its truth (tensors ``[batch, ...]``).

    ``tokens [b, n]``; ``task [b]`` (0: an induction sequence, 1: a skip-trigram sequence);
    ``is_repeat [b, n]`` (the token at ``p`` is fixed by a copy; False in skip-trigram rows);
    ``rule [b, n]`` (the skip-trigram rule that governs the token after ``p``, ``-1``: none;
    always ``-1`` in induction rows).
    """

    tokens: torch.Tensor
    task: torch.Tensor
    is_repeat: torch.Tensor
    rule: torch.Tensor


class InductionSkipTrigramMixture:
    """Each sequence is, with probability ``p_induction``, an :class:`InductionData` sequence (random
    tokens with a copied segment), else a :class:`SkipTrigramLanguage` sequence (a bigram background
    with planted rules ``A ... B -> C``), both over the same ``d_vocab`` tokens (BOS at position 0).

    Truth: per row, which task it is; in induction rows the copied positions (``is_repeat``), in
    skip-trigram rows the active rule at every position (:meth:`SkipTrigramLanguage.active_rules`).
    The induction part uses ``min_offset``, ``max_offset``, ``p_periodic`` and ``p_end`` (its other
    fields at the lab's defaults: every induction row has a repeat); the skip-trigram part
    ``seed``, ``n_rules``, ``n_triggers``, ``p_rule`` and ``p_boost``.
    """

    kind = "induction_skiptrigram"
    _FIELDS = ("d_vocab", "n_ctx", "seed", "p_induction", "min_offset", "max_offset", "p_periodic", "p_end",
               "n_rules", "n_triggers", "p_rule", "p_boost")

    def __init__(self, *, d_vocab: int = 64, n_ctx: int = 32, seed: int = 0, p_induction: float = 0.5,
                 min_offset: int = 2, max_offset: int = 20, p_periodic: float = 0.5, p_end: float = 0.1,
                 n_rules: int = 12, n_triggers: int = 4, p_rule: float = 0.8, p_boost: float = 0.4) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=4)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=4)
        self.seed = check_seed(seed)
        self.p_induction = check_probability("p_induction", p_induction)
        self.min_offset, self.max_offset = min_offset, max_offset
        self.p_periodic, self.p_end = p_periodic, p_end
        self.n_rules, self.n_triggers, self.p_rule, self.p_boost = n_rules, n_triggers, p_rule, p_boost
        self.induction = InductionData(d_vocab=self.d_vocab, n_ctx=self.n_ctx, seed=self.seed,
                                       min_offset=min_offset, max_offset=max_offset, p_repeat=1.0,
                                       p_periodic=p_periodic, p_end=p_end)
        self.skip_trigram = SkipTrigramLanguage(d_vocab=self.d_vocab, n_ctx=self.n_ctx, seed=self.seed,
                                                n_rules=n_rules, n_triggers=n_triggers, p_rule=p_rule,
                                                p_boost=p_boost)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> MixtureBatch:
        """A batch with its truth: task flags, then ``batch_size`` rows of each task, one chosen per row."""
        b = check_batch_size(batch_size)
        generator = check_generator(generator)
        task = (torch.rand(b, generator=generator, dtype=torch.float64) >= self.p_induction).long()
        ind = self.induction.sample_batch(b, generator)
        skip = self.skip_trigram.sample(b, generator)
        is_skip = task.bool()[:, None]
        tokens = torch.where(is_skip, skip, ind.tokens)
        rule = torch.where(is_skip, self.skip_trigram.active_rules(skip), torch.full_like(skip, -1))
        return MixtureBatch(tokens, task, ind.is_repeat & ~is_skip, rule)

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        return self.sample_batch(batch_size, generator).tokens

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({"kind": self.kind, **{f: getattr(self, f) for f in self._FIELDS}})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "InductionSkipTrigramMixture":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, cls._FIELDS))

    def __repr__(self) -> str:
        return (f"InductionSkipTrigramMixture(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, seed={self.seed}, "
                f"p_induction={self.p_induction}, n_rules={self.n_rules})")


def remove_rule_sources(lang: SkipTrigramLanguage, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[b, n]``: ``tokens`` with every rule source ``A`` replaced by a random token that is no rule's
    ``A``, ``B`` or ``C`` (and not BOS), so that no rule fires anywhere; ``tokens`` is not modified."""
    generator = check_generator(generator)
    used = {t for r in lang.rules for t in r} | {0}
    free = torch.tensor([t for t in range(lang.d_vocab) if t not in used])
    if free.numel() == 0:
        raise ValueError("every token is some rule's A, B or C: there is no neutral token to put in A's place")
    is_a = (tokens[..., None] == lang._A).any(-1)
    repl = free[torch.randint(0, free.numel(), tokens.shape, generator=generator)]
    return torch.where(is_a, repl, tokens)


