"""Subnetwork probing: learn which edges to keep with hard-concrete masks (a baseline of the ACDC paper).

Each edge ``e`` gets a learned log-odds ``log_alpha_e`` and a stochastic gate
(the hard-concrete distribution of Louizos et al. 2018)::

    u ~ Uniform(0, 1),   s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clamp(s (zeta - gamma) + gamma, 0, 1)        (beta = 2/3, gamma = -0.1, zeta = 1.1)

``z_e = 1`` keeps the edge, ``z_e = 0`` patches it to the corrupted run
(patch weight ``w_e = 1 - z_e`` in :func:`~toylab.discovery.edge_patching.run_with_edges`).
The masks minimise

    E_u[ M(w = 1 - z) ] + lam * sum_e P(z_e != 0),   P(z_e != 0) = sigmoid(log_alpha_e - beta log(-gamma / zeta))

with ``M`` the KL divergence from the clean output by default. The circuit
keeps the edges whose deterministic gate ``clamp(sigmoid(log_alpha)(zeta -
gamma) + gamma, 0, 1)`` exceeds 1/2. Larger ``lam``, smaller circuits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from toylab.discovery.edge_patching import _source_outputs, check_model_graph, check_pair, run_with_edges
from toylab.discovery.graph import Circuit, Graph
from toylab.discovery.metrics import check_metric, kl_to_clean
from toylab.training.optim import Adam

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def gate(log_alpha: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """Hard-concrete gates ``z`` (same shape as ``u``, broadcast from ``log_alpha [n_edges]``);
    ``u=None`` gives the deterministic gate used to read off the circuit."""
    if not isinstance(log_alpha, torch.Tensor) or not log_alpha.dtype.is_floating_point:
        raise TypeError(f"log_alpha must be a float tensor [n_edges], got "
                        f"{log_alpha.dtype if isinstance(log_alpha, torch.Tensor) else type(log_alpha).__name__}")
    if u is not None:
        if not isinstance(u, torch.Tensor) or not u.dtype.is_floating_point:
            raise TypeError(f"u must be a float tensor of uniform draws in (0, 1), got {type(u).__name__}")
        if not bool(((u > 0) & (u < 1)).all()):
            raise ValueError("u must lie strictly between 0 and 1 (log u and log(1 - u) are taken); "
                             "clamp the draws, e.g. u.clamp(1e-6, 1 - 1e-6)")
    if u is None:
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def subnetwork_probing(model, graph: Graph, clean, corrupted, lam: float, metric: Callable | None = None,
                       positions=None, steps: int = 200, samples: int = 4, lr: float = 0.1,
                       seed: int = 0) -> tuple[Circuit, torch.Tensor]:
    """Train hard-concrete edge masks (module doc) -> ``(circuit, log_alpha [n_edges])``.

    ``clean, corrupted [batch, pos]`` (``corrupted`` may be ``"zero"`` or ``"mean"``); ``lam >= 0`` the sparsity weight;
    ``metric`` ``logits [batch, pos, d_vocab] -> scalar`` (default KL to the clean output on ``positions``);
    ``steps`` Adam steps of ``samples`` gate draws each (run as copies of the batch in one pass).
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    for name, v in (("steps", steps), ("samples", samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    check_model_graph(model, graph)
    if metric is not None:
        check_metric(metric)
    clean, corrupted = check_pair(model, clean, corrupted)
    if metric is None:
        with torch.no_grad():
            metric = kl_to_clean(model(clean), positions)
    src = _source_outputs(model, graph, clean, corrupted)
    g = torch.Generator().manual_seed(int(seed))
    log_alpha = torch.full((len(graph),), 3.0, requires_grad=True)  # start with every edge (almost surely) kept
    opt = Adam([log_alpha], lr=lr)
    shift = BETA * math.log(-GAMMA / ZETA)
    params = [p for p in model.parameters()]
    was = [p.requires_grad for p in params]
    try:
        for p in params:  # only the masks are trained
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in range(steps):
                u = torch.rand(samples, len(graph), generator=g).clamp(1e-6, 1 - 1e-6)
                z = gate(log_alpha, u)
                vals = run_with_edges(model, graph, clean, corrupted, 1.0 - z, metric, source_outputs=src)
                loss = vals.mean() + lam * torch.sigmoid(log_alpha - shift).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    la = log_alpha.detach()
    kept = [e.name for e, zz in zip(graph.edges, gate(la)) if float(zz) > 0.5]
    return graph.circuit(kept), la
