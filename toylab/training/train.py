"""Seeded, deterministic training of attention-only transformers.

``train(model_cfg, data_spec, train_cfg)`` builds the model and the data from
their specs, trains with AdamW (linear warm-up, then cosine decay), evaluates
every ``eval_every`` steps and returns a :class:`TrainResult` that
:meth:`TrainResult.save` writes as a checkpoint. A finite task (modular
addition) trains full-batch instead, on all its training pairs at every step,
with its own loss and evaluations (:mod:`toylab.training.full_batch`).

Determinism: the seed fixes the initial weights (``seed``), the training
batches (a generator seeded with ``seed + 1``) and the evaluation batches
(a fixed, separate generator). Training runs on ``threads`` CPU threads
(default 1): on the same machine and thread count, the same call gives
bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from toylab.training.head_dropout import last_layer_dropout
from toylab.training.allocator import reuse_freed_memory
from toylab.training.full_batch import add_progress_measures, evaluate_full_batch, is_full_batch, training_loss
from toylab.training.checkpoint import save_checkpoint
from toylab.data import make_dataset, probe_half_len, repeated_tokens, repeated_tokens_with_gap
from toylab.causal.evaluation import off_probe_applies, off_probe_metrics
from toylab.model import AttnOnlyTransformer, ModelConfig, config_from_dict, next_token_loss
from toylab.training.optim import AdamW
from toylab.training.progress import Progress
from toylab.circuits.scores import induction_score, previous_token_score

EVAL_SEED = 1234  # the evaluation batches are the same for every run
MAX_SEED = 2**63  # seed + 1 seeds a torch generator, which takes 64-bit seeds


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`. ``.result`` holds what was trained so far: its
    last history entry is an evaluation at the step reached, marked
    ``"partial": True``. Uncaught, it behaves like any KeyboardInterrupt."""

    def __init__(self, result: "TrainResult"):
        super().__init__(f"training interrupted after {result.metrics.get('step')} steps")
        self.result = result


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings. ``lr`` peaks after ``warmup_steps`` and
    decays with a cosine to ``lr * final_lr_frac`` at ``steps``. Every ``eval_every``
    steps :func:`evaluate` reads ``eval_batch`` sequences per batch (validation, probes).

    ``head_dropout = p`` (0: off): see :mod:`toylab.training.head_dropout`.
    Weight decay applies to the blocks' weight matrices (:func:`is_decayed`), or, with
    ``decay_all=True``, to every parameter; ``decay_all`` is left out of :meth:`to_dict`
    at its default, so the configs saved before it existed read back unchanged. A
    full-batch data kind (:mod:`toylab.training.full_batch`) ignores ``batch_size``:
    each step reads every training pair."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-2
    warmup_steps: int = 50
    final_lr_frac: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batch: int = 256
    prefix_steps: int = 20
    threads: int = 1
    head_dropout: float = 0.0
    decay_all: bool = False

    def __post_init__(self) -> None:
        def number(name: str, v) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {v!r}")
            return float(v)

        for name in ("steps", "batch_size", "eval_every", "eval_batch", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "prefix_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {v!r}")
        if number("lr", self.lr) <= 0:
            raise ValueError(f"TrainConfig.lr must be positive (and finite), got {self.lr!r}")
        if number("grad_clip", self.grad_clip) < 0:
            raise ValueError(f"TrainConfig.grad_clip must be finite and >= 0 (0 = no clipping), got {self.grad_clip!r}")
        if not 0 <= number("final_lr_frac", self.final_lr_frac) <= 1:
            raise ValueError(f"TrainConfig.final_lr_frac must be in [0, 1], got {self.final_lr_frac!r}")
        if not 0 <= number("head_dropout", self.head_dropout) < 1:
            raise ValueError(f"TrainConfig.head_dropout must be in [0, 1), got {self.head_dropout!r}")
        if number("weight_decay", self.weight_decay) < 0:
            raise ValueError(f"TrainConfig.weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        if isinstance(self.betas, (str, bytes)) or not hasattr(self.betas, "__len__") or len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            if not 0 <= number(f"betas[{i}]", b) < 1:
                raise ValueError(f"TrainConfig.betas[{i}] must be in [0, 1), got {b!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not isinstance(self.decay_all, bool):
            raise ValueError(f"TrainConfig.decay_all must be True or False, got {self.decay_all!r}")

    def to_dict(self) -> dict:
        """The fields as JSON-able values; ``head_dropout`` and ``decay_all`` only where they are
        on, so the configs of runs without them save as before they existed."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        for name in ("head_dropout", "decay_all"):  # left out at their defaults
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return config_from_dict(cls, d)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / max(self.warmup_steps, 1)
        t = (step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1)
        return self.lr * (self.final_lr_frac + (1 - self.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass
class TrainResult:
    model: AttnOnlyTransformer
    data_spec: dict
    train_cfg: TrainConfig
    seed: int
    history: list[dict] = field(default_factory=list)
    prefix_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0

    @property
    def metrics(self) -> dict:
        """The last evaluation (what the model ended with)."""
        return self.history[-1] if self.history else {}

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(
            path, self.model, data_spec=self.data_spec, train_spec=self.train_cfg.to_dict(), seed=self.seed,
            history=self.history, metrics=self.metrics, prefix_state=self.prefix_state,
        )


@torch.no_grad()
def induction_probe(model: AttnOnlyTransformer, half_len: int, gap: int = 0, batch: int = 256,
                    seed: int = EVAL_SEED) -> dict:
    """Losses and head scores on ``[BOS, r, g, r]`` (``g`` of length ``gap``; ``gap=0`` is the probe ``[BOS, r, r]``).

    Returns ``loss_first`` (mean loss on the first copy of r), ``loss_repeat``
    (on the second copy except its first token, which nothing can predict),
    and per-head ``induction`` (from the tokens of the second copy) and
    ``prev_token`` scores ``[n_layers][n_heads]``.
    """
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    toks = repeated_tokens(V, half_len, batch, g) if gap == 0 else repeated_tokens_with_gap(V, half_len, gap, batch, g)
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    loss = next_token_loss(logits, toks)  # loss[:, p] is for the token at p + 1
    second = 1 + half_len + gap  # position of the first token of the second copy
    in_second_copy = torch.arange(toks.shape[1]) >= second
    out = {
        "loss_first": loss[:, :half_len].mean().item(),
        "loss_repeat": loss[:, second:].mean().item(),
        "induction": [induction_score(cache["pattern", l], toks, in_second_copy).tolist()
                      for l in range(model.cfg.n_layers)],
        "prev_token": [previous_token_score(cache["pattern", l]).tolist() for l in range(model.cfg.n_layers)],
    }
    return out


def true_next_token_probs(dataset, tokens: torch.Tensor) -> torch.Tensor | None:
    """``[batch, pos, d_vocab]`` exact next-token distributions, for languages that know them."""
    if hasattr(dataset, "next_token_probs"):
        return dataset.next_token_probs(tokens)
    if hasattr(dataset, "transition"):
        return dataset.transition[tokens]
    return None


def kl_to_truth(logits: torch.Tensor, true_probs: torch.Tensor) -> float:
    """Mean over positions of ``KL(P_true || P_model)`` in nats (``0 log 0 = 0``).

    ``logits [batch, pos, d_vocab]``, ``true_probs [batch, pos, d_vocab]``; the last
    position (which predicts past the sequence) is left out.
    """
    p = true_probs[:, :-1].double()
    log_q = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    log_p = torch.log(p.clamp_min(1e-300))
    return (p * (log_p - log_q)).sum(-1).mean().item()


@torch.no_grad()
def evaluate(model: AttnOnlyTransformer, dataset, step: int, *, off_probe: bool = True, batch: int = 256) -> dict:
    """Validation loss on a fixed batch of ``dataset`` (and, where the language
    knows its true next-token distribution, the KL from it), and the induction
    probes (at the probe's offset and at a different one, so a positional
    shortcut cannot pass), and the off-probe evaluations of
    :func:`toylab.causal.evaluation.off_probe_metrics` (``nobos_*``, ``randfirst_*``,
    ``segment_*``, ``uniform_loss``; left out where the context is too short, or
    when ``off_probe=False``: a third or more of an evaluation's cost, for a live run
    that does not look at them). Every one of them reads ``batch`` sequences
    (:attr:`TrainConfig.eval_batch`, 256 in every preset)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch (TrainConfig.eval_batch) must be a positive integer, got {batch!r}")
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(EVAL_SEED)
    tokens = dataset.sample(batch, g)
    logits = model(tokens)
    val = next_token_loss(logits, tokens).mean().item()
    truth = true_next_token_probs(dataset, tokens)
    L = probe_half_len(model.cfg.n_ctx)
    probe = induction_probe(model, L, batch=batch)
    gap_len = max(L // 2, 1)
    gapped = induction_probe(model, L - gap_len, gap=gap_len + 1, batch=batch)  # offset L + 1 instead of L
    extra = off_probe_metrics(model, batch) if off_probe and off_probe_applies(model) else {}
    model.train(was_training)
    best = lambda rows: max((max(r) for r in rows), default=0.0)  # noqa: E731
    return {
        "step": step,
        "val_loss": val,
        "kl_to_truth": kl_to_truth(logits, truth) if truth is not None else None,
        **probe,
        "loss_repeat_gap": gapped["loss_repeat"],
        "induction_gap": gapped["induction"],
        "best_induction": best(probe["induction"]),
        "best_prev_token": best(probe["prev_token"]),
        **extra,
    }


def train(
    model_cfg: ModelConfig,
    data_spec: dict,
    train_cfg: TrainConfig = TrainConfig(),
    seed: int = 0,
    *,
    progress: bool = True,
    desc: str = "train",
    callback: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    off_probe: bool = True,
) -> TrainResult:
    """Train a fresh model; returns a :class:`TrainResult`.

    ``callback(entry)`` is called after each evaluation with the history entry.
    ``stop_after=n`` runs only the first ``n`` steps of the same schedule
    (used to re-derive a shipped model's recorded prefix).
    ``off_probe=False`` leaves the off-probe evaluations out of every history entry
    (see :func:`evaluate`); the weights trained are the same either way, since
    evaluation draws from its own generators.
    Ctrl-C (a ``KeyboardInterrupt``, also one raised by ``callback``) raises
    :class:`TrainingInterrupted`, whose ``.result`` is what was trained so far,
    its last history entry evaluated at the step reached and marked
    ``"partial": True`` (``toylab train`` saves it as ``NAME.partial.pt``).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63) (torch generators take 64-bit seeds), got {seed!r}")
    if not isinstance(off_probe, bool):
        raise TypeError(f"off_probe must be True or False, got {off_probe!r}")
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    dataset = make_dataset(data_spec)
    if dataset.d_vocab != model_cfg.d_vocab or dataset.n_ctx > model_cfg.n_ctx:
        raise ValueError(
            f"data (d_vocab={dataset.d_vocab}, n_ctx={dataset.n_ctx}) does not fit the model "
            f"(d_vocab={model_cfg.d_vocab}, n_ctx={model_cfg.n_ctx})"
        )
    reuse_freed_memory()  # a step's tensors reuse freed pages instead of faulting in new ones (toylab.training.allocator)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        with torch.enable_grad():  # also when the caller switched autograd off (a notebook often does)
            return _train_loop(model_cfg, dataset, train_cfg, seed, progress, desc, callback,
                               stop_after, off_probe)
    finally:
        torch.set_num_threads(old_threads)


def _partial_result(result: "TrainResult", dataset, done: int, start: float,
                    off_probe: bool = True) -> "TrainResult":
    """``result`` of a loop interrupted after ``done`` completed optimiser steps, with a
    final evaluation at that step marked ``partial``."""
    result.seconds = time.perf_counter() - start
    entry = (evaluate_full_batch(result.model, dataset, done) if is_full_batch(dataset) else
             evaluate(result.model, dataset, done, off_probe=off_probe, batch=result.train_cfg.eval_batch))
    entry["partial"] = True
    entry["steps_planned"] = result.train_cfg.steps
    result.history.append(entry)
    result.model.eval()
    return result


DECAYED = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


def is_decayed(name: str) -> bool:
    """Whether the parameter ``name`` gets weight decay: the blocks' weight matrices (attention and
    MLP, :data:`DECAYED`), not the embeddings, the unembedding, biases or LayerNorm weights."""
    return name.split(".")[-1] in DECAYED


def make_optimizer(named: list[tuple[str, torch.Tensor]], cfg: TrainConfig) -> AdamW:
    """AdamW as every training run builds it, on ``(name, parameter)`` pairs: weight decay on the
    parameters :func:`is_decayed` names (on all of them with ``cfg.decay_all``), none on the
    others, the learning rate of step 1, and the fused update (one kernel for all parameters:
    half the optimiser time of the per-tensor loop)."""
    decayed = lambda n: cfg.decay_all or is_decayed(n)  # noqa: E731
    groups = [{"params": [p for n, p in named if decayed(n)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if not decayed(n)], "weight_decay": 0.0}]
    return AdamW(groups, lr=cfg.lr_at(1), betas=cfg.betas, fused=True)


def optimizer_step(opt: AdamW, cfg: TrainConfig, step: int, compute_loss: Callable[[], torch.Tensor],
                   clip: Callable[[], object]) -> torch.Tensor:
    """One training step at ``step``'s learning rate: ``loss = compute_loss()`` (a scalar, or one
    loss per seed ``[S]``, whose sum is differentiated), the gradient, ``clip()`` when
    ``cfg.grad_clip`` is set, the update. Returns the loss."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr_at(step)
    loss = compute_loss()
    opt.zero_grad(set_to_none=True)
    (loss if loss.dim() == 0 else loss.sum()).backward()
    if cfg.grad_clip:
        clip()
    opt.step()
    return loss


def _train_loop(model_cfg, dataset, cfg: TrainConfig, seed, progress, desc, callback, stop_after,
                off_probe: bool = True) -> TrainResult:
    model = AttnOnlyTransformer(model_cfg, seed=seed)
    data_gen = torch.Generator().manual_seed(seed + 1)
    dropout_hooks = last_layer_dropout(model_cfg, cfg.head_dropout, seed)

    def step_loss():
        tokens = dataset.sample(cfg.batch_size, data_gen)
        if not dropout_hooks:
            return model(tokens, return_type="loss")
        with model.hooks(dropout_hooks):
            return model(tokens, return_type="loss")
    opt = make_optimizer(list(model.named_parameters()), cfg)
    result = TrainResult(model, dataset.spec, cfg, seed)
    full = is_full_batch(dataset)  # every training pair at every step (toylab.training.full_batch)
    loss_fn = training_loss(model, dataset) if full else step_loss
    states = []  # full batch: the weights at each evaluation, for the progress measures
    start = time.perf_counter()
    running, n_running = 0.0, 0
    model.train()
    last = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    done = 0  # optimiser steps completed: what a Ctrl-C keeps
    try:
        with Progress(last, desc, enabled=progress) as bar:
            for step in range(1, last + 1):
                loss = optimizer_step(opt, cfg, step, loss_fn,
                                      lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                done = step
                running, n_running = running + loss.item(), n_running + 1
                if step == cfg.prefix_steps:
                    result.prefix_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if step % cfg.eval_every == 0 or step == last:
                    if full:  # train_loss: on every training pair after this step
                        entry = evaluate_full_batch(model, dataset, step)
                        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                    else:
                        entry = evaluate(model, dataset, step, off_probe=off_probe, batch=cfg.eval_batch)
                        entry["train_loss"] = running / n_running
                    entry["seconds"] = time.perf_counter() - start
                    running, n_running = 0.0, 0
                    result.history.append(entry)
                    if callback is not None:
                        callback(entry)
                    shown = {"test_acc": entry["test_acc"]} if full else {"induction": entry["best_induction"]}
                    bar.update(0, loss=entry["train_loss"], **shown)
                bar.update(1)
    except KeyboardInterrupt:
        if done < 1:
            raise
        raise TrainingInterrupted(_partial_result(result, dataset, done, start, off_probe)) from None
    result.seconds = time.perf_counter() - start
    if full:
        add_progress_measures(model, dataset, result.history, states)
    model.eval()
    return result
