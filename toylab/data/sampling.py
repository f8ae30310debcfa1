"""Random-number helpers shared by the datasets: seeded rule generators and sampling.

Two kinds of randomness are kept apart:

* **rules** (a transition matrix, planted rules) are derived from the dataset's
  ``seed`` through :func:`derive_generator`, a local :class:`torch.Generator`
  (never the global RNG), one independent stream per purpose;
* **samples** use only the generator passed to ``.sample``, so the trainer
  controls the stream.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from toylab.data.spec import check_int


def derive_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, stream)``.

    The seed actually used is ``int(sha256(f"{seed}:{stream}")[:16], 16) mod 2**63``,
    so different purposes (``stream``) draw independent numbers from the same
    dataset seed, and any Python int (also negative) is accepted.
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).hexdigest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(digest[:16], 16) % (2**63))
    return gen


def check_generator(generator: Any) -> torch.Generator:
    """Return ``generator`` if it is a CPU ``torch.Generator``, else raise ``ValueError``."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
            f"got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(f"generator must live on the CPU, got device {generator.device}")
    return generator


def check_batch_size(batch_size: Any) -> int:
    """Return ``batch_size`` if it is an int >= 1."""
    return check_int("batch_size", batch_size, minimum=1)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one index per row of ``probs`` by inverting the cumulative distribution.

    Args:
        probs: ``[batch, V]`` non-negative float64 rows (each with positive sum).
        generator: the only source of randomness.

    Returns:
        ``[batch]`` LongTensor: index ``k`` with probability ``probs[i, k] / probs[i].sum()``.

    Rule: ``u ~ U[0, 1)`` and ``k = min{k : F_k > u}`` with ``F = cumsum(p) / sum(p)``;
    since ``F`` ends in exactly 1.0, ``k`` is always defined, and an index with
    ``p_k = 0`` (``F_k = F_{k-1}``) is never chosen.
    """
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    cdf = cdf / cdf[..., -1:]
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)

