"""Natural text with planted repeats: induction on natural-looking sequences."""

from __future__ import annotations

from typing import Any

import torch

from toylab.data.induction import InductionBatch, copy_random_segment
from toylab.data.sampling import check_batch_size, check_generator
from toylab.data.spec import check_int, check_probability
from toylab.data.text import TextData


class TextWithRepeatsData(TextData):
    """Windows of the docstring corpus in which a random segment is copied later.

    Each sequence is a :class:`~toylab.data.text.TextData` window
    ``[BOS, c_1, ..., c_{n_ctx-1}]`` to which the rule of
    :class:`~toylab.data.induction.InductionData` is applied: with probability
    ``p_repeat``, ``x_p := x_{p-(d-s)}`` for ``d <= p < d + L`` with
    ``L ~ Uniform{min_len..max_len}`` and ``(s, d)`` uniform over
    ``1 <= s, s + L <= d, d + L <= n_ctx``. :meth:`sample_with_truth` marks
    the planted positions ``d < p < d + L`` (natural repeats of the text are not
    marked).
    """

    kind = "text_repeats"
    _FIELDS = ("n_ctx", "seed", "min_len", "max_len", "p_repeat")

    def __init__(self, *, n_ctx: int = 64, seed: int = 0, min_len: int = 8,
                 max_len: int = 24, p_repeat: float = 0.5) -> None:
        n_ctx = check_int("n_ctx", n_ctx, minimum=2)
        self.min_len = check_int("min_len", min_len, minimum=2)
        self.max_len = check_int("max_len", max_len, minimum=self.min_len)
        self.p_repeat = check_probability("p_repeat", p_repeat)
        if n_ctx < 1 + 2 * self.max_len:
            raise ValueError(
                f"n_ctx must be >= 1 + 2 * max_len = {1 + 2 * self.max_len} to fit BOS, a "
                f"segment and its copy, got n_ctx={n_ctx}"
            )
        super().__init__(n_ctx=n_ctx, seed=seed)

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "min_len": self.min_len, "max_len": self.max_len,
                "p_repeat": self.p_repeat}

    def sample_batch(self, batch_size: int, generator: torch.Generator,
                     split: str = "train") -> InductionBatch:
        """A batch of windows from ``split`` with planted copies and their ground truth."""
        windows = super().sample(check_batch_size(batch_size), check_generator(generator), split)
        return copy_random_segment(windows, self.min_len, self.max_len, self.p_repeat, generator)

    def sample_with_truth(self, batch_size: int, generator: torch.Generator,
                          split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [b, n_ctx] long, is_repeat [b, n_ctx] bool)``; same stream as :meth:`sample`."""
        batch = self.sample_batch(batch_size, generator, split)
        return batch.tokens, batch.is_repeat

    def sample(self, batch_size: int, generator: torch.Generator,
               split: str = "train") -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor; uses only ``generator``."""
        return self.sample_batch(batch_size, generator, split).tokens

    def __repr__(self) -> str:
        return (f"TextWithRepeatsData(n_ctx={self.n_ctx}, min_len={self.min_len}, "
                f"max_len={self.max_len}, p_repeat={self.p_repeat}, corpus={self.fingerprint})")
