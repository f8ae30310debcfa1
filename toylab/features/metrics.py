"""SAE metrics, named as the field names them, and dictionary-matching scores.

On activations ``x [N, d_in]`` with latents ``f [N, d_sae]`` and reconstructions ``x_hat``:

- ``l0 = mean_n #{i : f_ni > 0}``
- ``fraction_variance_explained = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
- ``firing_frequency[i] = mean_n [f_ni > 0]``; dead latents have frequency 0, dense ones above a threshold
- ``ce_loss_recovered = (L_ablated - L_sae) / (L_ablated - L_clean)`` with the
  reconstruction spliced into the forward pass (``L_sae``) and the hook's activation
  zeroed (``L_ablated``). For one head's SAE on a per-head hook (``attn.hook_z``,
  ``head=h``) both splice and ablation touch **only that head's slice**: zeroing
  every head (SAELens's old bug) makes the baseline far worse and the score
  flatteringly close to 1.

Against a known dictionary ``T [n_true, d]`` and learned directions ``D [n_learned, d]``
(rows normalised, ``C = D T^T`` the cosine matrix):

- ``mmcs = mean_j max_i C_ij``: each true feature's best cosine with any latent (Sharkey et al. 2022);
- ``mcc = mean_j C_{pi(j) j}`` with ``pi`` the one-to-one assignment of latents to true
  features that maximises the summed cosine (the Hungarian algorithm, :func:`hungarian`);
  unlike MMCS it cannot count one latent for two features.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toylab.features.checks import check_device, check_finite
from toylab.features.sae import SparseAutoencoder, check_activations
from toylab.features.train_sae import _PER_HEAD, check_hook, hook_width


def _check_sae(sae, who: str) -> SparseAutoencoder:
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"{who} needs a SparseAutoencoder (ReluSAE or TopKSAE) as sae, got {type(sae).__name__}")
    return sae


@torch.no_grad()
def l0(sae: SparseAutoencoder, x: torch.Tensor) -> float:
    """``mean_n #{i : f_ni > 0}`` on ``x [N, d_in]`` (finite, the SAE's dtype)."""
    return float((_check_sae(sae, "l0").encode(x) > 0).float().sum(1).mean())


@torch.no_grad()
def fraction_variance_explained(sae: SparseAutoencoder, x: torch.Tensor) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` on ``x [N, d_in]`` (1 is perfect; can be < 0)."""
    _check_sae(sae, "fraction_variance_explained")
    x = check_activations(x, sae.d_in, "x", device=sae.W_enc.device).double()
    err = (x - sae(x.float()).double()).pow(2).sum()
    var = (x - x.mean(0)).pow(2).sum()
    if not float(var) > 0:
        raise ValueError("the activations have zero variance: variance explained is undefined")
    return float(1 - err / var)


@torch.no_grad()
def firing_frequency(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """``[d_sae]``: the fraction of rows of ``x [N, d_in]`` on which each latent is > 0."""
    return (_check_sae(sae, "firing_frequency").encode(x) > 0).float().mean(0)


def dead_and_dense(sae: SparseAutoencoder, x: torch.Tensor, dense_threshold: float = 0.1) -> dict[str, int]:
    """``{"dead": #latents with frequency 0, "dense": #latents with frequency > dense_threshold}``."""
    _check_sae(sae, "dead_and_dense")
    if isinstance(dense_threshold, bool) or not isinstance(dense_threshold, (int, float)) \
            or not 0 < dense_threshold < 1:
        raise ValueError(f"dense_threshold must be in (0, 1), got {dense_threshold!r}")
    freq = firing_frequency(sae, x)
    return {"dead": int((freq == 0).sum()), "dense": int((freq > dense_threshold).sum())}


@torch.no_grad()
def ce_loss_recovered(model, sae: SparseAutoencoder, hook: str, tokens: torch.Tensor,
                      head: int | None = None, skip_first: bool = False) -> dict[str, float]:
    """Splice the SAE's reconstruction into the forward pass at ``hook`` (one head's slice
    if ``head`` is given) and compare next-token losses.

    Returns ``{"clean", "sae", "ablated", "recovered"}`` with
    ``recovered = (ablated - sae) / (ablated - clean)`` (mean CE in nats over
    ``tokens [batch, pos]``). By default position 0 is spliced too (it is the same BOS
    vector everywhere, reconstructed like any other row). With ``skip_first=True``
    position 0 keeps its clean activation in both the splice and the ablation, which
    matches an SAE trained on :func:`gather_activations`'s default rows (BOS dropped,
    so the SAE never saw it). A non-finite loss (a model or SAE with NaN weights) is
    refused, not returned.
    """
    _check_sae(sae, "ce_loss_recovered")
    check_hook(model, hook, head, "ce_loss_recovered")
    width = hook_width(model, hook, head)
    if width != sae.d_in:
        raise ValueError(f"the SAE has d_in = {sae.d_in} but {hook!r}"
                         f"{'' if head is None else f' head {head}'} has width {width}")
    tokens = model.check_tokens(tokens)
    if not isinstance(skip_first, bool):
        raise TypeError(f"ce_loss_recovered: skip_first must be True or False, got {skip_first!r}")
    per_head = hook.endswith(_PER_HEAD)

    def replace(act, mode):
        out = _replace(act, mode)
        if skip_first:
            out[:, 0] = act[:, 0]   # position 0 keeps its clean activation
        return out

    def _replace(act, mode):
        out = act.clone()
        if per_head and head is not None:
            sl = act[:, :, head]
            new = sae(sl.reshape(-1, width)).reshape(sl.shape) if mode == "sae" else torch.zeros_like(sl)
            out[:, :, head] = new
        elif per_head:
            new = sae(act.flatten(2).reshape(-1, width)).reshape(act.shape) if mode == "sae" else 0 * act
            out = new
        else:
            out = sae(act.reshape(-1, width)).reshape(act.shape) if mode == "sae" else torch.zeros_like(act)
        return out

    def finite(name: str, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"the {name} next-token loss is {value}: the model computes non-finite values on "
                             "these tokens (are its weights finite?), so CE loss recovered is undefined")
        return value

    clean = finite("clean", float(model(tokens, return_type="loss")))
    spliced = finite("spliced", float(model.run_with_hooks(tokens, [(hook, lambda a, h: replace(a, "sae"))],
                                                           return_type="loss")))
    ablated = finite("ablated", float(model.run_with_hooks(tokens, [(hook, lambda a, h: replace(a, "zero"))],
                                                           return_type="loss")))
    denom = ablated - clean
    if abs(denom) < 1e-9:
        raise ValueError(f"zero-ablating {hook!r} does not change the loss: CE loss recovered is undefined there")
    return {"clean": clean, "sae": spliced, "ablated": ablated, "recovered": (ablated - spliced) / denom}


# ----------------------------------------------------------------------------- dictionaries
def _unit_rows(M: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(M, torch.Tensor) or M.ndim != 2 or M.shape[0] == 0 or M.shape[1] == 0:
        got = list(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise ValueError(f"{what} must be a non-empty 2-D tensor [n, d] of directions, got {got}")
    if M.dtype == torch.bool or M.is_complex():
        raise TypeError(f"{what} must hold real numbers, got dtype {M.dtype}")
    M = check_finite(check_device(M.detach(), what), what).double()
    norms = M.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{what} has a zero row: a direction must be nonzero")
    return M / norms


def cosine_matrix(learned: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``C [n_learned, n_true]``, ``C_ij = cos(learned_i, true_j)``; both ``[n, d]`` with equal ``d``."""
    A, B = _unit_rows(learned, "learned"), _unit_rows(true, "true")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"learned directions have d = {A.shape[1]} but true ones have d = {B.shape[1]}")
    return A @ B.T


def _check_absolute(absolute, who: str) -> bool:
    if not isinstance(absolute, bool):
        raise TypeError(f"{who}: absolute must be True or False, got {absolute!r}")
    return absolute


def mmcs(learned: torch.Tensor, true: torch.Tensor, absolute: bool = False) -> float:
    """Mean max cosine similarity ``mean_j max_i cos(learned_i, true_j)``, in [-1, 1].

    ``absolute=True`` scores ``|cos|`` instead (a latent pointing against a true
    feature counts as a match, as in most papers), in [0, 1]; the default keeps
    the signed cosine.
    """
    C = cosine_matrix(learned, true)
    if _check_absolute(absolute, "mmcs"):
        C = C.abs()
    return float(C.max(0).values.mean())


def hungarian(cost) -> np.ndarray:
    """Minimum-cost assignment for a ``[n_rows, n_cols]`` cost matrix with ``n_rows <= n_cols``.

    Returns ``col [n_rows]`` (distinct column for each row) minimising
    ``sum_r cost[r, col[r]]``. The shortest-augmenting-path method with dual
    potentials ``u, v`` (reduced costs ``cost - u - v >= 0``): each row is added by
    growing a Dijkstra-like tree over columns until a free column is reached,
    then the path is flipped; O(n_rows^2 n_cols), with the column scans vectorised.
    """
    try:
        a = np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"hungarian needs a 2-D array of numbers as its cost matrix, got {type(cost).__name__} "
                         f"({e})") from None
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError("hungarian needs a non-empty 2-D cost matrix")
    if not np.isfinite(a).all():
        raise ValueError("hungarian needs finite costs")
    n, m = a.shape
    if n > m:
        raise ValueError(f"hungarian needs n_rows <= n_cols, got {n} x {m} (transpose it)")
    INF = np.inf
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # match[j] = row (1-based) assigned to column j; column 0 is virtual
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, INF)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            cur = a[i0 - 1] - u[i0] - v[1:]  # reduced costs of row i0 to columns 1..m
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], INF)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            used_idx = np.nonzero(used)[0]
            u[match[used_idx]] += delta
            v[used_idx] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    col = np.empty(n, dtype=np.int64)
    for j in range(1, m + 1):
        if match[j]:
            col[match[j] - 1] = j - 1
    return col


def mcc(learned: torch.Tensor, true: torch.Tensor, absolute: bool = False) -> float:
    """Hungarian-matched mean cosine: ``max_pi mean_j cos(learned_pi(j), true_j)`` over
    one-to-one ``pi``; needs ``n_learned >= n_true``. In [-1, 1].

    ``absolute=True`` matches and scores ``|cos|`` instead (sign-blind, as in
    most papers), in [0, 1]; the default keeps the signed cosine."""
    C = cosine_matrix(learned, true)
    if _check_absolute(absolute, "mcc"):
        C = C.abs()
    if C.shape[0] < C.shape[1]:
        raise ValueError(f"MCC matches each of the {C.shape[1]} true features to a distinct latent, "
                         f"but there are only {C.shape[0]} latents")
    rows = hungarian(-C.T.numpy())  # true feature j -> latent rows[j]
    return float(C[torch.as_tensor(rows), torch.arange(C.shape[1])].mean())
