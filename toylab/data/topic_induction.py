"""Induction data with a second, independent signal: a topic token that biases the noise.

The methods suite's distractor model is trained on it (:mod:`toylab.suite.planted`): heads that
read the topic are active and write strongly everywhere, but the induction metric (at a copy's
positions, against a corrupted run with the same topic) does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import torch

from toylab.data.bigram import BOS
from toylab.data.sampling import check_batch_size, check_generator
from toylab.data.spec import check_int, check_json_able, check_probability, check_seed, check_spec


@dataclass(frozen=True)
class TopicBatch:
    """One batch of :class:`TopicInductionData` with its truth (tensors ``[batch, ...]``).

    ``tokens [b, n]``; ``topic [b]`` (``0..n_topics-1``); ``is_repeat [b, n]`` (the token at ``p`` is
    fixed by the copy: ``d < p < e``); ``dst_start [b]`` and ``offset [b]`` (``d`` and ``o``: the copy
    starts at ``d`` and reads ``x_p = x_{p-o}``); ``length [b]`` (``e - d``: the copy covers
    ``d <= p < e``).
    """

    tokens: torch.Tensor
    topic: torch.Tensor
    is_repeat: torch.Tensor
    dst_start: torch.Tensor
    offset: torch.Tensor
    length: torch.Tensor


class TopicInductionData:
    """Random tokens under a topic, which from a random point on repeat themselves at a random offset.

    Generating rule (``V = d_vocab``, ``n = n_ctx``, ``K = n_topics``, ``m = topic_size``), per sequence::

        x_0 = BOS;  k ~ Uniform{0..K-1};  x_1 = T_k = 1 + k               (the topic marker)
        content tokens: C = {K+1 .. V-1};  topic k owns S_k = {K+1+k*m .. K+(k+1)*m}
        for p = 2..n-1:  x_p ~ Uniform(S_k) with probability p_topic, else Uniform(C)
        o ~ Uniform{min_offset..max_offset};  d = 2 + o with probability p_periodic,
            else d ~ Uniform{2+o .. n-2}
        e = n for a periodic copy (d = 2 + o) or p_end = 0, else e = min(n, d + 2 + j),
            j ~ Geometric(p_end) on {0, 1, ...} (after its second token a later copy stops
            with probability p_end at each token)
        x_p := x_{p-o} for p = d..e-1 (in order); the noise goes on from e

    Truth: ``is_repeat[p]`` iff ``d < p < e`` (the token is fixed by the copy); elsewhere (``p >= 2``)
    the next token follows the topic: ``P(v) = p_topic / m 1[v in S_k] + (1 - p_topic) / |C|``
    (:meth:`noise_probs`). With ``p_end > 0`` the topic is worth reading inside a copy too (the copy
    may stop, and what follows is the topic's noise), so a head that reads it everywhere pays, beside
    the induction heads. ``seed`` is accepted for the common dataset interface; the rules do not
    depend on it. ``p_end`` is optional in a spec (absent: 0, and no draw is made for it).
    """

    kind = "topic_induction"
    _FIELDS = ("d_vocab", "n_ctx", "seed", "n_topics", "topic_size", "p_topic", "min_offset", "max_offset",
               "p_periodic")
    _OPTIONAL = {"p_end": 0.0}

    def __init__(self, *, d_vocab: int = 128, n_ctx: int = 32, seed: int = 0, n_topics: int = 8,
                 topic_size: int = 8, p_topic: float = 0.5, min_offset: int = 2, max_offset: int = 14,
                 p_periodic: float = 0.5, p_end: float = 0.0) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=4)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=6)
        self.seed = check_seed(seed)
        self.n_topics = check_int("n_topics", n_topics, minimum=1)
        self.topic_size = check_int("topic_size", topic_size, minimum=1)
        self.p_topic = check_probability("p_topic", p_topic)
        self.min_offset = check_int("min_offset", min_offset, minimum=1)
        self.max_offset = check_int("max_offset", max_offset, minimum=self.min_offset)
        self.p_periodic = check_probability("p_periodic", p_periodic)
        self.p_end = check_probability("p_end", p_end)
        if 1 + self.n_topics + self.n_topics * self.topic_size > self.d_vocab:
            raise ValueError(f"d_vocab must be >= 1 + n_topics * (1 + topic_size) = "
                             f"{1 + self.n_topics * (1 + self.topic_size)} (BOS, markers, topic tokens), "
                             f"got d_vocab={self.d_vocab}")
        if self.max_offset > self.n_ctx - 4:
            raise ValueError(f"max_offset must be <= n_ctx - 4 = {self.n_ctx - 4} (BOS, marker, o tokens and "
                             f"two copied ones), got max_offset={self.max_offset}")

    @property
    def first_content(self) -> int:
        """The first content token id, ``K + 1`` (``1..K`` are the topic markers)."""
        return self.n_topics + 1

    def topic_tokens(self, k: int) -> list[int]:
        """``S_k``: the content tokens topic ``k`` favours."""
        start = self.first_content + k * self.topic_size
        return list(range(start, start + self.topic_size))

    def noise_probs(self, topic: torch.Tensor) -> torch.Tensor:
        """``[b, V]`` float64: the distribution of a noise token under topics ``topic [b]``."""
        V, K, m = self.d_vocab, self.n_topics, self.topic_size
        probs = torch.zeros(topic.shape[0], V, dtype=torch.float64)
        probs[:, self.first_content:] = (1 - self.p_topic) / (V - 1 - K)
        cols = self.first_content + topic[:, None] * m + torch.arange(m)[None]
        probs.scatter_add_(1, cols, torch.full(cols.shape, self.p_topic / m, dtype=torch.float64))
        return probs

    def draw_noise(self, topic: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[b, n]`` noise tokens under topics ``topic [b]`` (the rule's ``p >= 2`` draw)."""
        b = topic.shape[0]
        uniform = torch.randint(self.first_content, self.d_vocab, (b, n), generator=generator)
        topical = (self.first_content + topic[:, None] * self.topic_size
                   + torch.randint(0, self.topic_size, (b, n), generator=generator))
        use = torch.rand(b, n, generator=generator, dtype=torch.float64) < self.p_topic
        return torch.where(use, topical, uniform)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> TopicBatch:
        """A batch with its truth (:class:`TopicBatch`)."""
        b = check_batch_size(batch_size)
        generator = check_generator(generator)
        n = self.n_ctx
        topic = torch.randint(0, self.n_topics, (b,), generator=generator)
        tokens = torch.cat([torch.full((b, 1), BOS), (1 + topic)[:, None],
                            self.draw_noise(topic, n - 2, generator)], 1)
        o = torch.randint(self.min_offset, self.max_offset + 1, (b,), generator=generator)
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        periodic = torch.rand(b, generator=generator, dtype=torch.float64) < self.p_periodic
        d = torch.where(periodic, 2 + o, 2 + o + (u * (n - 3 - o)).long())  # uniform on 2+o..n-2
        e = torch.full_like(d, n)
        if self.p_end > 0.0:  # j = floor(log U / log(1 - p_end)) ~ Geometric(p_end) on {0, 1, ...}
            v = torch.rand(b, generator=generator, dtype=torch.float64)
            j = (torch.floor(torch.log1p(-v) / math.log1p(-self.p_end)).clamp(0, n).long() if self.p_end < 1.0
                 else torch.zeros(b, dtype=torch.long))
            e = torch.where(periodic, e, (d + 2 + j).clamp_max(n))
        pos = torch.arange(n)[None]
        dd, oo, ee = d[:, None], o[:, None], e[:, None]
        in_copy = (pos >= dd) & (pos < ee)
        source = torch.where(in_copy, dd - oo + (pos - dd).clamp_min(0) % oo, pos)
        tokens = tokens.gather(1, source)
        return TopicBatch(tokens, topic, (pos > dd) & (pos < ee), d, o, e - d)

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        return self.sample_batch(batch_size, generator).tokens

    def corrupt(self, batch: TopicBatch, generator: torch.Generator) -> torch.Tensor:
        """``[b, n]``: ``batch``'s tokens with the copy (``p >= d``) redrawn as fresh noise of the same
        topic: the repeat is gone, the topic and every token before ``d`` are kept."""
        noise = self.draw_noise(batch.topic, self.n_ctx, check_generator(generator))
        in_copy = torch.arange(self.n_ctx)[None] >= batch.dst_start[:, None]
        return torch.where(in_copy, noise, batch.tokens)

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset (``p_end`` is written only
        where it is not 0)."""
        spec = {"kind": self.kind, **{f: getattr(self, f) for f in self._FIELDS}}
        spec.update({f: getattr(self, f) for f, default in self._OPTIONAL.items() if getattr(self, f) != default})
        return check_json_able(spec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "TopicInductionData":
        """Rebuild from :attr:`spec` (the fields of :attr:`spec` required; ``p_end`` defaults to 0)."""
        if isinstance(spec, dict):
            spec = {**cls._OPTIONAL, **spec}
        return cls(**check_spec(spec, cls.kind, [*cls._FIELDS, *cls._OPTIONAL]))

    def __repr__(self) -> str:
        return (f"TopicInductionData(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, n_topics={self.n_topics}, "
                f"topic_size={self.topic_size}, p_topic={self.p_topic}, p_end={self.p_end})")
