"""Off-probe evaluations: does a model do induction on repeated text it was not trained on?

The standard probe ``[BOS, r, r]`` (:func:`toylab.training.train.induction_probe`) is the
training format of the induction presets, so a model can pass it by learning
artefacts of the generator (every sequence starts with BOS, every repeat runs to
the end of the context). These probes change one thing each:

* :func:`no_bos_probe`: ``[r, r]`` (no BOS) and ``[x, r, r]`` (a random non-BOS
  first token ``x``);
* :func:`segment_probe`: ``BOS``, noise, a segment ``r``, noise, ``r`` again,
  noise: the copy sits in the middle of noise and *ends* before the context does.

A model that does induction and is honest about what it cannot know gives, with
``V = d_vocab``: a first-copy loss near ``ln(V-1)`` (nothing predicts fresh
random tokens; the uniform guess over the ``V-1`` non-BOS tokens has loss
``ln(V-1)``), a low loss on the repeated copy, and on the first token after a
copy ends a loss not far above ``ln(V-1)`` (a fresh token: confidence there is
confidently wrong). :data:`OFF_PROBE_BOUNDS` states the lab's acceptance bounds
and :func:`off_probe_failures` checks them.

Every probe draws its tokens from a generator with a fixed seed
(:data:`PROBE_SEED`), so the numbers of a model are reproducible.

Non-finite values: a model whose weights hold NaN (a diverged run) gives NaN
losses here, and they are returned as they are, not refused: the training loop
records them in its history, and :func:`off_probe_failures` reports every NaN
number as a failed bound (``NaN <= bound`` is false).
"""

from __future__ import annotations

import math

import torch

from toylab.data import BOS, probe_half_len
from toylab.model import next_token_loss
from toylab.circuits.scores import induction_score

PROBE_SEED = 4321  # the off-probe batches are the same for every model and run


def _check(model, batch: int, seed: int = PROBE_SEED) -> None:
    if not callable(getattr(model, "run_with_cache", None)) or not hasattr(model, "cfg"):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if model.cfg.n_ctx < 8 or model.cfg.d_vocab < 3:
        raise ValueError(f"the off-probe evaluations need n_ctx >= 8 and d_vocab >= 3, "
                         f"got n_ctx={model.cfg.n_ctx}, d_vocab={model.cfg.d_vocab}")


def _run(model, toks: torch.Tensor):
    """One forward pass: ``(logits, cache of the attention patterns)``."""
    return model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))


def _best_induction(model, cache, toks: torch.Tensor, destinations: torch.Tensor) -> float:
    scores = [induction_score(cache["pattern", l], toks, destinations).max().item()
              for l in range(model.cfg.n_layers)]
    return max(scores, default=0.0)


@torch.no_grad()
def no_bos_probe(model, random_first: bool = False, batch: int = 256, seed: int = PROBE_SEED) -> dict:
    """Losses on ``[r, r]`` (``random_first=False``) or ``[x, r, r]`` (``True``).

    ``r_i ~ Uniform{1..V-1}`` and ``x ~ Uniform{1..V-1}`` (never BOS), drawn from
    ``torch.Generator().manual_seed(seed)``; ``len(r) = h`` fills the context:
    ``h = n_ctx // 2`` without a first token, ``h = probe_half_len(n_ctx)`` with one.
    Let ``c`` be where the second copy starts (``h`` or ``1 + h``) and
    ``l_p = -log P(x_{p+1} | x_{<=p})`` the next-token loss.

    Returns:
        ``loss_first``: mean of ``l_p`` over the first copy's tokens that have a
        predecessor (tokens ``1..c-1``); ideal ``ln(V-1)``.
        ``loss_repeat``: mean over the second copy except its first token
        (tokens ``c+1..``); ideal ``0``.
        ``best_induction``: the best head's :func:`~toylab.circuits.scores.induction_score`
        from the second copy.
    """
    _check(model, batch, seed)
    if not isinstance(random_first, bool):
        raise TypeError(f"random_first must be True or False, got {random_first!r}")
    n, V = model.cfg.n_ctx, model.cfg.d_vocab
    h = probe_half_len(n) if random_first else n // 2
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, V, (batch, h), generator=g, dtype=torch.long)
    parts = [r, r]
    if random_first:
        parts.insert(0, torch.randint(1, V, (batch, 1), generator=g, dtype=torch.long))
    toks = torch.cat(parts, dim=1)
    second = toks.shape[1] - h
    logits, cache = _run(model, toks)
    loss = next_token_loss(logits, toks)  # loss[:, p] is for token p + 1
    dest = torch.arange(toks.shape[1]) >= second
    return {"loss_first": loss[:, :second - 1].mean().item(),
            "loss_repeat": loss[:, second:].mean().item(),
            "best_induction": _best_induction(model, cache, toks, dest)}


def segment_tokens(d_vocab: int, n_ctx: int, seg_len: int, batch: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS``, noise, a segment, noise, its copy, noise: ``(tokens [batch, n_ctx], dst [batch])``.

    Every token is ``Uniform{1..V-1}`` except ``x_0 = BOS``; with ``L = seg_len``
    the segment ``x_s..x_{s+L-1}`` is copied to ``x_d..x_{d+L-1}`` (``d`` is
    returned). The layout ``(a, g, t)`` = (noise before the segment, noise
    between, noise after the copy) is uniform over ``a >= 0, g >= 1, t >= 1``,
    ``a + g + t = n_ctx - 1 - 2L``; ``s = 1 + a``, ``d = s + L + g``.
    """
    for name, v, low in (("d_vocab", d_vocab, 2), ("n_ctx", n_ctx, 1), ("seg_len", seg_len, 1), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"segment_tokens: {name} must be an integer >= {low}, got {v!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    K = n_ctx - 1 - 2 * seg_len - 2  # a + (g - 1) + (t - 1) = K
    if K < 0:
        raise ValueError(f"seg_len={seg_len} does not fit twice, with noise, in n_ctx={n_ctx}")
    toks = torch.randint(1, d_vocab, (batch, n_ctx), generator=generator, dtype=torch.long)
    toks[:, 0] = BOS
    # (a, g - 1) uniform over a, g - 1 >= 0, a + g - 1 <= K: two distinct cut points lo < hi in 0..K+1
    x = torch.randint(0, K + 2, (batch,), generator=generator)
    y = torch.randint(0, K + 1, (batch,), generator=generator)
    y = y + (y >= x).long()
    lo, hi = torch.minimum(x, y), torch.maximum(x, y)
    src = 1 + lo
    dst = src + seg_len + 1 + (hi - lo - 1)
    pos = torch.arange(n_ctx).unsqueeze(0)
    d = dst.unsqueeze(1)
    in_copy = (pos >= d) & (pos < d + seg_len)
    toks = toks.gather(1, torch.where(in_copy, pos - (dst - src).unsqueeze(1), pos))
    return toks, dst


@torch.no_grad()
def segment_probe(model, seg_len: int | None = None, batch: int = 256, seed: int = PROBE_SEED) -> dict:
    """Losses around a copied segment in the middle of noise (:func:`segment_tokens`).

    ``L = seg_len`` (default ``max(3, (n_ctx - 1) // 4)``), copy at ``d..d+L-1``, tokens
    from ``torch.Generator().manual_seed(seed)``; ``l_p`` as in :func:`no_bos_probe`.

    Returns:
        ``loss_copy``: mean of ``l_p`` for the copy's tokens after its first two
        (``x_{d+2}..x_{d+L-1}``, predicted at ``p = d+1..d+L-2``); ideal ``0``.
        ``loss_after``: mean loss on the first token after the copy ends
        (``x_{d+L}``, a fresh random token); ideal ``ln(V-1)``.
        ``max_prob_after``: mean of the model's largest probability there (a
        confident guess at a fresh token is a wrong one).
        ``best_induction``: the best head's induction score from the copy's tokens.
    """
    _check(model, batch, seed)
    n, V = model.cfg.n_ctx, model.cfg.d_vocab
    L = max(3, (n - 1) // 4) if seg_len is None else seg_len
    if not isinstance(L, int) or isinstance(L, bool) or L < 3:
        raise ValueError(f"seg_len must be an integer >= 3, got {seg_len!r}")
    toks, dst = segment_tokens(V, n, L, batch, torch.Generator().manual_seed(seed))
    logits, cache = _run(model, toks)
    loss = next_token_loss(logits, toks)
    rows = torch.arange(batch)
    pos = torch.arange(n).unsqueeze(0)
    d = dst.unsqueeze(1)
    copy_mask = ((pos >= d + 1) & (pos <= d + L - 2))[:, : n - 1]
    end = dst + L - 1  # predicts x_{d+L}
    probs_end = torch.softmax(logits[rows, end].double(), dim=-1)
    return {"loss_copy": loss[copy_mask].mean().item(),
            "loss_after": loss[rows, end].mean().item(),
            "max_prob_after": probs_end.max(-1).values.mean().item(),
            "best_induction": _best_induction(model, cache, toks, (pos >= d) & (pos < d + L))}


def off_probe_applies(model) -> bool:
    """Whether the context fits :func:`segment_probe`'s default layout (``n_ctx >= 11``)
    and the vocabulary has tokens besides BOS (``d_vocab >= 3``)."""
    if not hasattr(getattr(model, "cfg", None), "n_ctx"):
        raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
    return model.cfg.n_ctx >= 11 and model.cfg.d_vocab >= 3


def off_probe_metrics(model, batch: int = 256) -> dict:
    """All off-probe numbers, flat (the keys of a training history entry):
    ``nobos_*`` from ``no_bos_probe(model)``, ``randfirst_*`` from
    ``no_bos_probe(model, random_first=True)``, ``segment_*`` from
    :func:`segment_probe`, and ``uniform_loss = ln(V-1)``; ``ValueError`` where they do not
    apply (:func:`off_probe_applies`)."""
    _check(model, batch)
    if not off_probe_applies(model):
        raise ValueError(f"the off-probe evaluations need n_ctx >= 11 and d_vocab >= 3, got "
                         f"n_ctx={model.cfg.n_ctx}, d_vocab={model.cfg.d_vocab}")
    out = {"uniform_loss": math.log(model.cfg.d_vocab - 1)}
    for prefix, res in (("nobos", no_bos_probe(model, False, batch)),
                        ("randfirst", no_bos_probe(model, True, batch)),
                        ("segment", segment_probe(model, batch=batch))):
        out.update({f"{prefix}_{k}": v for k, v in res.items()})
    return out


#: ``(metric, kind, bound)``: ``"near_uniform"`` means ``|value - ln(V-1)| <= bound``,
#: ``"max"`` means ``value <= bound``, ``"uniform_plus"`` means ``value <= ln(V-1) + bound``.
OFF_PROBE_BOUNDS = (
    ("nobos_loss_first", "near_uniform", 0.5),
    ("nobos_loss_repeat", "max", 0.5),
    ("randfirst_loss_first", "near_uniform", 0.5),
    ("randfirst_loss_repeat", "max", 0.5),
    ("segment_loss_after", "uniform_plus", 1.0),
    ("segment_loss_copy", "max", 0.5),
)


def off_probe_failures(metrics: dict) -> list[str]:
    """The bounds of :data:`OFF_PROBE_BOUNDS` that ``metrics`` (from
    :func:`off_probe_metrics`) violates, each as a sentence; ``[]`` if all hold."""
    _check_metrics(metrics)
    uniform = metrics["uniform_loss"]
    failures = []
    for key, kind, bound in OFF_PROBE_BOUNDS:
        v = metrics[key]
        if kind == "near_uniform" and not abs(v - uniform) <= bound:
            failures.append(f"{key} = {v:.3f} is not within {bound} of ln(V-1) = {uniform:.3f}")
        elif kind == "max" and not v <= bound:
            failures.append(f"{key} = {v:.3f} > {bound}")
        elif kind == "uniform_plus" and not v <= uniform + bound:
            failures.append(f"{key} = {v:.3f} > ln(V-1) + {bound} = {uniform + bound:.3f}")
    return failures


def _check_metrics(metrics) -> None:
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict from off_probe_metrics(model), got {type(metrics).__name__}")
    missing = [k for k in ("uniform_loss",) + tuple(k for k, _, _ in OFF_PROBE_BOUNDS) if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}: pass the dict off_probe_metrics(model) returns "
                         "(or a history entry that holds the off-probe numbers)")
    bad = {k: metrics[k] for k in ["uniform_loss"] + [k for k, _, _ in OFF_PROBE_BOUNDS]
           if isinstance(metrics[k], bool) or not isinstance(metrics[k], (int, float))}
    if bad:
        raise TypeError(f"metrics must hold numbers, got {bad}")


def off_probe_lines(metrics: dict) -> list[str]:
    """Human-readable lines of the off-probe numbers in a history entry (``[]`` if absent):
    losses to 2 decimals, each with its bound and whether it holds."""
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict (a history entry or off_probe_metrics(model)), "
                        f"got {type(metrics).__name__}")
    if "uniform_loss" not in metrics or any(k not in metrics for k, _, _ in OFF_PROBE_BOUNDS):
        return []
    u = metrics["uniform_loss"]
    failing = off_probe_failures(metrics)

    def cell(key: str, kind: str, bound: float) -> str:
        target = {"near_uniform": f"ln(V-1)±{bound:g}", "max": f"<= {bound:g}",
                  "uniform_plus": f"<= ln(V-1)+{bound:g}"}[kind]
        mark = "FAIL" if any(f.startswith(key + " ") for f in failing) else "ok"
        return f"{metrics[key]:.2f} ({target}, {mark})"

    b = {k: (kind, bound) for k, kind, bound in OFF_PROBE_BOUNDS}
    return [
        f"  off-probe (ln(V-1) = {u:.2f}):",
        f"    [r, r] no BOS        first copy {cell('nobos_loss_first', *b['nobos_loss_first'])}, "
        f"repeat {cell('nobos_loss_repeat', *b['nobos_loss_repeat'])}",
        f"    [x, r, r] random x   first copy {cell('randfirst_loss_first', *b['randfirst_loss_first'])}, "
        f"repeat {cell('randfirst_loss_repeat', *b['randfirst_loss_repeat'])}",
        f"    segment in noise     copy {cell('segment_loss_copy', *b['segment_loss_copy'])}, "
        f"first token after it {cell('segment_loss_after', *b['segment_loss_after'])}, "
        f"max prob there {metrics.get('segment_max_prob_after', float('nan')):.2f}",
    ]
