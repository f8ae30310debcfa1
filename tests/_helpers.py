"""Small helpers that several test modules share (imported as ``from _helpers import ...``;
pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import pytest
import torch

from toylab.features.sae import ReluSAE


def identity_sae(d: int) -> ReluSAE:
    """An SAE that reconstructs its input exactly: ``x = ReLU(x) - ReLU(-x)``, latents
    ``relu(x)``, ``relu(-x)`` decoded as ``+x``, ``-x`` (``d_sae = 2 d``)."""
    sae = ReluSAE(d, 2 * d, l1_coefficient=0.0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def randomise_norms_and_biases(model, seed: int = 7):
    """LayerNorm weights (around 1) and every bias (around 0) set to random values, so that
    folding and parity checks have something to fold. Changes ``model`` in place; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_in", "b_out", "b_Q", "b_K", "b_V", "b_U")):
                p.copy_((1.0 if name.endswith(".w") else 0.0) + 0.5 * torch.randn(p.shape, generator=g))
    return model


def raises_a_sentence(case, models=()) -> BaseException:
    """Run a bad-input case ``(id, call, exception type, message regex)``: the call must raise
    that exception with a message that matches, reads as a sentence (no traceback, over 20
    characters) and leaves no hook attached to any of ``models``. Returns the exception."""
    name, fn, exc, match = case
    with pytest.raises(exc, match=match) as info:
        fn()
    message = str(info.value)
    assert "Traceback" not in message and len(message) > 20, message
    print(f"\n{name}: {type(info.value).__name__}: {message}")
    for model in models:
        assert all(not hp.has_hooks for hp in model.hook_dict.values()), f"{name} left a hook attached"
    return info.value
