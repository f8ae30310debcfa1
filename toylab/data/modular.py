"""Modular addition ``a + b mod p``: the task on which small transformers grok.

Every pair ``(a, b)`` of residues mod a prime ``p`` is one example. A model reads the
three tokens ``[a, b, =]`` (``=`` is token ``p``, so ``d_vocab = p + 1``) and must
answer ``c = (a + b) mod p`` at the ``=`` position. There is no BOS token: unlike the
other languages in :mod:`toylab.data`, position 0 holds the ordinary token ``a``.

The truth is the rule itself; :meth:`ModularAddition.answer` computes it for any
tokens. The seeded split into training and test pairs is the only randomness.
"""

from __future__ import annotations

from typing import Any

import torch

from toylab.data.sampling import check_batch_size, check_generator, derive_generator
from toylab.data.spec import check_int, check_json_able, check_seed, check_spec


def is_prime(n: int) -> bool:
    """``True`` iff the int ``n`` is a prime (trial division; ``n`` here is small)."""
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


class ModularAddition:
    """All ``p^2`` pairs ``(a, b)``, their answers ``(a + b) mod p``, and a seeded split.

    Grid order: example ``i`` is the pair ``a = i // p``, ``b = i % p``, so
    ``answers.reshape(p, p)[a, b] = (a + b) mod p``. The training set is the first
    ``n_train = round(train_frac * p^2)`` entries of a random permutation of the ``p^2``
    examples (drawn from ``seed``); the test set is the rest, so the two are disjoint and
    together cover the grid.

    Attributes:
        p: the prime modulus; ``d_vocab = p + 1``, ``n_ctx = 3``, ``equals_token = p``.
        tokens: ``[p^2, 3]`` LongTensor, row ``i`` is ``[a, b, p]``.
        answers: ``[p^2]`` LongTensor, ``(a + b) mod p``.
        train_idx, test_idx: ``[n_train]`` and ``[p^2 - n_train]`` LongTensors of grid
            indices, each sorted ascending.
        fresh_test_idx: the test pairs ``(a, b)`` whose swap ``(b, a)`` is a test pair too
            (sorted). Addition commutes, so a model that only memorised the training pairs
            and reads ``a`` and ``b`` alike already answers many test pairs whose swap it
            saw; on the fresh ones, memorising alone is at chance.
    """

    kind = "modular_addition"
    n_ctx = 3

    def __init__(self, *, p: int = 59, train_frac: float = 0.3, seed: int = 0) -> None:
        self.p = check_int("p", p, minimum=3)
        if not is_prime(self.p):
            raise ValueError(f"p must be a prime (the Fourier analysis of Z_p needs a field), got {self.p}")
        if isinstance(train_frac, bool) or not isinstance(train_frac, (int, float)) \
                or not (0.0 < float(train_frac) < 1.0):  # also rejects NaN
            raise ValueError(f"train_frac must be a fraction strictly between 0 and 1, "
                             f"got {train_frac!r} ({type(train_frac).__name__})")
        self.train_frac = float(train_frac)
        self.seed = check_seed(seed)
        n = self.p * self.p
        self.n_train = int(round(self.train_frac * n))
        if not (1 <= self.n_train <= n - 1):
            raise ValueError(f"train_frac = {self.train_frac} leaves {self.n_train} of the {n} pairs "
                             f"for training; both the training and the test set need at least one pair")
        grid = torch.arange(n)
        a, b = grid // self.p, grid % self.p
        self.tokens = torch.stack([a, b, torch.full_like(a, self.p)], dim=1)
        self.answers = (a + b) % self.p
        perm = torch.randperm(n, generator=derive_generator(self.seed, "modular_split"))
        self.train_idx = perm[:self.n_train].sort().values
        self.test_idx = perm[self.n_train:].sort().values
        in_test = torch.zeros(n, dtype=torch.bool)
        in_test[self.test_idx] = True
        swap = b * self.p + a
        self.fresh_test_idx = self.test_idx[in_test[swap[self.test_idx]]]

    @property
    def d_vocab(self) -> int:
        """``p + 1``: the residues ``0..p-1`` and the ``=`` token ``p``."""
        return self.p + 1

    @property
    def equals_token(self) -> int:
        """The ``=`` token, ``p``."""
        return self.p

    # ------------------------------------------------------------------ truth
    def answer(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rule: ``[batch]`` answers ``(a + b) mod p`` for ``[batch, 3]`` tokens ``[a, b, =]``.

        Raises:
            ValueError: if ``tokens`` is not an integer ``[batch, 3]`` tensor whose first two
                columns are residues ``0..p-1`` and whose last column is the ``=`` token.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point \
                or tokens.dtype == torch.bool or tokens.dtype.is_complex:
            got = (f"a tensor of dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor)
                   else type(tokens).__name__)
            raise ValueError(f"tokens must be an integer torch.Tensor [batch, 3], got {got}")
        if tokens.ndim != 2 or tokens.shape[1] != 3:
            raise ValueError(f"tokens must have shape [batch, 3] ([a, b, =]), got {list(tokens.shape)}")
        ab = tokens[:, :2]
        if ((ab < 0) | (ab >= self.p)).any():
            raise ValueError(f"tokens[:, :2] must be residues 0..{self.p - 1}")
        if (tokens[:, 2] != self.p).any():
            raise ValueError(f"tokens[:, 2] must be the '=' token {self.p}")
        return (ab[:, 0] + ab[:, 1]) % self.p

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [n, 3], answers [n])`` of ``name``: ``"train"``, ``"test"``, ``"fresh_test"``
        (see :attr:`fresh_test_idx`) or ``"all"``."""
        if name == "all":
            return self.tokens.clone(), self.answers.clone()
        idx = {"train": self.train_idx, "test": self.test_idx, "fresh_test": self.fresh_test_idx}.get(name)
        if idx is None:
            raise ValueError(f"split name must be 'train', 'test', 'fresh_test' or 'all', got {name!r}")
        return self.tokens[idx], self.answers[idx]

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, 3]`` training pairs drawn uniformly with replacement; uses only
        ``generator``. Their answers are :meth:`answer` of the result. (Grokking trains
        full-batch on :meth:`split` ``("train")``; this is the lab's common dataset interface.)"""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        pick = torch.randint(self.n_train, (batch_size,), generator=generator)
        return self.tokens[self.train_idx[pick]]

    # ------------------------------------------------------------------- spec
    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset and its split."""
        return check_json_able({"kind": self.kind, "p": self.p, "train_frac": self.train_frac,
                                "seed": self.seed})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ModularAddition":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, ["p", "train_frac", "seed"]))

    def __repr__(self) -> str:
        return f"ModularAddition(p={self.p}, train_frac={self.train_frac}, seed={self.seed})"
