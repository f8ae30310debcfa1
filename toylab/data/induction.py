"""Induction data: random tokens with a copied segment, and the standard probe batches.

An induction head completes ``[A][B] ... [A] -> [B]``: at a token ``A`` it attends
to the token right after an earlier ``A`` and copies it. Copied segments of random
tokens are the cleanest place to see this, because only induction (not bigram
statistics) can predict them.
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
class InductionBatch:
    """One batch of :class:`InductionData` with its ground truth (all tensors ``[batch, ...]``).

    Attributes:
        tokens: ``[b, n_ctx]`` LongTensor.
        is_repeat: ``[b, n_ctx]`` bool, ``True`` at positions predictable by induction.
        has_repeat: ``[b]`` bool, whether the sequence has a copied segment.
        src_start, dst_start, length: ``[b]`` LongTensors ``s``, ``d``, ``L``
            (meaningful only where ``has_repeat``); the offset is ``d - s``.
        has_bos: ``[b]`` bool, whether the sequence starts with BOS (``None`` where
            every sequence does, e.g. for :func:`copy_random_segment`).
    """

    tokens: torch.Tensor
    is_repeat: torch.Tensor
    has_repeat: torch.Tensor
    src_start: torch.Tensor
    dst_start: torch.Tensor
    length: torch.Tensor
    has_bos: torch.Tensor | None = None

    @property
    def offset(self) -> torch.Tensor:
        """``[b]`` LongTensor ``d - s``: how far back the copy's source lies."""
        return self.dst_start - self.src_start


class InductionData:
    """Random tokens that, from a random point on, repeat themselves at a random offset.

    Generating rule (``V = d_vocab``, ``n = n_ctx``), independently per sequence::

        x_p ~ Uniform{1..V-1}, independently                 for p = 0..n-1
        with probability p_bos:  x_0 := BOS,  f = 1          (f: the first content position)
        otherwise:               f = 0   (x_0 is an ordinary random token)
        with probability p_repeat:
            o ~ Uniform{min_offset..max_offset}               (the offset)
            d = f + o with probability p_periodic             (where the repeat starts:
              ~ Uniform{f+o..n-2} otherwise                    right after its source, or later)
            e = n                  for a periodic repeat       (it runs to the end)
            e = min(n, d + 2 + k), k ~ Geometric(p_end) on {0, 1, ...}, otherwise
                                   (after its second token a non-periodic repeat
                                    stops with probability p_end at each token,
                                    and noise resumes; p_end = 0: e = n)
            x_p := x_{p-o}   for p = d, ..., e-1   (in order, so a short offset
                                                    makes a periodic tail)

    Each part of the mixture is there because a model learns every regularity of
    its data, including the accidental ones:

    * ``p_periodic``: the probe ``[BOS, r, r]`` is the case ``d = f + o``, a
      sequence periodic from its start. If the start ``d`` were always uniform, a
      single earlier match at distance ``o`` would be a true repeat with prior
      about ``1 / (#offsets * #starts)``, less than the chance of a random match
      ``1 / (V-1)``; a calibrated model then waits for several matches before it
      trusts a repeat. Offsets vary between sequences, so a head attending at a
      fixed distance cannot imitate induction, and repeats that run to the end
      make every position sometimes the key an induction head must find.
    * ``p_bos < 1``: if every sequence starts with BOS, position 0 is a constant
      the model leans on (an attention sink, a "nothing seen yet" signal); on
      ``[r, r]`` without BOS, or after a random first token, it is then
      confidently wrong (13 nats on the first copy with ``p_bos = 1``). Sequences
      whose first token is random teach it that position 0 is just a token
      (measured: 5.4 nats at ``p_bos = 0.9``), at a price: the induction heads
      lose their attention sink on those sequences and their induction score on
      ``[BOS, r, r]`` drops from 0.95 to 0.88-0.91, so the lab's presets keep
      ``p_bos = 1`` for now (see :mod:`toylab.training.presets`).
    * ``p_end > 0``: if every repeat runs to the end of the context, a model
      never sees a copy stop and predicts the continuation of a copy with
      near-certainty, even right after a copied segment in the middle of noise
      ends (11–13 nats on the first token after it). Repeats that stop teach it
      that a copy can end, so there its uncertainty is honest (about
      ``ln(V-1) - ln P(stop)``). Only non-periodic repeats stop: a sequence that
      is periodic from its start keeps the probe's format.

    The defaults (``p_bos = 1``, ``p_end = 0``) are the original generator, and
    with them the random stream is the same as before these options existed.

    Ground truth: position ``p`` is *predictable by induction* (``is_repeat``)
    iff ``d < p < e``: then ``x_{p-1}`` occurred at ``p-1-o`` and ``x_p = x_{p-o}``
    is the token right after it. (``p = d`` follows a fresh token and is not
    predictable, nor is ``p = e``, the first fresh token after a repeat that
    stops.) Tokens also repeat by chance (about ``n^2 / 2V`` pairs per
    sequence); those positions are not marked.

    ``seed`` is accepted for the common dataset interface; this language has no
    seed-dependent rules (all randomness comes from the generator passed to
    :meth:`sample`).
    """

    kind = "induction"
    _FIELDS = ("d_vocab", "n_ctx", "seed", "min_offset", "max_offset", "p_repeat", "p_periodic")
    #: fields added later, with the value that reproduces the original generator
    _OPTIONAL = {"p_bos": 1.0, "p_end": 0.0}

    def __init__(self, *, d_vocab: int = 128, n_ctx: int = 32, seed: int = 0,
                 min_offset: int = 2, max_offset: int = 20, p_repeat: float = 1.0,
                 p_periodic: float = 0.5, p_bos: float = 1.0, p_end: float = 0.0) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=2)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=4)
        self.seed = check_seed(seed)
        self.min_offset = check_int("min_offset", min_offset, minimum=1)
        self.max_offset = check_int("max_offset", max_offset, minimum=self.min_offset)
        self.p_repeat = check_probability("p_repeat", p_repeat)
        self.p_periodic = check_probability("p_periodic", p_periodic)
        self.p_bos = check_probability("p_bos", p_bos)
        self.p_end = check_probability("p_end", p_end)
        if self.max_offset > self.n_ctx - 3:
            raise ValueError(
                f"max_offset must be <= n_ctx - 3 = {self.n_ctx - 3} (a repeat needs o fresh tokens "
                f"after BOS and two repeated ones), got max_offset={self.max_offset}"
            )

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> InductionBatch:
        """Sample a batch with its full ground truth (see :class:`InductionBatch`;
        ``length`` is ``e - d``, the copy's source starts at ``d - o``).

        Vectorised: every position's source index is computed at once,
        ``src(p) = d - o + (p - d) mod o`` for ``d <= p < e`` (the first position
        before ``d`` that the chain ``x_p = x_{p-o}`` leads to), then one gather."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        n = self.n_ctx
        tokens = torch.randint(1, self.d_vocab, (batch_size, n), generator=generator, dtype=torch.long)
        has_repeat = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.p_repeat
        offset = torch.randint(self.min_offset, self.max_offset + 1, (batch_size,), generator=generator)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        periodic = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.p_periodic
        if self.p_bos < 1.0:
            bos = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.p_bos
        else:  # the original stream: no draw
            bos = torch.ones(batch_size, dtype=torch.bool)
        first = bos.long()
        dst = first + offset + (u * (n - 1 - first - offset)).long()  # uniform on f+o..n-2
        dst = torch.where(periodic, first + offset, dst)
        dst = torch.where(has_repeat, dst, torch.full_like(dst, n))
        end = torch.full_like(dst, n)
        if self.p_end > 0.0:
            # e - d - 2 ~ Geometric(p_end) on {0, 1, ...}: k = floor(log(U) / log(1 - p_end))
            v = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            if self.p_end < 1.0:
                k = torch.floor(torch.log1p(-v) / math.log1p(-self.p_end)).clamp(0, n).long()
            else:
                k = torch.zeros(batch_size, dtype=torch.long)
            stop_at = dst + 2 + k
            stops = ~periodic & has_repeat & (stop_at < n)
            end = torch.where(stops, stop_at, end)
        tokens[:, 0] = torch.where(bos, torch.full_like(tokens[:, 0], BOS), tokens[:, 0])
        pos = torch.arange(n).unsqueeze(0)
        d, o, e = dst.unsqueeze(1), offset.unsqueeze(1), end.unsqueeze(1)
        in_copy = (pos >= d) & (pos < e)
        source = torch.where(in_copy, d - o + (pos - d).clamp_min(0) % o, pos)
        tokens = tokens.gather(1, source)
        is_repeat = (pos > d) & (pos < e)
        return InductionBatch(tokens=tokens, is_repeat=is_repeat, has_repeat=has_repeat,
                              src_start=dst - offset, dst_start=dst, length=end - dst, has_bos=bos)

    def sample_with_truth(self, batch_size: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [b, n_ctx] long, is_repeat [b, n_ctx] bool)``; same stream as :meth:`sample`."""
        batch = self.sample_batch(batch_size, generator)
        return batch.tokens, batch.is_repeat

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences; uses only ``generator``."""
        return self.sample_batch(batch_size, generator).tokens

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset. The
        optional fields are written only where they differ from the original generator,
        so the spec of an original-generator dataset is unchanged."""
        spec = {
            "kind": self.kind, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx, "seed": self.seed,
            "min_offset": self.min_offset, "max_offset": self.max_offset, "p_repeat": self.p_repeat,
            "p_periodic": self.p_periodic,
        }
        for name, default in self._OPTIONAL.items():
            if getattr(self, name) != default:
                spec[name] = getattr(self, name)
        return check_json_able(spec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "InductionData":
        """Rebuild from :attr:`spec` (the original fields are required; ``p_bos`` and
        ``p_end`` default to the original generator's 1 and 0)."""
        if isinstance(spec, dict):
            spec = {**{k: v for k, v in cls._OPTIONAL.items()}, **spec}
        return cls(**check_spec(spec, cls.kind, [*cls._FIELDS, *cls._OPTIONAL]))

    def __repr__(self) -> str:
        return (f"InductionData(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, "
                f"min_offset={self.min_offset}, max_offset={self.max_offset}, p_repeat={self.p_repeat}, "
                f"p_periodic={self.p_periodic}, p_bos={self.p_bos}, p_end={self.p_end})")


def copy_random_segment(tokens: torch.Tensor, min_len: int, max_len: int, p_repeat: float,
                        generator: torch.Generator) -> InductionBatch:
    """Copy a random segment of each sequence to a random later place (the rule of
    :class:`InductionData`); ``tokens`` ``[b, n]`` is not modified.

    Per sequence, with probability ``p_repeat``: ``L ~ Uniform{min_len..max_len}``,
    ``(s, d)`` uniform over ``1 <= s, s + L <= d, d + L <= n``, and
    ``x_p := x_{p-(d-s)}`` for ``d <= p < d + L``. Needs ``n >= 1 + 2 * max_len``.
    """
    b, n = tokens.shape
    has_repeat = torch.rand(b, generator=generator, dtype=torch.float64) < p_repeat
    length = torch.randint(min_len, max_len + 1, (b,), generator=generator)
    # (a, g) = (s - 1, d - s - L) is uniform over a, g >= 0, a + g <= K = n - 2L - 1:
    # pick two distinct values lo < hi in {0..K+1}; a = lo, g = hi - lo - 1.
    K = n - 2 * length - 1
    x = (torch.rand(b, generator=generator, dtype=torch.float64) * (K + 2)).long()
    y = (torch.rand(b, generator=generator, dtype=torch.float64) * (K + 1)).long()
    y = y + (y >= x).long()
    lo, hi = torch.minimum(x, y), torch.maximum(x, y)
    src_start = 1 + lo
    dst_start = src_start + length + (hi - lo - 1)

    pos = torch.arange(n).unsqueeze(0)
    d, L = dst_start.unsqueeze(1), length.unsqueeze(1)
    in_copy = has_repeat.unsqueeze(1) & (pos >= d) & (pos < d + L)
    source = torch.where(in_copy, pos - (dst_start - src_start).unsqueeze(1), pos)
    copied = tokens.gather(1, source)
    is_repeat = in_copy & (pos > d)
    return InductionBatch(copied, is_repeat, has_repeat, src_start, dst_start, length)


# --------------------------------------------------------------------- probes
def probe_half_len(n_ctx: int) -> int:
    """``half_len`` of the probe ``[BOS, r, r]`` that fills a context of ``n_ctx``: ``(n_ctx - 1) // 2``."""
    return (n_ctx - 1) // 2


def repeated_tokens(d_vocab: int, half_len: int, batch: int,
                    generator: torch.Generator) -> torch.Tensor:
    """The standard induction probe ``[BOS, r, r]``.

    Args:
        d_vocab: vocabulary size ``V``; ``r_i ~ Uniform{1..V-1}``.
        half_len: length of ``r``.
        batch: number of sequences.
        generator: the only source of randomness.

    Returns:
        ``[batch, 1 + 2 * half_len]`` LongTensor ``x`` with ``x_0 = BOS`` and
        ``x_{p + half_len} = x_p`` for ``1 <= p <= half_len``.
    """
    return repeated_tokens_with_gap(d_vocab, half_len, 0, batch, generator)


def repeated_tokens_with_gap(d_vocab: int, half_len: int, gap: int, batch: int,
                             generator: torch.Generator) -> torch.Tensor:
    """The probe ``[BOS, r, g, r]`` with a random filler ``g`` of length ``gap``.

    The repeat sits at offset ``half_len + gap`` rather than ``half_len``, so a
    head that attends by relative position only cannot pass both probes.

    Returns:
        ``[batch, 1 + 2 * half_len + gap]`` LongTensor ``x`` with ``x_0 = BOS``,
        ``x_1..x_{half_len} = r``, then ``gap`` filler tokens, then ``r`` again;
        ``r`` and ``g`` uniform in ``1..V-1``, drawn in that order from ``generator``.
    """
    check_int("d_vocab", d_vocab, minimum=2)
    check_int("half_len", half_len, minimum=1)
    check_int("gap", gap, minimum=0)
    check_int("batch", batch, minimum=1)
    check_generator(generator)
    r = torch.randint(1, d_vocab, (batch, half_len), generator=generator, dtype=torch.long)
    g = torch.randint(1, d_vocab, (batch, gap), generator=generator, dtype=torch.long)
    bos = torch.full((batch, 1), BOS, dtype=torch.long)
    return torch.cat([bos, r, g, r], dim=1)


def induction_targets(half_len: int, gap: int = 0) -> torch.Tensor:
    """Where an ideal induction head attends on :func:`repeated_tokens_with_gap` sequences.

    With offset ``o = half_len + gap``, the second copy occupies positions
    ``p = 1 + o .. o + half_len`` and holds ``x_p = x_{p-o}``; the head at
    destination ``p`` attends to the token *after* the earlier occurrence of
    ``x_p``, i.e. to source ``p - o + 1``, and copies it as its prediction of
    ``x_{p+1}``. (This is the diagonal ``offset = 1 - o`` used by TransformerLens's
    induction score; at the last position the source is the token after the
    first copy, which the head still attends to.)

    Returns:
        ``[1 + 2 * half_len + gap]`` LongTensor ``targets`` with
        ``targets[p] = p - o + 1`` for ``p`` in the second copy and ``-1`` elsewhere.
        Use ``mask = targets >= 0`` and ``pattern[..., mask, targets[mask]]``.
    """
    check_int("half_len", half_len, minimum=1)
    check_int("gap", gap, minimum=0)
    offset = half_len + gap
    seq_len = 1 + 2 * half_len + gap
    targets = torch.full((seq_len,), -1, dtype=torch.long)
    dest = torch.arange(1 + offset, seq_len)
    targets[dest] = dest - offset + 1
    return targets
