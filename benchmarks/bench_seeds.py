"""Training several seeds of one preset: one by one, batched with ``torch.vmap``, or in two processes.

Issue 23 ("Seeds, fast") asks whether the methods suite should train its seeds batched in one
process (the seeds' models stacked by ``torch.func.stack_module_state``, one forward pass for all
through ``torch.vmap`` over ``functional_call``, one AdamW step on the ``[S, ...]`` parameters)
or one by one. For ``S`` seeds of a preset (default induction-2l) trained ``N`` steps this prints,
per variant, wall and CPU time per seed-step and the fraction of the matmul-peak bound it reaches:

* ``one-by-one``: the seeds in turn, each with the step of ``toylab.training.train.train`` (the
  same weights, bit for bit: checked at the start);
* ``vmap-fast``: batched, the model's fused fast path (``scaled_dot_product_attention``, which
  vmap runs slice by slice: torch has no batching rule for it on CPU);
* ``vmap-ref``: batched, the model's reference attention path (einsums, which vmap batches);
* ``seed-dim``: batched without vmap, a hand-written forward pass whose every tensor has a
  leading seed axis (``bmm`` per projection, one attention call over ``S * batch`` sequences;
  attention-only shortformer models without biases or LayerNorm; with ``--seed-dim``);
* ``2-procs``: the seeds split over two forked processes, each one by one (with ``--procs``).

The bound: the step's FLOPs (``--step-gflop``, default the issue's 1.21 GFLOP for a batch-128
induction-2l step; the analytic count of ``bench_train.py`` is printed beside it) over the
one-thread float32 matmul peak measured in the same run. CPU time is this process's (and, for
``2-procs``, its children's). The variants are interleaved and repeated (``--repeats``) so that a
change in the machine's load hits them alike; the spread over repeats is printed. Last, how far the
batched results are from the one-by-one ones: max |difference| of every parameter after N steps
and of the loss curves. Batching needs the forward pass to run under vmap (tests/test_model_vmap.py).

    python benchmarks/bench_seeds.py [--preset induction-2l] [--seeds 3 6] [--steps 30] [--repeats 3] [--procs] [--seed-dim]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import matmul_peak, train_flops_per_token  # noqa: E402

from toylab.data import make_dataset  # noqa: E402
from toylab.model import AttnOnlyTransformer  # noqa: E402
from toylab.training.allocator import reuse_freed_memory  # noqa: E402
from toylab.training.presets import get_preset  # noqa: E402
from toylab.training.train import make_optimizer, optimizer_step, train  # noqa: E402

# vmap's slice-by-slice fallback for scaled_dot_product_attention warns once per call site
warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)


def train_one_by_one(preset, seeds, steps):
    """``{seed: (params {name: tensor}, losses [steps])}``, each seed trained as ``train`` does (no evaluation)."""
    cfg, dataset, out = preset.train, make_dataset(preset.data), {}
    for s in seeds:
        model = AttnOnlyTransformer(preset.model, seed=s)
        gen = torch.Generator().manual_seed(s + 1)
        opt = make_optimizer(list(model.named_parameters()), cfg)
        model.train()
        losses = []
        for step in range(1, steps + 1):
            loss = optimizer_step(opt, cfg, step, lambda: model(dataset.sample(cfg.batch_size, gen), return_type="loss"),
                                  lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            losses.append(loss.detach())
        out[s] = ({n: p.detach().clone() for n, p in model.named_parameters()}, torch.stack(losses))
    return out


def clip_per_seed(grads, max_norm: float) -> None:
    """``grads`` each ``[S, ...]``: seed s's scaled by ``min(1, max_norm / (||g_s|| + 1e-6))``, as
    ``clip_grad_norm_`` does for one model (``||g_s||`` over all of seed s's parameters)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads])  # [n_params, S]
    coef = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)  # [S]
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))


def sample_stack(dataset, cfg, gens) -> torch.Tensor:
    """One training batch per seed, ``[S, batch, pos]``, each from its seed's own generator."""
    return torch.stack([dataset.sample(cfg.batch_size, g) for g in gens])


def clip_stacked(params: dict, names: list[str], cfg) -> None:
    """:func:`clip_per_seed` on the stacked parameters' gradients."""
    with torch.no_grad():
        clip_per_seed([params[n].grad for n in names], cfg.grad_clip)


def train_batched(preset, seeds, steps, fast: bool = True):
    """The same result as :func:`train_one_by_one`, all seeds in one vmapped step: parameters
    ``[S, ...]``, tokens ``[S, batch, pos]``, losses ``[S]``; ``d(sum_s loss_s)/d params_s`` is
    seed s's own gradient, and AdamW is elementwise, so one step on the stack is S steps."""
    cfg, dataset = preset.train, make_dataset(preset.data)
    models = [AttnOnlyTransformer(preset.model, seed=s) for s in seeds]
    gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
    params, buffers = stack_module_state(models)
    names = list(params)
    opt = make_optimizer([(n, params[n]) for n in names], cfg)
    base = models[0]
    base.train()
    base.fast_path = fast
    losses_of = torch.vmap(lambda p, b, t: functional_call(base, (p, b), (t,), {"return_type": "loss"}))
    curve = []
    for step in range(1, steps + 1):
        loss = optimizer_step(opt, cfg, step, lambda: losses_of(params, buffers, sample_stack(dataset, cfg, gens)),
                              lambda: clip_stacked(params, names, cfg))
        curve.append(loss.detach())
    curve = torch.stack(curve)  # [steps, S]
    return {s: ({n: params[n][i].detach().clone() for n in names}, curve[:, i]) for i, s in enumerate(seeds)}


def seed_dim_losses(P: dict, tokens: torch.Tensor, cfg) -> torch.Tensor:
    """A hand-written forward pass with a leading seed axis, for attention-only shortformer models
    without biases or LayerNorm (induction-2l): ``P[name] [S, ...]``, ``tokens [S, batch, pos]``
    -> mean next-token loss per seed ``[S]``. The same map as the model's fast path; every
    projection is one ``bmm`` over the seeds, attention one ``scaled_dot_product_attention``
    over ``S * batch`` sequences."""
    S, B, n = tokens.shape
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    x = torch.stack([P["W_E"][i][tokens[i]] for i in range(S)]).view(S, B * n, d)
    pos = P["W_pos"][:, :n].repeat(1, B, 1)  # [S, B * n, d]

    def heads(inp, W):  # W [S, h, d, e] -> [S * B, h, n, e]
        return torch.bmm(inp, W.transpose(1, 2).reshape(S, d, h * e)).view(S * B, n, h, e).transpose(1, 2)

    for l in range(cfg.n_layers):
        a = f"blocks.{l}.attn."
        qk = x + pos
        z = torch.nn.functional.scaled_dot_product_attention(
            heads(qk, P[a + "W_Q"]), heads(qk, P[a + "W_K"]), heads(x, P[a + "W_V"]), is_causal=True)
        x = x + torch.bmm(z.transpose(1, 2).reshape(S, B * n, h * e), P[a + "W_O"].flatten(1, 2))
    logits = torch.bmm(x.view(S, B, n, d)[:, :, :-1].reshape(S, B * (n - 1), d), P["W_U"])
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, tokens[:, :, 1:].reshape(S, -1, 1)).squeeze(-1).mean(1)


def train_seed_dim(preset, seeds, steps):
    """:func:`train_batched` with :func:`seed_dim_losses` in place of vmap."""
    mc = preset.model
    if mc.positional != "shortformer" or mc.biases or mc.layernorm or mc.d_mlp:
        raise ValueError("seed-dim: only attention-only shortformer models without biases or LayerNorm")
    cfg, dataset = preset.train, make_dataset(preset.data)
    models = [AttnOnlyTransformer(mc, seed=s) for s in seeds]
    gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
    params, _ = stack_module_state(models)
    names = list(params)
    opt = make_optimizer([(n, params[n]) for n in names], cfg)
    curve = []
    for step in range(1, steps + 1):
        loss = optimizer_step(opt, cfg, step, lambda: seed_dim_losses(params, sample_stack(dataset, cfg, gens), mc),
                              lambda: clip_stacked(params, names, cfg))
        curve.append(loss.detach())
    curve = torch.stack(curve)
    return {s: ({n: params[n][i].detach().clone() for n in names}, curve[:, i]) for i, s in enumerate(seeds)}


def _worker(args):
    torch.set_num_threads(1)
    name, seeds, steps = args
    return train_one_by_one(get_preset(name), seeds, steps)


def train_two_procs(preset, seeds, steps):
    """The seeds split over two forked processes, each training its share one by one."""
    halves = [seeds[0::2], seeds[1::2]]
    out = {}
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        for part in pool.map(_worker, [(preset.name, h, steps) for h in halves if h]):
            out.update(part)
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn, *args):
    """``(result, wall s, cpu s)``; CPU counts this process and its finished children."""
    w, c, k = time.perf_counter(), time.process_time(), children_cpu()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c + children_cpu() - k


def max_diff(a, b) -> tuple[float, float]:
    """Max |a - b| over the seeds' parameters, and over their loss curves."""
    dp = max((a[s][0][n] - b[s][0][n]).abs().max().item() for s in a for n in a[s][0])
    dl = max((a[s][1] - b[s][1]).abs().max().item() for s in a)
    return dp, dl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="induction-2l")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 6], help="numbers of seeds S to try")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", action="store_true", help="also the seeds in two forked processes")
    ap.add_argument("--seed-dim", action="store_true",
                    help="also a hand-written forward with a leading seed axis (attention-only shortformer only)")
    ap.add_argument("--step-gflop", type=float, default=1.21, help="FLOPs of one step, GFLOP (the issue's count)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reuse_freed_memory()
    preset = get_preset(args.preset)
    cfg = preset.train

    ref = train(preset.model, preset.data, cfg, seed=0, progress=False, stop_after=3, off_probe=False).model
    mine = train_one_by_one(preset, [0], 3)[0][0]
    same = all(torch.equal(p, mine[n]) for n, p in ref.named_parameters())
    print(f"one-by-one loop equals train() after 3 steps, bit for bit: {same}")

    peak = matmul_peak()
    analytic = train_flops_per_token(preset.model, preset.data["n_ctx"]) * cfg.batch_size * preset.data["n_ctx"]
    bound = args.step_gflop * 1e9 / peak["cpu"]
    print(f"one thread; float32 matmul peak {peak['cpu'] / 1e9:.1f} GFLOP/s (cpu clock), {peak['wall'] / 1e9:.1f} (wall)")
    print(f"{args.preset} step, batch {cfg.batch_size}: {args.step_gflop:.2f} GFLOP counted as the issue does "
          f"(bench_train's analytic count: {analytic / 1e9:.2f}); bound {bound * 1e3:.1f} ms per seed-step")

    variants = {"one-by-one": train_one_by_one, "vmap-fast": lambda p, s, n: train_batched(p, s, n, True),
                "vmap-ref": lambda p, s, n: train_batched(p, s, n, False)}
    if args.seed_dim:
        variants["seed-dim"] = train_seed_dim
    if args.procs:
        variants["2-procs"] = train_two_procs
    for S in args.seeds:
        seeds = list(range(S))
        times = {k: {"wall": [], "cpu": []} for k in variants}
        results = {}
        for rep in range(args.repeats):
            order = list(variants) if rep % 2 == 0 else list(variants)[::-1]  # interleaved, alternating order
            for name in order:
                out, wall, cpu = timed(variants[name], preset, seeds, args.steps)
                times[name]["wall"].append(wall / (S * args.steps))
                times[name]["cpu"].append(cpu / (S * args.steps))
                results.setdefault(name, out)
        print(f"\nS = {S} seeds x {args.steps} steps, {args.repeats} repeats (median [min, max]), ms per seed-step:")
        print(f"{'variant':12s} {'wall':>24s} {'cpu':>24s} {'bound/cpu':>9s} {'cpu vs 1-by-1':>13s}  max|dparam|  max|dloss|")
        base_cpu = statistics.median(times["one-by-one"]["cpu"])
        for name, t in times.items():
            cell = {k: f"{statistics.median(v) * 1e3:7.1f} [{min(v) * 1e3:6.1f}, {max(v) * 1e3:6.1f}]" for k, v in t.items()}
            cpu = statistics.median(t["cpu"])
            dp, dl = max_diff(results["one-by-one"], results[name])
            print(f"{name:12s} {cell['wall']:>24s} {cell['cpu']:>24s} {bound / cpu:9.0%} {cpu / base_cpu:12.2f}x"
                  f"  {dp:10.2e}  {dl:10.2e}")


if __name__ == "__main__":
    main()
