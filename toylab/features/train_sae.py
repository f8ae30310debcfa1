"""Training sparse autoencoders on a model's activations: gather, train, save, load.

``gather_activations`` runs the model with ``run_with_cache`` on one hook point and
flattens batch and position into rows. ``train_sae`` is a seeded, deterministic
Adam loop over those rows (same seed, same machine: bit-identical SAE), with the
decoder kept at unit norm, optional resampling of dead ReLU latents, and a
:class:`toylab.training.progress.Progress` bar. ``save_sae``/``load_sae`` follow the lab's
checkpoint rules: atomic writes, ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path

import torch

from toylab.training.allocator import reuse_freed_memory
from toylab.training.checkpoint import json_like
from toylab.files import atomic_write
from toylab.features.checks import (as_int, check_bool, check_device, check_finite, check_hook_name, check_int,
                                    check_model, check_number, check_seed)
from toylab.features.sae import ReluSAE, SparseAutoencoder, resample_dead_latents
from toylab.features.topk import TopKSAE
from toylab.training.optim import Adam
from toylab.training.progress import Progress

#: hook-name endings an SAE can be trained on (``[batch, pos, d]`` or ``[batch, pos, head, d_head]``);
#: in a model with MLPs also ``hook_resid_mid``, ``hook_mlp_out`` (``d_model``) and the neurons ``mlp.hook_post``
#: (``d_mlp``, after the nonlinearity)
SAE_HOOKS = ("hook_embed", "hook_resid_pre", "hook_resid_post", "hook_attn_out", "attn.hook_z",
             "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result", "hook_normalized",
             "hook_resid_mid", "hook_mlp_out", "mlp.hook_post")
_PER_HEAD = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result")
SAE_KINDS = {cls.kind: cls for cls in (ReluSAE, TopKSAE)}
FORMAT = "toylab-sae"


def check_hook(model, hook: str, head: int | None = None, who: str = "check_hook") -> str:
    """Validate an SAE hook name (and ``head`` for per-head hooks); returns the name."""
    check_model(model, who)
    check_hook_name(model, hook)
    if not hook.endswith(SAE_HOOKS):
        raise ValueError(f"an SAE needs a vector-valued activation; {hook!r} is not one of the supported "
                         f"kinds {SAE_HOOKS} (attention scores and patterns are not residual-like vectors)")
    if head is not None:
        if not hook.endswith(_PER_HEAD):
            raise ValueError(f"head={head} only makes sense for a per-head hook ({_PER_HEAD}), not {hook!r}")
        n = model.cfg.n_heads
        head = as_int(head)
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n:
            raise ValueError(f"head must be an integer in [0, {n}), got {head!r}")
    return hook


def hook_width(model, hook: str, head: int | None = None) -> int:
    """Size of one activation row at ``hook``: ``d_head`` for one head, ``n_heads * d_head``
    for a flattened per-head hook (``d_model`` for ``hook_result``), ``d_mlp`` for the neurons
    (``mlp.hook_post``), ``d_model`` otherwise."""
    check_hook(model, hook, head, "hook_width")
    cfg = model.cfg
    if hook.endswith(_PER_HEAD):
        per = cfg.d_model if hook.endswith("hook_result") else cfg.d_head
        return per if head is not None else per * cfg.n_heads
    return cfg.d_mlp if hook.endswith("mlp.hook_post") else cfg.d_model


def flatten_activation(act: torch.Tensor, hook: str, head: int | None = None) -> torch.Tensor:
    """``[batch, pos, d]`` or ``[batch, pos, n_heads, d_head]`` -> rows ``[batch * pos, width]``
    (one head's slice when ``head`` is given, else all heads concatenated)."""
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name (str), got {type(hook).__name__}")
    per_head = hook.endswith(_PER_HEAD)
    shape = "[batch, pos, n_heads, d_head]" if per_head else "[batch, pos, d]"
    if not isinstance(act, torch.Tensor):
        raise TypeError(f"act must be a torch.Tensor of shape {shape}, got {type(act).__name__}")
    if act.ndim != (4 if per_head else 3):
        raise ValueError(f"act at {hook!r} must have shape {shape}, got {list(act.shape)}")
    if head is not None and not per_head:
        raise ValueError(f"head={head} only makes sense for a per-head hook ({_PER_HEAD}), not {hook!r}")
    if head is not None:
        check_int("head", head, 0, act.shape[2] - 1)
    if per_head:
        act = act[:, :, head] if head is not None else act.flatten(2)
    return act.reshape(-1, act.shape[-1])


@torch.no_grad()
def gather_activations(model, hook: str, tokens: torch.Tensor, head: int | None = None,
                       skip_first: bool = True, batch_size: int = 256) -> torch.Tensor:
    """Activations of ``model`` at ``hook`` on ``tokens [batch, pos]``, as rows.

    Returns ``[batch * (pos - skip_first), width]`` (width from :func:`hook_width`),
    rows ordered sequence by sequence. ``skip_first`` drops position 0 (the BOS
    token, whose activation is one vector repeated and would dominate a dictionary).
    Non-finite activations (a model with NaN weights) are refused, not returned.
    """
    check_hook(model, hook, head, "gather_activations")
    tokens = model.check_tokens(tokens)
    check_bool("skip_first", skip_first)
    batch_size = check_int("batch_size", batch_size, minimum=1, meaning="sequences per forward pass")
    if skip_first and tokens.shape[1] < 2:
        raise ValueError(f"tokens have {tokens.shape[1]} position(s) and skip_first=True drops position 0, "
                         "which leaves no rows: give sequences of at least 2 tokens (or skip_first=False)")
    rows = []
    for i in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[i:i + batch_size], names_filter=hook)
        act = cache[hook]
        if skip_first:
            act = act[:, 1:]
        rows.append(flatten_activation(act, hook, head).float())
    return check_finite(torch.cat(rows), f"the activations at {hook!r}",
                        "the model computes them from these tokens (are its weights finite?)")


def train_sae(sae: SparseAutoencoder, acts: torch.Tensor, *, steps: int = 2000, batch_size: int = 1024,
              lr: float = 3e-3, seed: int = 0, resample_every: int | None = None, init_b_dec: str = "zero",
              progress: bool = True, desc: str = "sae") -> list[dict]:
    """Train ``sae`` in place on ``acts [N, d_in]`` with Adam; returns the loss history.

    Each step draws ``batch_size`` rows without replacement (a fresh permutation
    each epoch) from a generator seeded with ``seed``; the learning rate decays
    linearly to zero over the last 20% of the steps. Before training the input
    scale is set from ``acts`` (``E ||s x||^2 = d_in``) and ``b_dec`` is set to
    zero or, with ``init_b_dec="mean"``, to the mean of ``s x``. Dead ReLU latents
    (no activation over the last ``resample_every`` steps) are resampled every
    ``resample_every`` steps until 70% of training (for TopK SAEs in addition to AuxK).

    History: one dict per logged step: ``{"step", "loss", "mse", "l0", ...}``.

    ``acts`` must be finite (NaN or inf is refused before training starts). If the
    loss becomes non-finite (a learning rate so large that training diverges), training
    stops with a ``ValueError`` at that step; the SAE then holds the previous step's weights.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    acts = sae.check_input(acts, "acts")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        check_int(name, v, minimum=1)
    lr = check_number("lr", lr, positive=True, meaning="the Adam learning rate")
    seed = check_seed(seed)
    if not isinstance(init_b_dec, str) or init_b_dec not in ("zero", "mean"):
        raise ValueError(f"init_b_dec must be 'zero' or 'mean', got {init_b_dec!r}")
    if resample_every is not None and (isinstance(resample_every, bool) or not isinstance(resample_every, int)
                                       or resample_every < 1):
        raise ValueError(f"resample_every must be None or a positive integer, got {resample_every!r}")
    check_bool("progress", progress)
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str (the progress bar's label), got {type(desc).__name__}")
    reuse_freed_memory()  # each step's batches reuse freed pages (toylab.training.allocator)
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        s = sae.set_input_scale(acts)
        with torch.no_grad():
            sae.b_dec.copy_(acts.mean(0) * s if init_b_dec == "mean" else torch.zeros(sae.d_in))
        g = torch.Generator().manual_seed(int(seed))
        opt = Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
        n = acts.shape[0]
        batch_size = min(batch_size, n)
        perm, cursor = torch.randperm(n, generator=g), 0
        fired = torch.zeros(sae.d_sae, dtype=torch.bool)
        history: list[dict] = []
        decay_from = int(0.8 * steps)
        sae.train()
        with Progress(steps, desc, enabled=progress) as bar:
            for step in range(steps):
                if cursor + batch_size > n:
                    perm, cursor = torch.randperm(n, generator=g), 0
                x = acts[perm[cursor:cursor + batch_size]]
                cursor += batch_size
                frac = 1.0 if step < decay_from else (steps - step) / max(steps - decay_from, 1)
                for group in opt.param_groups:
                    group["lr"] = lr * frac
                loss, terms = sae.loss(x)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise ValueError(f"training diverged at step {step}: the loss is {loss_value} "
                                     f"(lr={lr} is probably too large); the SAE keeps the weights it had "
                                     "before this step")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sae.project_decoder_grad()
                opt.step()
                sae.normalize_decoder()
                if resample_every is not None:
                    fired |= sae.fired(x)
                    if (step + 1) % resample_every == 0:
                        if step < 0.7 * steps:
                            sub = acts[torch.randint(0, n, (min(n, 8192),), generator=g)]
                            terms["resampled"] = resample_dead_latents(sae, sub, ~fired, g, opt)
                        fired = torch.zeros_like(fired)
                if step % max(steps // 100, 1) == 0 or step == steps - 1:
                    history.append({"step": step, "loss": loss_value, **terms})
                bar.update(1, loss=loss_value, l0=terms["l0"])
    finally:
        sae.eval()
        torch.set_grad_enabled(grad_was)
    return history


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def save_sae(path: str | os.PathLike, sae: SparseAutoencoder, meta: dict | None = None) -> Path:
    """Write ``sae`` (kind, config, tensors, JSON-able ``meta`` such as the hook) atomically.
    Non-finite weights are refused (the file would load as an SAE that outputs NaN)."""
    path = _check_path(path)
    if not isinstance(sae, SparseAutoencoder) or sae.kind not in SAE_KINDS:
        raise TypeError(f"save_sae needs one of {sorted(SAE_KINDS)} SAEs, got {type(sae).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of JSON-like values (e.g. {{'hook': ...}}), got {type(meta).__name__}")
    meta = json_like(dict(meta or {}), "meta")
    for name, v in sae.state_dict().items():
        check_device(v, f"the SAE's {name}")
    state = {k: v.detach().clone().contiguous().cpu() for k, v in sae.state_dict().items()}
    for name, v in state.items():
        check_finite(v, f"the SAE's {name}", "the file would load as an SAE that outputs NaN "
                                              "(did training diverge?)")
    payload = {"format": FORMAT, "kind": sae.kind, "config": sae.config(), "meta": meta, "state_dict": state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_sae(path: str | os.PathLike) -> tuple[SparseAutoencoder, dict]:
    """``(sae, meta)`` from a file written by :func:`save_sae` (loaded with ``weights_only=True``).
    A file whose config, tensors or meta do not make a working SAE (unknown config keys,
    shapes that do not fit, NaN/inf weights) is refused with a ``ValueError`` naming the part."""
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SAE file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(f"{path} is not a toylab SAE file (could not load it with weights_only=True: "
                         f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") not in SAE_KINDS:
        raise ValueError(f"{path} is not a toylab SAE file (format {FORMAT!r} with kind in {sorted(SAE_KINDS)})")
    cls, config, state = SAE_KINDS[payload["kind"]], payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the stored config is a {type(config).__name__}, not a dict of constructor arguments")
    known = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = sorted(set(map(str, config)) - set(known))
    if unknown:
        raise ValueError(f"{path}: the stored config has key(s) {unknown} that a {payload['kind']} SAE does not "
                         f"take (it takes {known}): written by another version, or edited")
    try:
        sae = cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the stored config does not make a {payload['kind']} SAE: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: the stored state_dict is not a dict of tensors")
    for name, v in state.items():
        check_finite(v, f"{path}: weight {name}", "an SAE with NaN/inf weights gives NaN everywhere "
                                                  "(did training diverge?)")
    want = sae.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{path}: the stored tensors do not fit a {payload['kind']} SAE: missing {missing}, "
                         f"unexpected {unexpected}")
    for name, v in want.items():
        if state[name].shape != v.shape:
            raise ValueError(f"{path}: the stored {name} has shape {list(state[name].shape)} but the stored config "
                             f"({config}) needs {list(v.shape)}")
    try:
        sae.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: the stored tensors do not fit the stored config: {e}") from e
    meta = payload.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the stored meta is a {type(meta).__name__}, not a dict")
    sae.eval()
    return sae, meta
