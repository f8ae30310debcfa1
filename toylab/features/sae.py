"""Sparse autoencoders: the shared encoder/decoder, and the ReLU + L1 SAE.

Row-vector notation, as in the rest of the lab. An activation ``x [batch, d_in]``
is first multiplied by a fixed ``input_scale`` ``s`` (a buffer, set once from the
training data so that ``E ||s x||^2 = d_in``; it makes one L1 coefficient mean the
same at every hook point), then::

    f      = ReLU((s x - b_dec) W_enc + b_enc)          [batch, d_sae]   the latents
    x_hat  = (f W_dec + b_dec) / s                      [batch, d_in]

``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (row ``i`` is
latent ``i``'s *decoder direction*: a column of the decoder in the papers'
column-vector notation), ``b_dec [d_in]`` (the "pre-encoder" bias ``b_pre``,
subtracted before encoding and added back after decoding).

The ReLU SAE (Bricken et al. 2023, "Towards Monosemanticity") trains on::

    loss = mean_batch ||s x - s x_hat||^2  +  l1_coefficient * mean_batch sum_i f_i ||W_dec[i]||

with the decoder rows kept at unit norm: before each optimiser step the gradient's
component parallel to each row is removed (:meth:`SparseAutoencoder.project_decoder_grad`),
after it the rows are renormalised (:meth:`SparseAutoencoder.normalize_decoder`).

**The L1 coefficient and Adam.** Adam divides each parameter's step by the running
RMS of its gradient, so multiplying the *whole* loss by a constant changes nothing
(up to Adam's ``eps``). A coefficient is normalised away exactly when it scales
every gradient a parameter receives, e.g. a penalty on parameters that only the
penalty touches, or a loss divided by its own coefficient. Here the encoder gets
gradient from *both* terms, so what Adam sees is the ratio of reconstruction to
sparsity gradient, and ``l1_coefficient`` keeps its meaning: a larger coefficient
gives a smaller L0 (``tests/test_features_sae.py`` checks this, and that scaling
the whole loss does not). Because inputs are rescaled to ``E||s x||^2 = d_in``, the
same coefficient gives comparable sparsity at hooks of different scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toylab.features.checks import (check_device, check_finite, check_generator, check_int, check_number,
                                    check_seed)


def check_activations(x, d_in: int, what: str = "activations", dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """Validate ``x [batch, d_in]``: a non-empty floating tensor with finite values (of
    ``dtype`` and on ``device`` when given, the SAE's own); raise a clear error otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape [batch, {d_in}], got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"{what} must have shape [batch, d_in={d_in}], got {list(x.shape)}: "
                         "the SAE's d_in must match the hook's activation size")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {list(x.shape)})")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{what} have dtype {x.dtype} but the SAE's weights are {dtype}: "
                        f"convert them first (x.to({dtype}))")
    check_device(x, what, device)
    return check_finite(x, what)


def _check_size(name: str, value) -> int:
    return check_int(name, value, minimum=1)


_BASE_ONLY = ("SparseAutoencoder holds only the maps every SAE shares; build a ReluSAE "
              "(toylab.features.sae) or a TopKSAE (toylab.features.topk), which add the nonlinearity and the loss")


class SparseAutoencoder(nn.Module):
    """The parameters and the linear maps every SAE here shares (subclasses add the
    nonlinearity and the loss).

    Args:
        d_in: size of the activations (must match the hook, e.g. ``d_model``).
        d_sae: number of latents (the dictionary size).
        seed: initialisation seed (a private generator). Decoder rows are random
            unit vectors, ``W_enc = W_dec^T`` (tied initialisation), biases zero.
    """

    kind = "base"

    def __init__(self, d_in: int, d_sae: int, seed: int = 0):
        super().__init__()
        self.d_in = _check_size("d_in", d_in)
        self.d_sae = _check_size("d_sae", d_sae)
        g = torch.Generator().manual_seed(check_seed(seed))
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """JSON-able constructor arguments (``type(self)(**config())`` rebuilds it, up to weights)."""
        return {"d_in": self.d_in, "d_sae": self.d_sae}

    # ------------------------------------------------------------------ maps
    def check_input(self, x, what: str = "activations") -> torch.Tensor:
        """``x`` if it is ``[batch, d_in]``, finite, of the SAE's dtype and on its device
        (every map below checks its input with this; NaN and inf are refused, not propagated)."""
        return check_activations(x, self.d_in, what, dtype=self.W_enc.dtype, device=self.W_enc.device)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, d_in]`` -> ``(s x - b_dec) W_enc + b_enc`` ``[batch, d_sae]``."""
        x = self.check_input(x)
        return (x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, d_in]`` -> latents ``f [batch, d_sae]`` (>= 0)."""
        raise NotImplementedError(_BASE_ONLY)

    @torch.no_grad()
    def fired(self, x: torch.Tensor) -> torch.Tensor:
        """``[d_sae]`` bool: the latents active (> 0) on at least one row of ``x [batch, d_in]``."""
        return (self.encode(x) > 0).any(0)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``f [batch, d_sae]`` -> ``x_hat = (f W_dec + b_dec) / s`` ``[batch, d_in]``."""
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[1] != self.d_sae:
            got = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"latents must have shape [batch, d_sae={self.d_sae}], got {got}")
        if f.dtype != self.W_dec.dtype:
            raise TypeError(f"latents have dtype {f.dtype} but the SAE's weights are {self.W_dec.dtype}: "
                            f"convert them first (f.to({self.W_dec.dtype}))")
        check_device(f, "latents", self.W_dec.device)
        check_finite(f, "latents")
        return (f @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x_hat [batch, d_in]``."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``(scalar loss, {term: value})`` on a batch ``x [batch, d_in]``."""
        raise NotImplementedError(_BASE_ONLY)

    def directions(self) -> torch.Tensor:
        """Unit decoder directions ``[d_sae, d_in]`` (a detached copy), the learned dictionary."""
        W = self.W_dec.detach()
        return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def set_input_scale(self, x: torch.Tensor) -> float:
        """Set ``s = sqrt(d_in / mean ||x||^2)`` from training data ``x [N, d_in]``; returns ``s``."""
        x = self.check_input(x)
        ms = float(x.double().pow(2).sum(1).mean())
        if not ms > 0:
            raise ValueError("the activations are all zero: there is nothing for an SAE to reconstruct")
        s = math.sqrt(self.d_in / ms)
        self.input_scale.fill_(s)
        return s

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm: ``W_dec[i] <- W_dec[i] / ||W_dec[i]||``."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from ``W_dec.grad`` its component along each (unit) row:
        ``g_i <- g_i - (g_i . d_i) d_i``, so a step moves along the unit sphere to first order."""
        if self.W_dec.grad is None:
            return
        d = self.directions()
        g = self.W_dec.grad
        g.sub_((g * d).sum(1, keepdim=True) * d)


class ReluSAE(SparseAutoencoder):
    """The ReLU + L1 sparse autoencoder (see the module docstring for the formulas).

    Args:
        d_in, d_sae, seed: as for :class:`SparseAutoencoder`.
        l1_coefficient: ``lambda >= 0``, finite; the weight of the sparsity penalty
            on the rescaled activations (typical values 1e-3 .. 1).
    """

    kind = "relu"

    def __init__(self, d_in: int, d_sae: int, l1_coefficient: float = 0.1, seed: int = 0):
        if isinstance(l1_coefficient, bool) or not isinstance(l1_coefficient, (int, float)) \
                or not math.isfinite(l1_coefficient) or l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be a finite number >= 0, got {l1_coefficient!r}: "
                             "it weighs the sparsity penalty against the reconstruction error")
        super().__init__(d_in, d_sae, seed)
        self.l1_coefficient = float(l1_coefficient)

    def config(self) -> dict:
        return {**super().config(), "l1_coefficient": self.l1_coefficient}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``f = ReLU((s x - b_dec) W_enc + b_enc)`` ``[batch, d_sae]``."""
        return torch.relu(self.pre_acts(x))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``mean ||s x - s x_hat||^2 + lambda mean sum_i f_i ||W_dec[i]||``."""
        f = self.encode(x)
        recon = f @ self.W_dec + self.b_dec  # in rescaled units
        mse = (recon - x * self.input_scale).pow(2).sum(1).mean()
        l1 = (f * self.W_dec.norm(dim=1)).sum(1).mean()
        total = mse + self.l1_coefficient * l1
        return total, {"mse": float(mse.detach()), "l1": float(l1.detach()), "l0": float((f > 0).float().sum(1).mean())}


@torch.no_grad()
def resample_dead_latents(sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor,
                          generator: torch.Generator, optimizer: torch.optim.Optimizer | None = None,
                          encoder_scale: float = 0.2) -> int:
    """Re-initialise dead latents on inputs the SAE reconstructs badly (Bricken et al. 2023).

    For each dead latent ``i`` (``dead [d_sae]`` bool): draw an input ``x_j`` from
    ``x [N, d_in]`` with probability ``∝ ||s x_j - s x_hat_j||^2``, set
    ``W_dec[i] = r / ||r||`` with ``r = s x_j - s x_hat_j`` (the residual it should
    explain), ``W_enc[:, i] = encoder_scale * mean_alive ||W_enc[:, a]|| * W_dec[i]``,
    ``b_enc[i] = 0``, and zero the optimiser's moments for those entries.
    Returns the number of latents resampled.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    if not isinstance(dead, torch.Tensor) or dead.dtype != torch.bool or dead.shape != (sae.d_sae,):
        raise ValueError(f"dead must be a bool tensor of shape [{sae.d_sae}]")
    check_generator(generator)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be None or a torch.optim.Optimizer, got {type(optimizer).__name__}")
    encoder_scale = check_number("encoder_scale", encoder_scale, positive=True,
                                 meaning="it scales the new encoder columns relative to the live ones")
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    x = sae.check_input(x, "x")
    resid = x * sae.input_scale - (sae.decode(sae.encode(x)) * sae.input_scale)
    weight = resid.pow(2).sum(1).double()
    if not float(weight.sum()) > 0:
        return 0
    idx = torch.multinomial(weight, n_dead, replacement=True, generator=generator)
    new_dirs = resid[idx]
    new_dirs = new_dirs / new_dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    cols = torch.nonzero(dead).squeeze(1)
    sae.W_dec[cols] = new_dirs
    sae.W_enc[:, cols] = (encoder_scale * enc_norm * new_dirs).T
    sae.b_enc[cols] = 0.0
    if optimizer is not None:
        for p, sl in ((sae.W_dec, (cols,)), (sae.W_enc, (slice(None), cols)), (sae.b_enc, (cols,))):
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][sl] = 0.0
    return n_dead
