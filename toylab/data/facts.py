"""A fact-table language: subjects are always followed by their planted attribute.

A key-value memory task for models with MLPs (Geva et al. 2021 read an MLP layer as
keys matched against the input and values written to the output). The language
plants a table ``attribute_of[s]`` (subject token -> attribute token) with more
subjects than a small model's residual stream has dimensions, so that the facts
cannot each get a direction of their own and must share neurons. The truth is the
table.

Vocabulary (``V = 1 + n_subjects + n_attributes + n_filler``)::

    0                                   BOS
    1 .. S                              subjects      (S = n_subjects)
    S+1 .. S+A                          attributes    (A = n_attributes)
    S+A+1 .. V-1                        filler        (F = n_filler)

Generating rule: ``x_0 = BOS`` and, for ``t = 1 .. n_ctx - 1``::

    if x_{t-1} is a subject s:           x_t = attribute_of[s]
    elif t < n_ctx - 1:                  x_t ~ p_fact * Uniform(subjects) + (1 - p_fact) * Uniform(filler)
    else:                                x_t ~ Uniform(filler)        (a subject never starts at the end)

so a sequence is filler with fact pairs ``subject, attribute`` in it, and the token
after a subject is always the table's. The table (from ``seed``) is balanced: a
random permutation of ``[s mod A for s in 0..S-1]``, so every attribute belongs to
``S // A`` or ``S // A + 1`` subjects.
"""

from __future__ import annotations

from typing import Any

import torch

from toylab.data.bigram import BOS
from toylab.data.sampling import check_batch_size, check_generator, derive_generator
from toylab.data.spec import check_int, check_json_able, check_probability, check_seed, check_spec


class FactLanguage:
    """Filler tokens with planted fact pairs ``subject -> attribute_of[subject]`` (module docstring).

    Attributes:
        subjects: ``[S]`` LongTensor, the subject tokens ``1..S``.
        attributes: ``[A]`` LongTensor, the attribute tokens ``S+1..S+A``.
        filler: ``[F]`` LongTensor, the filler tokens.
        attribute_of: ``[S]`` LongTensor, the attribute token of subject ``subjects[i]`` (the truth).
        table: ``{subject token: attribute token}``, the same table as a dict.
    """

    kind = "facts"

    def __init__(self, *, n_subjects: int = 96, n_attributes: int = 16, n_filler: int = 15,
                 n_ctx: int = 16, seed: int = 0, p_fact: float = 0.5) -> None:
        self.n_subjects = check_int("n_subjects", n_subjects, minimum=1)
        self.n_attributes = check_int("n_attributes", n_attributes, minimum=1)
        self.n_filler = check_int("n_filler", n_filler, minimum=1)
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=3)
        self.seed = check_seed(seed)
        self.p_fact = check_probability("p_fact", p_fact)
        if self.p_fact == 0.0:
            raise ValueError("p_fact must be > 0: with p_fact = 0 no subject (and so no fact) is ever sampled")
        if self.n_attributes > self.n_subjects:
            raise ValueError(f"n_attributes must be <= n_subjects (every attribute belongs to a subject), "
                             f"got n_attributes={self.n_attributes} > n_subjects={self.n_subjects}")
        S, A = self.n_subjects, self.n_attributes
        self.d_vocab = 1 + S + A + self.n_filler
        self.subjects = torch.arange(1, S + 1)
        self.attributes = torch.arange(S + 1, S + A + 1)
        self.filler = torch.arange(S + A + 1, self.d_vocab)
        gen = derive_generator(self.seed, "facts_table")
        order = torch.randperm(S, generator=gen)
        self.attribute_of = self.attributes[(torch.arange(S) % A)[order]]
        self.table: dict[int, int] = dict(zip(self.subjects.tolist(), self.attribute_of.tolist()))
        # token -> attribute token for subjects, -1 for every other token
        self._next = torch.full((self.d_vocab,), -1, dtype=torch.long)
        self._next[self.subjects] = self.attribute_of

    # ------------------------------------------------------------ the truth
    def is_subject(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bool tensor of ``tokens``' shape: which tokens are subjects."""
        return (tokens >= 1) & (tokens <= self.n_subjects)

    def fact_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n]`` bool: positions ``t < n - 1`` holding a subject, where the next token
        is that subject's attribute (the positions where a model recalls a fact)."""
        tokens = self.check_tokens(tokens)
        mask = self.is_subject(tokens)
        mask[:, -1] = False
        return mask

    def subject_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tensor of ``tokens``' shape: the fact index ``s - 1`` of a subject token ``s``, ``-1`` elsewhere."""
        return torch.where(self.is_subject(tokens), tokens - 1, -1)

    def next_token_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n, V]`` float64: the exact ``P(x_{t+1} | x_0..x_t)`` at every position ``t``.

        One-hot on ``attribute_of[x_t]`` after a subject; otherwise ``p_fact / S`` on each
        subject and ``(1 - p_fact) / F`` on each filler token when ``t + 1 < n_ctx - 1``, and
        ``1 / F`` on each filler token when ``t + 1 >= n_ctx - 1`` (no subject starts at the
        last position; past the end the same rule is kept).

        Args:
            tokens: ``[batch, n]`` LongTensor starting with BOS, ``n <= n_ctx``.
        """
        tokens = self.check_tokens(tokens)
        b, n = tokens.shape
        S, F = self.n_subjects, self.n_filler
        probs = torch.zeros(b, n, self.d_vocab, dtype=torch.float64)
        open_pos = (torch.arange(n) + 1 < self.n_ctx - 1).view(1, n).expand(b, n)
        probs[..., self.subjects] = torch.where(open_pos, self.p_fact / S, 0.0).unsqueeze(-1).double()
        probs[..., self.filler] = torch.where(open_pos, (1 - self.p_fact) / F, 1.0 / F).unsqueeze(-1).double()
        nxt = self._next[tokens]
        fact = nxt >= 0
        probs[fact] = 0.0
        probs[fact, nxt[fact]] = 1.0
        return probs

    def check_tokens(self, tokens: Any) -> torch.Tensor:
        """``tokens`` if it is a ``[batch, n]`` LongTensor of this language's ids starting with BOS,
        ``n <= n_ctx``; otherwise a ``ValueError`` saying what is wrong."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            raise ValueError("tokens must be a LongTensor [batch, n], got " + (
                f"a tensor of dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__))
        if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape [batch, n] with batch, n >= 1, got {list(tokens.shape)}")
        if tokens.shape[1] > self.n_ctx:
            raise ValueError(f"tokens have {tokens.shape[1]} positions, more than the language's n_ctx={self.n_ctx}")
        if (tokens < 0).any() or (tokens >= self.d_vocab).any():
            raise ValueError(f"tokens must hold token ids in [0, {self.d_vocab - 1}], "
                             f"got min {int(tokens.min())}, max {int(tokens.max())}")
        if (tokens[:, 0] != BOS).any():
            raise ValueError(f"tokens must start with BOS (token {BOS}) at position 0")
        return tokens

    # -------------------------------------------------------------- sampling
    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of sequences (module docstring); uses only ``generator``."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        S, F = self.n_subjects, self.n_filler
        tokens = torch.zeros(batch_size, self.n_ctx, dtype=torch.long)
        for t in range(1, self.n_ctx):
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            subj = self.subjects[torch.randint(0, S, (batch_size,), generator=generator)]
            fill = self.filler[torch.randint(0, F, (batch_size,), generator=generator)]
            fresh = torch.where((u < self.p_fact) & (t < self.n_ctx - 1), subj, fill)
            nxt = self._next[tokens[:, t - 1]]
            tokens[:, t] = torch.where(nxt >= 0, nxt, fresh)
        return tokens

    # ------------------------------------------------------------------ spec
    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``make_dataset(spec)`` rebuilds this dataset."""
        return check_json_able({
            "kind": self.kind, "n_subjects": self.n_subjects, "n_attributes": self.n_attributes,
            "n_filler": self.n_filler, "n_ctx": self.n_ctx, "seed": self.seed, "p_fact": self.p_fact,
        })

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "FactLanguage":
        """Rebuild from :attr:`spec` (all fields required)."""
        return cls(**check_spec(spec, cls.kind, ["n_subjects", "n_attributes", "n_filler", "n_ctx", "seed",
                                                 "p_fact"]))

    def __repr__(self) -> str:
        return (f"FactLanguage(n_subjects={self.n_subjects}, n_attributes={self.n_attributes}, "
                f"n_filler={self.n_filler}, n_ctx={self.n_ctx}, seed={self.seed}, p_fact={self.p_fact})")
