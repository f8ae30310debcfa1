"""A dense language: every sequence favours one token, and only the counts of all earlier tokens
tell which.

The methods suite's negative control (:mod:`toylab.suite.planted`) is trained on it: the best
prediction is a function of the whole history (the token counts), with no sparse circuit to find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from toylab.data.bigram import BOS
from toylab.data.sampling import check_batch_size, check_generator
from toylab.data.spec import check_int, check_json_able, check_probability, check_seed, check_spec


@dataclass(frozen=True)
class MajorityBatch:
    """``tokens [b, n]`` and ``majority [b]`` (the favoured token, ``1..k``)."""

    tokens: torch.Tensor
    majority: torch.Tensor


class MajorityData:
    """Sequences over ``k = d_vocab - 1`` tokens, each favouring one of them.

    Generating rule, per sequence: ``x_0 = BOS``, ``m ~ Uniform{1..k}`` and, for ``p >= 1``,
    ``x_p = m`` with probability ``p_major``, else ``x_p ~ Uniform{1..k}``.

    Truth (:meth:`next_token_probs`): with ``c_v`` the count of token ``v`` in ``x_1..x_t``, the
    posterior is ``P(m = v | x_0..x_t) = softmax_v(c_v log r)``, ``r = 1 + p_major k / (1 - p_major)``
    (each occurrence of ``v`` multiplies its odds by ``r``), and
    ``P(x_{t+1} = v | x_0..x_t) = p_major P(m = v | ...) + (1 - p_major) / k``. Every earlier token
    counts, so no small set of positions or heads can compute it. ``seed`` is accepted for the common
    dataset interface; the rule does not depend on it.
    """

    kind = "majority"
    _FIELDS = ("d_vocab", "n_ctx", "seed", "p_major")

    def __init__(self, *, d_vocab: int = 9, n_ctx: int = 24, seed: int = 0, p_major: float = 0.3) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=3)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=2)
        self.seed = check_seed(seed)
        self.p_major = check_probability("p_major", p_major)
        if self.p_major >= 1.0:
            raise ValueError("p_major must be < 1 (at 1 a sequence is one token repeated)")

    @property
    def k(self) -> int:
        return self.d_vocab - 1

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> MajorityBatch:
        """A batch with its favoured tokens (:class:`MajorityBatch`)."""
        b = check_batch_size(batch_size)
        generator = check_generator(generator)
        n = self.n_ctx
        m = torch.randint(1, self.d_vocab, (b,), generator=generator)
        other = torch.randint(1, self.d_vocab, (b, n - 1), generator=generator)
        use = torch.rand(b, n - 1, generator=generator, dtype=torch.float64) < self.p_major
        body = torch.where(use, m[:, None], other)
        return MajorityBatch(torch.cat([torch.full((b, 1), BOS), body], 1), m)

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        return self.sample_batch(batch_size, generator).tokens

    def next_token_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, n, V]`` float64: the exact ``P(x_{t+1} | x_0..x_t)`` at every position (class doc);
        ``tokens [b, n]`` start with BOS. BOS itself has probability 0."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise ValueError(f"tokens must be a LongTensor [batch, n], got {getattr(tokens, 'shape', type(tokens))}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.d_vocab:
            raise ValueError(f"tokens must hold ids in [0, {self.d_vocab - 1}]")
        onehot = torch.nn.functional.one_hot(tokens, self.d_vocab).double()
        onehot[..., 0] = 0.0  # BOS counts for nothing
        counts = onehot.cumsum(1)[..., 1:]  # [b, n, k]
        log_r = math.log(1 + self.p_major * self.k / (1 - self.p_major))
        post = torch.softmax(counts * log_r, -1)
        probs = torch.zeros(*tokens.shape, self.d_vocab, dtype=torch.float64)
        probs[..., 1:] = self.p_major * post + (1 - self.p_major) / self.k
        return probs

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({"kind": self.kind, **{f: getattr(self, f) for f in self._FIELDS}})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "MajorityData":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, cls._FIELDS))

    def __repr__(self) -> str:
        return f"MajorityData(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, p_major={self.p_major})"
