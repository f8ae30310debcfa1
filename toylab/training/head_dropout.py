"""Head dropout: every head of the last layer must be able to do its job alone.

``TrainConfig.head_dropout = p``: in each training sequence, with probability ``p``, one
uniformly chosen head of the last layer has its output ``z`` zeroed. The suite's
redundant-paths model (:mod:`toylab.suite.planted`) is trained this way, so that two heads
each learn the whole job. The draws come from their own generator (seeded ``seed + 2``), so
the training batches are those of a run without dropout.
"""

from __future__ import annotations

import torch


def head_dropout_hook(p: float, n_heads: int, generator: torch.Generator):
    """A ``hook_z`` hook (``z [batch, pos, n_heads, d_head]``) that, per sequence, with probability ``p``
    zeroes one uniformly chosen head (``TrainConfig.head_dropout``); returns a new tensor."""
    def fn(z, hook):
        b = z.shape[0]
        drop = torch.rand(b, generator=generator) < p
        which = torch.randint(0, n_heads, (b,), generator=generator)
        keep = torch.ones(b, n_heads, dtype=z.dtype)
        keep[drop, which[drop]] = 0.0
        return z * keep[:, None, :, None]
    return fn


def last_layer_dropout(model_cfg, p: float, seed: int) -> list:
    """The ``(hook name, hook)`` pairs for head dropout with probability ``p`` on the last
    layer's ``hook_z``; empty when ``p`` is 0 or the model has no layers."""
    if not p or not model_cfg.n_layers:
        return []
    gen = torch.Generator().manual_seed(seed + 2)
    return [(f"blocks.{model_cfg.n_layers - 1}.attn.hook_z", head_dropout_hook(p, model_cfg.n_heads, gen))]
