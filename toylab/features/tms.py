"""Toy Models of Superposition (Elhage et al. 2022), and a planted-feature data source.

**The ReLU output model.** ``n`` features ``x in [0, 1]^n`` are compressed into
``m < n`` hidden dimensions and read back out::

    h  = W x            W [m, n]: column W_i is feature i's direction
    x' = ReLU(W^T h + b) = ReLU(W^T W x + b)

trained on ``L = E_x sum_i I_i (x_i - x'_i)^2`` with importances ``I_i``. Each
feature is 0 with probability ``S`` (the *sparsity*) and ``Uniform[0, 1]`` otherwise
(density ``p = 1 - S``). :class:`ToyModel` holds ``n_instances`` independent models
(``W [n_instances, m, n]``), each with its own importances and densities, so one
training run sweeps many sparsities.

**Dimensions per feature** ``m / ||W||_F^2`` (one instance): ``||W||_F^2`` counts the
features represented (a unit column counts 1), so 1 means a dedicated dimension each,
1/2 antipodal pairs, 2/5 the pentagon of 5 features in 2 dimensions.

**The phase diagram** (:func:`phase_losses`): 2 features in 1 dimension, feature 1
with importance 1, the extra feature 2 with relative importance ``r``, both with
density ``p``. The three regimes and their losses (``x ~ U[0,1]`` when present:
``E x = 1/2``, ``E x^2 = 1/3``, so a feature left to the bias costs its variance
``I (p/3 - p^2/4)``, the bias being its mean ``p/2``):

- ``"not_represented"`` (``W = [1, 0]``): ``L = r (p/3 - p^2/4)``;
- ``"dedicated"`` (``W = [0, 1]``, the extra feature takes the dimension): ``L = p/3 - p^2/4``;
- ``"superposed"`` (``W = [w_1, -w_2]``, antipodal): no closed form; with ``w_1 = w_2 = 1``,
  ``b = 0`` a lone feature is reconstructed exactly (the other output is ``ReLU(-x) = 0``)
  and only co-occurrence (probability ``p^2``) costs, so superposition wins as ``p -> 0``.
  Its loss is the exact expectation over the four co-occurrence cases, evaluated by
  midpoint quadrature on ``[0,1]^2`` and minimised over ``(w_1, w_2, b_1, b_2)``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from toylab.features.checks import (check_bool, check_device, check_finite, check_generator, check_int,
                                    check_number, check_seed, check_tensor)
from toylab.training.allocator import reuse_freed_memory
from toylab.training.optim import Adam
from toylab.training.progress import Progress

REGIMES = ("not_represented", "dedicated", "superposed")


def _per_instance(name: str, value, n_instances: int, n_features: int, lo: float, hi: float) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        check_device(value, name)
    try:
        t = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or a tensor (or nested list) of numbers, "
                         f"got {type(value).__name__}") from None
    if t.ndim == 1 and t.shape[0] == n_instances and n_instances != n_features:
        t = t[:, None]
    try:
        t = t.expand(n_instances, n_features).clone()
    except RuntimeError:
        raise ValueError(f"{name} must be a scalar, [n_features={n_features}], [n_instances={n_instances}] "
                         f"or [n_instances, n_features], got shape {list(t.shape)}") from None
    check_finite(t, name)
    if not bool(((t >= lo) & (t <= hi)).all()):
        raise ValueError(f"{name} must lie in [{lo}, {hi}]")
    return t


class ToyModel(nn.Module):
    """``n_instances`` ReLU output models ``x' = ReLU(W^T W x + b)`` trained side by side.

    Args:
        n_features, n_hidden: ``n`` and ``m``.
        n_instances: independent copies (each its own W, b, importance, density).
        importance: ``I``: scalar, ``[n_features]``, ``[n_instances]`` or ``[n_instances, n_features]``, >= 0.
        feature_probability: density ``p = 1 - S``, same shapes, in ``[0, 1]``.
        seed: initialisation (Xavier-normal ``W``, zero ``b``) from a private generator.

    Parameters ``W [n_instances, n_hidden, n_features]``, ``b [n_instances, n_features]``.
    """

    def __init__(self, n_features: int, n_hidden: int, n_instances: int = 1, importance=1.0,
                 feature_probability=1.0, seed: int = 0):
        super().__init__()
        n_features, n_hidden, n_instances = (check_int(name, v, minimum=1) for name, v in (
            ("n_features", n_features), ("n_hidden", n_hidden), ("n_instances", n_instances)))
        self.n_features, self.n_hidden, self.n_instances = n_features, n_hidden, n_instances
        self.register_buffer("importance", _per_instance("importance", importance, n_instances, n_features,
                                                         0.0, math.inf))  # finite: checked inside
        self.register_buffer("feature_probability", _per_instance("feature_probability", feature_probability,
                                                                  n_instances, n_features, 0.0, 1.0))
        g = torch.Generator().manual_seed(check_seed(seed))
        std = math.sqrt(2.0 / (n_features + n_hidden))
        self.W = nn.Parameter(torch.randn(n_instances, n_hidden, n_features, generator=g) * std)
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, n_instances, n_features]`` -> ``x' = ReLU(W^T W x + b)``, same shape
        (``x`` finite, of ``W``'s dtype; NaN and inf are refused, not propagated)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1:] != (self.n_instances, self.n_features):
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [batch, n_instances={self.n_instances}, "
                             f"n_features={self.n_features}], got {got}")
        check_tensor(x, "x", shape="[batch, n_instances, n_features]", device=self.W.device)
        if x.dtype != self.W.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model's W is {self.W.dtype}: convert it first "
                            f"(x.to({self.W.dtype}))")
        h = torch.einsum("bif,imf->bim", x, self.W)
        return torch.relu(torch.einsum("bim,imf->bif", h, self.W) + self.b)

    def generate_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, n_instances, n_features]``: ``x_i ~ U[0,1]`` with probability ``p_i``, else 0."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        check_generator(generator)
        shape = (batch_size, self.n_instances, self.n_features)
        values = torch.rand(shape, generator=generator)
        on = torch.rand(shape, generator=generator) < self.feature_probability
        return values * on

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-instance loss ``[n_instances]``: ``mean_batch sum_i I_i (x_i - x'_i)^2``."""
        return (self.importance * (x - self(x)).pow(2)).sum(-1).mean(0)


def train_toy_model(model: ToyModel, steps: int = 3000, batch_size: int = 1024, lr: float = 1e-2,
                    seed: int = 0, progress: bool = True, eval_batch_size: int = 65536) -> torch.Tensor:
    """Train every instance with Adam (summed instance losses; the instances share no
    parameters, so each trains as if alone); the learning rate follows a cosine to 0.
    Returns the final per-instance loss ``[n_instances]`` on a fresh batch of
    ``eval_batch_size`` (large, so that rare co-occurrences are counted).

    A loss that becomes non-finite (``lr`` so large that training diverges) stops
    training with a ``ValueError`` at that step."""
    if not isinstance(model, ToyModel):
        raise TypeError(f"train_toy_model needs a ToyModel, got {type(model).__name__}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        check_int(name, v, minimum=1)
    lr = check_number("lr", lr, positive=True, meaning="the Adam learning rate")
    check_bool("progress", progress)
    g = torch.Generator().manual_seed(check_seed(seed))
    opt = Adam(model.parameters(), lr=lr)
    reuse_freed_memory()  # each step's batches reuse freed pages (toylab.training.allocator)
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        with Progress(steps, "tms", enabled=progress) as bar:
            for step in range(steps):
                for group in opt.param_groups:  # cosine decay to 0
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = model.loss(model.generate_batch(batch_size, g)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise ValueError(f"training diverged at step {step}: the loss is {loss_value} "
                                     f"(lr={lr} is probably too large)")
                bar.update(1, loss=loss_value)
        with torch.no_grad():
            return model.loss(model.generate_batch(eval_batch_size, g))
    finally:
        torch.set_grad_enabled(grad_was)


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """``m / ||W||_F^2`` per instance: ``W [n_instances, m, n]`` -> ``[n_instances]``.

    Undefined for an instance whose ``W`` is all zero (it represents no feature): refused."""
    W = _check_W(W)
    norm2 = W.pow(2).sum((1, 2))
    zero = torch.nonzero(norm2 == 0).flatten().tolist()
    if zero:
        raise ValueError(f"W of instance(s) {zero[:10]} is all zero: it represents no feature, so dimensions "
                         "per feature (m / ||W||_F^2) is undefined there")
    return W.shape[1] / norm2


def _check_W(W) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.ndim != 3:
        got = list(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise ValueError(f"W must have shape [n_instances, n_hidden, n_features], got {got}")
    return check_tensor(W.detach(), "W", shape="[n_instances, n_hidden, n_features]")


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """Per-feature ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` ``[n_instances, n_features]``
    (1: a dedicated dimension, 1/2: an antipodal pair, 0: not represented)."""
    W = _check_W(W)
    norms = W.norm(dim=1)  # [i, n]
    unit = W / norms[:, None].clamp_min(1e-12)
    overlap = torch.einsum("imn,imk->ink", unit, W).pow(2).sum(-1)
    return torch.where(norms > 1e-6, norms.pow(2) / overlap.clamp_min(1e-12), torch.zeros_like(norms))


# ------------------------------------------------------------------------- the phase diagram
def _superposed_losses(r: torch.Tensor, p: torch.Tensor, n_grid: int = 64, steps: int = 250) -> torch.Tensor:
    """``[P]``: for each pair ``(r[k], p[k])`` the minimum over antipodal ``W = [w1, -w2]`` and
    ``b`` of the exact expected loss (midpoint quadrature on ``[0,1]^2``, Adam on the 4 parameters;
    all pairs are optimised at once, independently)."""
    r, p = r.double()[:, None], p.double()[:, None]
    u = (torch.arange(n_grid, dtype=torch.float64) + 0.5) / n_grid
    x, y = (t.reshape(1, -1) for t in torch.meshgrid(u, u, indexing="ij"))
    u = u[None]
    logw = torch.zeros(r.shape[0], 2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(r.shape[0], 2, dtype=torch.float64, requires_grad=True)

    def expected(logw, b):
        w = logw.exp()
        a, c, e = w[:, :1] ** 2, -w[:, :1] * w[:, 1:], w[:, 1:] ** 2  # W^T W = [[a, c], [c, e]]
        b0, b1 = b[:, :1], b[:, 1:]
        relu = torch.relu
        l00 = relu(b0) ** 2 + r * relu(b1) ** 2
        l10 = ((u - relu(a * u + b0)) ** 2 + r * relu(c * u + b1) ** 2).mean(1, keepdim=True)
        l01 = (relu(c * u + b0) ** 2 + r * (u - relu(e * u + b1)) ** 2).mean(1, keepdim=True)
        l11 = ((x - relu(a * x + c * y + b0)) ** 2 + r * (y - relu(c * x + e * y + b1)) ** 2).mean(1, keepdim=True)
        return ((1 - p) ** 2 * l00 + p * (1 - p) * (l10 + l01) + p * p * l11).squeeze(1)

    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        opt = Adam([logw, b], lr=0.05)
        for _ in range(steps):
            loss = expected(logw, b).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return expected(logw, b)
    finally:
        torch.set_grad_enabled(grad_was)


def _check_phase_point(r, p) -> None:
    if isinstance(r, bool) or not (isinstance(r, (int, float)) and r > 0 and math.isfinite(r)):
        raise ValueError(f"relative_importance must be a positive number, got {r!r}")
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise ValueError(f"density must be in (0, 1], got {p!r}")


def phase_losses(relative_importance: float, density: float) -> dict[str, float]:
    """Expected loss of each regime of 2 features in 1 dimension (see the module docstring).

    Returns ``{"not_represented", "dedicated", "superposed"}`` -> loss; the
    regime a trained model should land in is the argmin.
    """
    _check_phase_point(relative_importance, density)
    grid = phase_diagram([relative_importance], [density])
    return {name: float(grid["losses"][k, 0, 0]) for k, name in enumerate(REGIMES)}


def phase_diagram(relative_importances, densities) -> dict[str, torch.Tensor]:
    """The analytic phase diagram on a grid ``[R] x [P]``.

    Returns ``{"losses": [3, R, P] (in the order of REGIMES), "regime": [R, P] long}``
    with ``regime`` the index of the lowest-loss regime.
    """
    rs, ps = _numbers("relative_importances", relative_importances), _numbers("densities", densities)
    if not rs or not ps:
        raise ValueError("phase_diagram needs at least one relative importance and one density")
    for r in rs:
        for p in ps:
            _check_phase_point(r, p)
    R, P = torch.meshgrid(torch.tensor(rs, dtype=torch.float64), torch.tensor(ps, dtype=torch.float64),
                          indexing="ij")
    var = P / 3 - P * P / 4
    sup = _superposed_losses(R.reshape(-1), P.reshape(-1)).reshape(R.shape)
    losses = torch.stack([R * var, var, sup])
    return {"losses": losses, "regime": losses.argmin(0)}


def _numbers(name: str, values) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a list of numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a list of numbers, got an element {v!r} ({type(v).__name__})")
        out.append(float(v))
    return out


def classify_regime(W: torch.Tensor, threshold: float = 0.1) -> list[str]:
    """The regime of each instance of a 2-feature, 1-dimension model ``W [n_instances, 1, 2]``:
    a feature is represented when ``||W_i||^2 > threshold``; both represented
    (with opposite signs) is ``"superposed"``, only the extra feature (index 1) ``"dedicated"``."""
    if not isinstance(W, torch.Tensor) or W.ndim != 3 or W.shape[1:] != (1, 2):
        raise ValueError("classify_regime needs W of shape [n_instances, 1, 2]")
    W = _check_W(W)
    threshold = check_number("threshold", threshold, positive=True,
                             meaning="a feature counts as represented when ||W_i||^2 exceeds it")
    out = []
    for w1, w2 in W[:, 0]:
        on1, on2 = float(w1) ** 2 > threshold, float(w2) ** 2 > threshold
        if on1 and on2:
            out.append("superposed" if float(w1 * w2) < 0 else "same_direction")
        elif on2:
            out.append("dedicated")
        elif on1:
            out.append("not_represented")
        else:
            out.append("none")
    return out


# ------------------------------------------------------------------------- planted features
class PlantedFeatures:
    """Synthetic activations with a known dictionary (for testing SAEs).

    ``dictionary [n_features, d]``: random unit rows (seeded). A sample is
    ``x = a D`` with codes ``a [n, n_features]``, ``a_i ~ U[0, 1]`` with probability
    ``density`` and 0 otherwise (the TMS feature distribution), so the expected L0 is
    ``n_features * density``.
    """

    def __init__(self, n_features: int, d: int, density: float, seed: int = 0):
        n_features, d = check_int("n_features", n_features, minimum=1), check_int("d", d, minimum=1)
        if isinstance(density, bool) or not (isinstance(density, (int, float)) and 0 < density <= 1):
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        self.n_features, self.d, self.density = n_features, d, float(density)
        g = torch.Generator().manual_seed(check_seed(seed))
        D = torch.randn(n_features, d, generator=g)
        self.dictionary = D / D.norm(dim=1, keepdim=True)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, d], codes [n, n_features])`` with ``x = codes @ dictionary``."""
        n = check_int("n", n, minimum=1)
        check_generator(generator)
        codes = torch.rand(n, self.n_features, generator=generator)
        codes = codes * (torch.rand(n, self.n_features, generator=generator) < self.density)
        return codes @ self.dictionary, codes
