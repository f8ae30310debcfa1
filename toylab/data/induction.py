"""Induction data: random tokens with a copied segment, and the standard probe batches.

An induction head completes ``[A][B] ... [A] -> [B]``: at a token ``A`` it attends
to the token right after an earlier ``A`` and copies it. Copied segments of random
tokens are the cleanest place to see this, because only induction (not bigram
statistics) can predict them.
"""

from __future__ import annotations

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
    """

    tokens: torch.Tensor
    is_repeat: torch.Tensor
    has_repeat: torch.Tensor
    src_start: torch.Tensor
    dst_start: torch.Tensor
    length: torch.Tensor

    @property
    def offset(self) -> torch.Tensor:
        """``[b]`` LongTensor ``d - s``: how far back the copy's source lies."""
        return self.dst_start - self.src_start


class InductionData:
    """Random tokens that, from a random point on, repeat themselves at a random offset.

    Generating rule (``V = d_vocab``, ``n = n_ctx``)::

        x_0 = BOS,  x_p ~ Uniform{1..V-1}, independently     for p = 1..n-1
        with probability p_repeat:
            o ~ Uniform{min_offset..max_offset}               (the offset)
            d = o + 1 with probability p_periodic             (where the repeat starts:
              ~ Uniform{o+1..n-2} otherwise                    right after its source, or later)
            x_p := x_{p-o}   for p = d, d+1, ..., n-1  (in order, so a short offset
                                                        makes a periodic tail)

    The probe ``[BOS, r, r]`` is the case ``o = d - 1 = len(r)``: a sequence that
    is periodic from the start. Why ``p_periodic``: if the start ``d`` were always
    uniform, a single earlier match at distance ``o`` would be a true repeat with
    prior about ``1 / (#offsets * #starts)``, less than the chance of a random
    match ``1 / (V-1)``; a calibrated model then waits for several matches before
    it trusts a repeat, and the first tokens of a repeat stay uncertain. Offsets vary
    between sequences, so a head attending at a fixed distance cannot imitate
    induction, and the repeat runs to the end of the sequence, so tokens at
    *every* position are sometimes the ones an induction head must find (with a
    copied segment in the middle, keys late in the context never are, and the
    previous-token head learns to ignore late positions).

    Ground truth: position ``p`` is *predictable by induction* (``is_repeat``)
    iff ``p > d``: then ``x_{p-1}`` occurred at ``p-1-o`` and ``x_p = x_{p-o}``
    is the token right after it. (``p = d`` follows a fresh token and is not
    predictable.) Tokens also repeat by chance (about ``n^2 / 2V`` pairs per
    sequence); those positions are not marked.

    ``seed`` is accepted for the common dataset interface; this language has no
    seed-dependent rules (all randomness comes from the generator passed to
    :meth:`sample`).
    """

    kind = "induction"

    def __init__(self, *, d_vocab: int = 128, n_ctx: int = 32, seed: int = 0,
                 min_offset: int = 2, max_offset: int = 20, p_repeat: float = 1.0,
                 p_periodic: float = 0.5) -> None:
        self.d_vocab = check_int("d_vocab", d_vocab, minimum=2)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=4)
        self.seed = check_seed(seed)
        self.min_offset = check_int("min_offset", min_offset, minimum=1)
        self.max_offset = check_int("max_offset", max_offset, minimum=self.min_offset)
        self.p_repeat = check_probability("p_repeat", p_repeat)
        self.p_periodic = check_probability("p_periodic", p_periodic)
        if self.max_offset > self.n_ctx - 3:
            raise ValueError(
                f"max_offset must be <= n_ctx - 3 = {self.n_ctx - 3} (a repeat needs o fresh tokens "
                f"after BOS and two repeated ones), got max_offset={self.max_offset}"
            )

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> InductionBatch:
        """Sample a batch with its full ground truth (see :class:`InductionBatch`;
        ``length`` is ``n_ctx - d``, the copy's source starts at ``d - o``)."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        n = self.n_ctx
        tokens = torch.randint(1, self.d_vocab, (batch_size, n), generator=generator, dtype=torch.long)
        tokens[:, 0] = BOS
        has_repeat = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.p_repeat
        offset = torch.randint(self.min_offset, self.max_offset + 1, (batch_size,), generator=generator)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        dst = offset + 1 + (u * (n - 2 - offset)).long()  # uniform on o+1..n-2
        periodic = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.p_periodic
        dst = torch.where(periodic, offset + 1, dst)
        dst = torch.where(has_repeat, dst, torch.full_like(dst, n))
        rows = torch.arange(batch_size)
        for p in range(2, n):
            on = rows[dst <= p]
            tokens[on, p] = tokens[on, p - offset[on]]
        positions = torch.arange(n)
        is_repeat = positions[None, :] > dst[:, None]
        return InductionBatch(tokens=tokens, is_repeat=is_repeat, has_repeat=has_repeat,
                              src_start=dst - offset, dst_start=dst, length=n - dst)

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
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({
            "kind": self.kind, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx, "seed": self.seed,
            "min_offset": self.min_offset, "max_offset": self.max_offset, "p_repeat": self.p_repeat,
            "p_periodic": self.p_periodic,
        })

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "InductionData":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, ["d_vocab", "n_ctx", "seed", "min_offset",
                                                 "max_offset", "p_repeat", "p_periodic"]))

    def __repr__(self) -> str:
        return (f"InductionData(d_vocab={self.d_vocab}, n_ctx={self.n_ctx}, "
                f"min_offset={self.min_offset}, max_offset={self.max_offset}, p_repeat={self.p_repeat}, "
                f"p_periodic={self.p_periodic})")


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
