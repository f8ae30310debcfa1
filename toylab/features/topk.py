"""The TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Same maps as :class:`toylab.features.sae.SparseAutoencoder`, but the nonlinearity
keeps only the ``k`` largest pre-activations of each input::

    f = TopK_k(ReLU((s x - b_dec) W_enc + b_enc))              [batch, d_sae], at most k nonzero

so L0 <= k is set directly, with no L1 penalty (and no shrinkage of the kept
activations). Loss, in rescaled units (``e = s x - s x_hat`` the residual)::

    loss = mean ||e||^2  +  aux_coefficient * mean ||e - e_hat||^2
    e_hat = TopK_{k_aux}(pre_acts restricted to dead latents) W_dec      (no b_dec)

The second term (AuxK) asks the *dead* latents (those that did not fire in the
last ``dead_after`` training batches; the trainer tracks them in
``steps_since_fired``) to explain what the live ones miss, which gives them
gradient and revives them. Gao et al. use ``k_aux = d_in / 2`` and
``aux_coefficient = 1/32``.
"""

from __future__ import annotations

import math

import torch

from toylab.features.checks import as_int
from toylab.features.sae import SparseAutoencoder, _check_size


class TopKSAE(SparseAutoencoder):
    """TopK SAE with the AuxK dead-latent loss.

    Args:
        d_in, d_sae, seed: as for :class:`SparseAutoencoder`.
        k: latents kept per input, ``1 <= k <= d_sae``.
        k_aux: dead latents used by the auxiliary loss, ``1 <= k_aux <= d_sae`` (default
            ``d_in // 2``, lowered to ``d_sae`` when larger).
        aux_coefficient: weight of the AuxK term, finite and >= 0.
        dead_after: a latent is dead after this many training batches without firing.
    """

    kind = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 1, k_aux: int | None = None,
                 aux_coefficient: float = 1 / 32, dead_after: int = 50, seed: int = 0):
        d_sae = _check_size("d_sae", d_sae)
        k, k_aux = as_int(k), as_int(k_aux)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"k must be an integer with 1 <= k <= d_sae = {d_sae}, got {k!r}: "
                             "it is the number of latents kept per input (the L0)")
        if k_aux is None:
            k_aux = max(1, d_in // 2) if isinstance(d_in, int) else 1
        elif isinstance(k_aux, bool) or not isinstance(k_aux, int) or not 1 <= k_aux <= d_sae:
            raise ValueError(f"k_aux must be an integer with 1 <= k_aux <= d_sae = {d_sae}, got {k_aux!r}: "
                             "it is the number of dead latents the AuxK loss may use per input")
        if isinstance(aux_coefficient, bool) or not isinstance(aux_coefficient, (int, float)) \
                or not math.isfinite(aux_coefficient) or aux_coefficient < 0:
            raise ValueError(f"aux_coefficient must be a finite number >= 0, got {aux_coefficient!r}")
        super().__init__(d_in, d_sae, seed)
        self.k, self.k_aux = k, min(k_aux, d_sae)
        self.aux_coefficient = float(aux_coefficient)
        self.dead_after = _check_size("dead_after", dead_after)
        self.register_buffer("steps_since_fired", torch.zeros(d_sae, dtype=torch.long))

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "k_aux": self.k_aux,
                "aux_coefficient": self.aux_coefficient, "dead_after": self.dead_after}

    @staticmethod
    def _topk_with_indices(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f, vals, idx)``: ``f`` keeps the ``k`` largest entries of each row (then ReLU)
        and zeroes the rest; ``vals, idx = pre.topk(k)`` are what it kept and where."""
        vals, idx = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals)), vals, idx

    @staticmethod
    def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
        """Keep the ``k`` largest entries of each row (then ReLU), zero the rest."""
        return TopKSAE._topk_with_indices(pre, k)[0]

    @staticmethod
    def _fired(vals: torch.Tensor, idx: torch.Tensor, d_sae: int) -> torch.Tensor:
        """``[d_sae]`` bool from ``pre.topk(k)``'s values and indices: the latents that are
        positive for some row (``(encode(x) > 0).any(0)``, without the dense ``[batch, d_sae]``)."""
        fired = torch.zeros(d_sae, dtype=torch.bool)
        fired[idx[vals > 0]] = True
        return fired

    @torch.no_grad()
    def fired(self, x: torch.Tensor) -> torch.Tensor:
        """``[d_sae]`` bool: the latents active on at least one row of ``x [batch, d_in]``."""
        vals, idx = self.pre_acts(x).topk(self.k, dim=1)
        return self._fired(vals, idx, self.d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``f = TopK_k(ReLU(pre_acts(x)))`` ``[batch, d_sae]``."""
        return self._topk(self.pre_acts(x), self.k)

    @property
    def dead(self) -> torch.Tensor:
        """``[d_sae]`` bool: latents that did not fire in the last ``dead_after`` training batches."""
        return self.steps_since_fired >= self.dead_after

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``mean ||e||^2 + aux_coefficient * mean ||e - e_hat||^2`` (see the module docstring).
        Also updates ``steps_since_fired`` when the module is in training mode."""
        pre = self.pre_acts(x)
        f, vals, idx = self._topk_with_indices(pre, self.k)
        target = x * self.input_scale
        recon = f @ self.W_dec + self.b_dec
        resid = target - recon
        mse = resid.pow(2).sum(1).mean()
        total = mse
        aux = torch.zeros(())
        if self.training:
            with torch.no_grad():
                self.steps_since_fired.add_(1).masked_fill_(self._fired(vals, idx, self.d_sae), 0)
        dead = self.dead
        n_dead = int(dead.sum())
        if n_dead > 0 and self.aux_coefficient > 0:
            pre_dead = pre.masked_fill(~dead, float("-inf"))
            f_aux = self._topk(pre_dead, min(self.k_aux, n_dead)).nan_to_num(0.0)
            e_hat = f_aux @ self.W_dec
            aux = (resid.detach() - e_hat).pow(2).sum(1).mean()
            total = total + self.aux_coefficient * aux
        return total, {"mse": float(mse.detach()), "aux": float(aux.detach()), "dead": float(n_dead),
                       "l0": float((vals.detach() > 0).float().sum(1).mean())}
