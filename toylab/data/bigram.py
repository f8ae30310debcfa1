"""A bigram language: a sparse random Markov chain over tokens, with BOS = 0.

The simplest language a zero-layer transformer can learn exactly: its logits
``W_E W_U`` can represent any bigram table, so the trained model can be compared
token by token with :attr:`BigramLanguage.transition`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from toylab.data.sampling import (check_batch_size, check_generator, derive_generator,
                                  sample_categorical)
from toylab.data.spec import (check_float, check_int, check_json_able, check_probability,
                              check_seed, check_spec)

BOS = 0


class BigramLanguage:
    """Sequences ``[BOS, x_1, ..., x_{n_ctx-1}]`` from a sparse random Markov chain.

    Generating rule (``V = d_vocab``, ``k = n_successors``, ``s = zipf_exponent``)::

        x_0 = BOS = 0
        x_{t+1} ~ P(. | x_t),   P = transition  [V, V]

        Z(b | 0) = 1 / (V - 1)                       for b in 1..V-1  (uniform start)
        Z(b | a) = r_a(b)^-s / sum_{j=1..k} j^-s     for b in succ(a), a >= 1
        P(b | a) = (1 - p_boost) Z(b | a) + p_boost 1[b in boost_tokens] / |boost_tokens|

    where ``succ(a)`` is a random set of ``k`` tokens from ``1..V-1`` and
    ``r_a(b) in 1..k`` a random rank (both from ``seed``). Column 0 is zero: nothing
    transitions to BOS, so BOS appears only at position 0. All other entries are
    exact zeros, so the truth is sparse. The uniform start makes every token
    ``1..V-1`` reachable (at position 1). ``boost_tokens``/``p_boost`` (default:
    none) let :class:`~toylab.data.skip_trigram.SkipTrigramLanguage` make some tokens
    frequent; with ``p_boost = 0`` the chain is the plain sparse Zipf chain.

    Attributes:
        transition: ``[V, V]`` float64, rows sum to 1, ``transition[a, b] = P(b | a)``.
        stationary: ``[V]`` float64, see :attr:`stationary`.
    """

    kind = "bigram"

    def __init__(self, *, d_vocab: int = 64, n_ctx: int = 32, seed: int = 0,
                 zipf_exponent: float = 1.0, n_successors: int = 8,
                 boost_tokens: Sequence[int] = (), p_boost: float = 0.0) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=2)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=2)
        self.seed = check_seed(seed)
        self.zipf_exponent = check_float("zipf_exponent", zipf_exponent, minimum=0.0)
        self.n_successors = check_int("n_successors", n_successors, minimum=1,
                                      maximum=self.d_vocab - 1)
        self.p_boost = check_probability("p_boost", p_boost)
        if isinstance(boost_tokens, (str, bytes)) or not isinstance(boost_tokens, Sequence):
            raise ValueError(f"boost_tokens must be a list of token ids, got {boost_tokens!r}")
        self.boost_tokens = [check_int(f"boost_tokens[{i}]", t, minimum=1, maximum=self.d_vocab - 1)
                             for i, t in enumerate(boost_tokens)]
        if len(set(self.boost_tokens)) != len(self.boost_tokens):
            raise ValueError(f"boost_tokens must be distinct, got {self.boost_tokens}")
        if self.p_boost > 0 and not self.boost_tokens:
            raise ValueError(f"p_boost = {self.p_boost} > 0 needs at least one boost token")

        self.transition = self._build_transition()
        self.stationary = self._expected_frequencies()

    # ------------------------------------------------------------------ rules
    def _build_transition(self) -> torch.Tensor:
        """The ``[V, V]`` float64 transition matrix described in the class docstring."""
        V, k = self.d_vocab, self.n_successors
        gen = derive_generator(self.seed, "bigram")
        T = torch.zeros(V, V, dtype=torch.float64)
        T[0, 1:] = 1.0 / (V - 1)
        # Row a >= 1: a random ordering of 1..V-1; its first k entries are the
        # successors, in rank order 1..k.
        order = torch.rand(V - 1, V - 1, generator=gen, dtype=torch.float64)
        succ = order.argsort(dim=1, stable=True)[:, :k] + 1  # [V-1, k]
        weights = torch.arange(1, k + 1, dtype=torch.float64) ** -self.zipf_exponent
        weights = weights / weights.sum()
        T[1:].scatter_(1, succ, weights.expand(V - 1, k).clone())
        if self.p_boost > 0:
            boost = torch.zeros(V, dtype=torch.float64)
            boost[self.boost_tokens] = 1.0 / len(self.boost_tokens)
            T = (1.0 - self.p_boost) * T + self.p_boost * boost
        return T

    def _expected_frequencies(self) -> torch.Tensor:
        """``w(a) = (1 / (n_ctx - 1)) sum_{t=0}^{n_ctx-2} P(x_t = a)``, exactly.

        ``P(x_0 = .) = e_BOS`` and ``P(x_{t+1} = .) = P(x_t = .) @ transition``.
        """
        p = torch.zeros(self.d_vocab, dtype=torch.float64)
        p[BOS] = 1.0
        total = torch.zeros_like(p)
        for _ in range(self.n_ctx - 1):
            total += p
            p = p @ self.transition
        return total / (self.n_ctx - 1)

    @property
    def start_distribution(self) -> torch.Tensor:
        """``[V]`` float64: ``P(x_1 = b) = transition[BOS, b]``."""
        return self.transition[BOS]

    # --------------------------------------------------------------- sampling
    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        tokens = torch.empty(batch_size, self.n_ctx, dtype=torch.long)
        tokens[:, 0] = BOS
        for t in range(self.n_ctx - 1):
            tokens[:, t + 1] = sample_categorical(self.transition[tokens[:, t]], generator)
        return tokens

    # ---------------------------------------------------------------- metrics
    def frequency_weighted_kl(self, model_probs: torch.Tensor) -> float:
        """Frequency-weighted KL divergence (nats) of a model's bigram table from the truth.

        ``KL_w(P || Q) = sum_a w(a) sum_b P(b|a) (log P(b|a) - log Q(b|a))``

        with ``P = transition``, ``w = stationary / sum(stationary)`` (how often
        ``a`` is the current token in sampled sequences) and ``0 log 0 = 0``.
        It is 0 iff ``Q`` equals ``P`` on every row that occurs, and ``inf`` if
        ``Q(b|a) = 0`` where ``P(b|a) > 0`` and ``w(a) > 0``.

        Args:
            model_probs: ``[V, V]`` rows ``Q(. | a)``, e.g. ``softmax(logits, -1)``;
                every row must sum to 1 (within 1e-3), else ``ValueError``.
        """
        if not isinstance(model_probs, torch.Tensor):
            raise ValueError(f"model_probs must be a torch.Tensor, got {type(model_probs).__name__}")
        V = self.d_vocab
        if model_probs.shape != (V, V):
            raise ValueError(f"model_probs must have shape [{V}, {V}], got {list(model_probs.shape)}")
        Q = model_probs.detach().to(torch.float64).cpu()
        if not torch.isfinite(Q).all() or (Q < 0).any():
            raise ValueError("model_probs must be finite and non-negative")
        row_sums = Q.sum(dim=1)
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
            col_sums = Q.sum(dim=0)
            hint = (" Its columns sum to 1: was the softmax taken over the wrong dim (dim=0 instead of dim=-1)?"
                    if torch.allclose(col_sums, torch.ones_like(col_sums), atol=1e-3) else
                    " Take softmax(logits, dim=-1) over the next token (the last dim), not another dim.")
            raise ValueError(
                f"model_probs rows must each sum to 1 (row a is the distribution Q(. | a) over the next token); "
                f"row sums range over [{float(row_sums.min()):.4g}, {float(row_sums.max()):.4g}].{hint}")
        P = self.transition
        w = self.stationary / self.stationary.sum()
        support = (P > 0) & (w > 0)[:, None]
        if (Q[support] == 0).any():
            return float("inf")
        terms = torch.zeros_like(P)
        terms[support] = P[support] * (P[support].log() - Q[support].log())
        return float((w * terms.sum(dim=1)).sum())

    # ------------------------------------------------------------------- spec
    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({
            "kind": self.kind, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx, "seed": self.seed,
            "zipf_exponent": self.zipf_exponent, "n_successors": self.n_successors,
            "boost_tokens": list(self.boost_tokens), "p_boost": self.p_boost,
        })

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "BigramLanguage":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, ["d_vocab", "n_ctx", "seed", "zipf_exponent",
                                                 "n_successors", "boost_tokens", "p_boost"]))

    def __repr__(self) -> str:
        return (f"BigramLanguage(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, seed={self.seed}, "
                f"zipf_exponent={self.zipf_exponent}, n_successors={self.n_successors})")
