"""A skip-trigram language: a bigram background plus planted rules ``A ... B -> C``.

Skip-trigrams are what a one-layer attention-only transformer can represent
(Elhage et al. 2021): the QK circuit lets destination token ``B`` attend to
source token ``A`` earlier in the context, and the OV circuit copies from ``A``
to a boost of ``C``. This language plants such rules so the trained model's
circuits can be checked against them.
"""

from __future__ import annotations

from typing import Any

import torch

from toylab.data.bigram import BOS, BigramLanguage
from toylab.data.sampling import (check_batch_size, check_generator, derive_generator,
                                  sample_categorical)
from toylab.data.spec import (check_int, check_json_able, check_probability, check_seed,
                              check_spec)


class SkipTrigramLanguage:
    """Sequences from a bigram background with planted skip-trigram rules ``(A, B, C)``.

    Generating rule: ``x_0 = BOS`` and, for the current position ``t``,::

        R_t = { rules (A, B, C) : B = x_t and A in {x_1 .. x_{t-1}} }
        if R_t is empty:  x_{t+1} ~ P_bg(. | x_t)
        else:             let (A*, B, C*) be the rule in R_t whose A occurred most recently;
                          x_{t+1} = C*                 with probability p_rule
                          x_{t+1} ~ P_bg(. | x_t)      otherwise

    i.e. ``P(b | prefix) = p_rule 1[b = C*] + (1 - p_rule) P_bg(b | x_t)`` when a rule fires.

    Rules (derived from ``seed``): a random permutation of ``1..V-1`` gives
    ``n_rules`` sources ``A_i``, ``n_rules`` outputs ``C_i`` and ``n_triggers``
    trigger tokens ``T_j``; rule ``i`` is ``(A_i, T_{i mod n_triggers}, C_i)``. So every
    rule has its own ``A`` and its own ``C``, the ``B``'s are shared
    (``n_rules / n_triggers`` rules per trigger), and the ``A``, ``B``, ``C`` sets
    are disjoint and exclude BOS.

    Background: ``BigramLanguage(seed=seed, ...)`` with ``boost_tokens = A's and B's``:
    each step, with probability ``p_boost`` the background emits a uniform token
    from ``A ∪ B``, so sources and triggers are frequent. With the defaults
    (``V=64, n_ctx=32, n_rules=12, n_triggers=4, p_boost=0.4``) a rule fires on
    about 2.6 of the 31 predicted positions per sequence (measured on 4096
    sequences, seeds 0-2), i.e. each rule fires about 30-75 times in a batch of 256.

    Attributes:
        rules: list of ``(A, B, C)`` int tuples, in rule order.
        background: the :class:`BigramLanguage` used when no rule fires.
    """

    kind = "skip_trigram"

    def __init__(self, *, d_vocab: int = 64, n_ctx: int = 32, seed: int = 0,
                 n_rules: int = 12, p_rule: float = 0.8, n_triggers: int = 4,
                 p_boost: float = 0.4, zipf_exponent: float = 1.0,
                 n_successors: int = 8) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=4)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=2)
        self.seed = check_seed(seed)
        self.n_rules = check_int("n_rules", n_rules, minimum=1)
        self.n_triggers = check_int("n_triggers", n_triggers, minimum=1, maximum=self.n_rules)
        self.p_rule = check_probability("p_rule", p_rule)
        self.p_boost = check_probability("p_boost", p_boost)
        needed = 2 * self.n_rules + self.n_triggers
        if self.d_vocab - 1 < needed:
            raise ValueError(
                f"d_vocab must be >= 2 * n_rules + n_triggers + 1 = {needed + 1} "
                f"(disjoint A, B, C sets plus BOS), got d_vocab={self.d_vocab}"
            )

        gen = derive_generator(self.seed, "skip_trigram_rules")
        perm = (torch.randperm(self.d_vocab - 1, generator=gen) + 1).tolist()
        R, K = self.n_rules, self.n_triggers
        sources, outputs, triggers = perm[:R], perm[R:2 * R], perm[2 * R:2 * R + K]
        self.rules: list[tuple[int, int, int]] = [
            (sources[i], triggers[i % K], outputs[i]) for i in range(R)
        ]
        self._A = torch.tensor([r[0] for r in self.rules], dtype=torch.long)
        self._B = torch.tensor([r[1] for r in self.rules], dtype=torch.long)
        self._C = torch.tensor([r[2] for r in self.rules], dtype=torch.long)

        self.background = BigramLanguage(
            d_vocab=self.d_vocab, n_ctx=self.n_ctx, seed=self.seed,
            zipf_exponent=zipf_exponent, n_successors=n_successors,
            boost_tokens=sorted(sources + triggers), p_boost=self.p_boost,
        )

    # ------------------------------------------------------------ the truth
    def active_rules(self, tokens: torch.Tensor) -> torch.Tensor:
        """Which rule governs the next token at every position.

        Args:
            tokens: ``[batch, n]`` LongTensor (sequences or prefixes starting with BOS).

        Returns:
            ``[batch, n]`` LongTensor: at ``[i, t]`` the index into :attr:`rules` of
            the rule that fires for predicting ``tokens[i, t+1]`` (``-1`` if none).
        """
        tokens = self._check_tokens(tokens, "tokens", dims=2)
        n = tokens.shape[1]
        positions = torch.arange(n).view(1, n, 1)
        is_source = tokens.unsqueeze(-1) == self._A  # [b, n, R]
        # last position <= t holding A_r (-1: none); x_t itself is never an A when it is a B.
        last_seen = torch.where(is_source, positions, -1).cummax(dim=1).values
        candidate = (tokens.unsqueeze(-1) == self._B) & (last_seen >= 0)
        score = torch.where(candidate, last_seen, -1)
        best_score, best_rule = score.max(dim=-1)
        return torch.where(best_score >= 0, best_rule, -1)

    def _mix(self, current: torch.Tensor, rule: torch.Tensor) -> torch.Tensor:
        """``[m, V]`` float64 next-token rows given current tokens ``[m]`` and active rules ``[m]``."""
        probs = self.background.transition[current].clone()
        fires = rule >= 0
        probs[fires] *= 1.0 - self.p_rule
        probs[fires, self._C[rule[fires]]] += self.p_rule
        return probs

    def next_token_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n, V]`` float64: the exact ``P(x_{t+1} | x_0..x_t)`` at every position ``t``.

        Args:
            tokens: ``[batch, n]`` LongTensor starting with BOS.
        """
        rule = self.active_rules(tokens)
        b, n = tokens.shape
        return self._mix(tokens.reshape(-1), rule.reshape(-1)).view(b, n, self.d_vocab)

    def next_token_distribution(self, prefix: torch.Tensor) -> torch.Tensor:
        """The exact distribution of the next token after ``prefix``.

        Args:
            prefix: ``[n]`` LongTensor, ``n >= 1``, ``prefix[0] = BOS``.

        Returns:
            ``[V]`` float64 summing to 1 (see the class docstring for the formula).
        """
        prefix = self._check_tokens(prefix, "prefix", dims=1)
        rule = self.active_rules(prefix.unsqueeze(0))[0, -1:]
        return self._mix(prefix[-1:], rule)[0]

    def _check_tokens(self, tokens: Any, name: str, dims: int) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            raise ValueError(f"{name} must be a LongTensor, got {type(tokens).__name__}"
                             + (f" of dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else ""))
        if tokens.dim() != dims or tokens.shape[-1] < 1:
            shape = "[n]" if dims == 1 else "[batch, n]"
            raise ValueError(f"{name} must have shape {shape} with n >= 1, got {list(tokens.shape)}")
        if (tokens < 0).any() or (tokens >= self.d_vocab).any():
            raise ValueError(f"{name} must hold token ids in [0, {self.d_vocab - 1}], "
                             f"got min {int(tokens.min())}, max {int(tokens.max())}")
        if (tokens[..., 0] != BOS).any():
            raise ValueError(f"{name} must start with BOS (token {BOS}) at position 0")
        return tokens

    # -------------------------------------------------------------- sampling
    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        tokens = torch.zeros(batch_size, self.n_ctx, dtype=torch.long)
        # last_seen[i, r]: latest position holding A_r so far (-1: none); same rule as active_rules.
        last_seen = torch.full((batch_size, self.n_rules), -1, dtype=torch.long)
        for t in range(self.n_ctx - 1):
            current = tokens[:, t]
            last_seen[current.unsqueeze(1) == self._A] = t
            score = torch.where((current.unsqueeze(1) == self._B) & (last_seen >= 0), last_seen, -1)
            best_score, best_rule = score.max(dim=1)
            rule = torch.where(best_score >= 0, best_rule, -1)
            tokens[:, t + 1] = sample_categorical(self._mix(current, rule), generator)
        return tokens

    # ------------------------------------------------------------------ spec
    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({
            "kind": self.kind, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx, "seed": self.seed,
            "n_rules": self.n_rules, "p_rule": self.p_rule, "n_triggers": self.n_triggers,
            "p_boost": self.p_boost, "zipf_exponent": self.background.zipf_exponent,
            "n_successors": self.background.n_successors,
        })

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "SkipTrigramLanguage":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, ["d_vocab", "n_ctx", "seed", "n_rules", "p_rule",
                                                 "n_triggers", "p_boost", "zipf_exponent",
                                                 "n_successors"]))

    def __repr__(self) -> str:
        return (f"SkipTrigramLanguage(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, seed={self.seed}, "
                f"n_rules={self.n_rules}, p_rule={self.p_rule}, n_triggers={self.n_triggers})")
