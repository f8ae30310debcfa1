"""Training speed, measured against references taken in the same run.

Prints, for this machine and thread count:

1. the float32 matmul peak (a 512 x 512 x 512 matmul, best of several); an
   induction-2l step's minor page faults and time under glibc malloc's defaults,
   then with :func:`toylab.training.allocator.reuse_freed_memory`, which every later
   measurement keeps (as ``train()`` does);
2. per preset: step time, training tokens/s, achieved FLOP/s and its fraction
   of that peak (FLOPs counted analytically: 3 x the forward matmuls);
3. on induction-2l: the fused fast path against the hooked reference path
   (what every step cost before the fast path), and where a training step goes
   (data, forward, backward, clipping, optimiser);
4. the canonical 2L run: wall time to the phase change (repeated-half loss
   below ln(V)/2) and until the best induction score first exceeds 0.9, and
   the one-off cost of the first optimiser step, toylab's and torch's (torch's
   imports torch._dynamo);
5. with ``--profile``: where a training step's CPU time goes, by operator;
6. if transformer_lens is importable: the step time of an equivalent
   HookedTransformer (same config, optimiser, batch) and the ratio toylab /
   TransformerLens, on the induction-2l config attention-only, then with an MLP
   (d_mlp = 4 d_model, ReLU), then with a GELU MLP and learned LayerNorm
   (``--tl-only`` runs only this part).

Every time is taken twice: wall clock and this thread's CPU time. On a
machine shared with other jobs the wall times include waiting for a core;
the CPU times (and the ratios of CPU times) are what the code costs.

    python benchmarks/bench_train.py [--threads N] [--steps N] [--skip-2l] [--profile] [--tl-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import statistics
import time

import torch

from toylab.training.allocator import reuse_freed_memory
from toylab.training.full_batch import is_full_batch
from toylab.data import make_dataset
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.optim import AdamW
from toylab.training.presets import PRESETS
from toylab.training.train import evaluate, train


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def matmul_peak(n: int = 512, repeats: int = 30) -> dict[str, float]:
    """Best observed float32 FLOP/s of an ``n x n`` matmul, per clock (``wall``, ``cpu``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    best = {k: math.inf for k in CLOCKS}
    for _ in range(repeats):
        t = {k: c() for k, c in CLOCKS.items()}
        a @ b
        for k, c in CLOCKS.items():
            best[k] = min(best[k], c() - t[k])
    return {k: 2 * n**3 / v for k, v in best.items()}


def train_flops_per_token(cfg: ModelConfig, n_pos: int) -> float:
    """Forward matmul FLOPs per token x 3 (backward is about twice the forward).

    Per layer: Q, K, V and O projections ``4 * 2 d^2``; scores and mixing over
    all ``n_pos`` keys (the masked half is computed too) ``2 * 2 n_pos d``.
    Unembedding ``2 d V``. The embedding is a lookup.
    """
    d = cfg.d_model
    forward = cfg.n_layers * (8 * d * d + 4 * n_pos * d) + 2 * d * cfg.d_vocab
    return 3 * forward


def time_steps(step, n_steps: int, clock: str = "wall") -> float:
    """Median seconds per call of ``step()`` after a warm-up (``clock``: ``wall`` or ``cpu``)."""
    return time_steps_both(step, n_steps)[clock]


def time_steps_both(step, n_steps: int) -> dict[str, float]:
    """Median seconds per call of ``step()`` after a warm-up, on both clocks."""
    for _ in range(5):
        step()
    times = {k: [] for k in CLOCKS}
    for _ in range(n_steps):
        t = {k: c() for k, c in CLOCKS.items()}
        step()
        for k, c in CLOCKS.items():
            times[k].append(c() - t[k])
    return {k: statistics.median(v) for k, v in times.items()}


def interleaved(steps: dict, n_steps: int) -> dict[str, dict[str, float]]:
    """Median seconds per call of each ``steps[name]()``, the calls interleaved so that
    a change in the machine's load hits every variant alike; both clocks."""
    for step in steps.values():
        for _ in range(5):
            step()
    times = {name: {k: [] for k in CLOCKS} for name in steps}
    for _ in range(n_steps):
        for name, step in steps.items():
            t = {k: c() for k, c in CLOCKS.items()}
            step()
            for k, c in CLOCKS.items():
                times[name][k].append(c() - t[k])
    return {name: {k: statistics.median(v) for k, v in d.items()} for name, d in times.items()}


def train_step(model, batch):
    """One AdamW step of ``model`` (toylab's or TransformerLens's: both take ``return_type="loss"``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_allocator(n_steps: int) -> None:
    """induction-2l steps and their minor page faults under glibc malloc's defaults, then
    after :func:`toylab.training.allocator.reuse_freed_memory` (what ``train()`` sets; it cannot be
    undone, so the two are measured one after the other, not interleaved)."""
    preset = PRESETS["induction-2l"]
    batch = make_dataset(preset.data).sample(preset.train.batch_size, torch.Generator().manual_seed(0))
    step = train_step(AttnOnlyTransformer(preset.model, seed=0), batch)
    rows = []
    for label in ("malloc's defaults", "reuse_freed_memory()"):
        if label != "malloc's defaults" and not reuse_freed_memory():
            print("\nreuse_freed_memory() does not apply here (not glibc): malloc keeps its defaults")
            return
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sec = time_steps_both(step, n_steps)  # 5 warm-up steps, then n_steps timed
        rows.append((label, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (n_steps + 5), sec))
    print(f"\ninduction-2l step under glibc malloc (one after the other, {n_steps} steps each):")
    for label, faults, sec in rows:
        print(f"  {label:22s} {faults:6.0f} minor page faults/step  {sec['wall'] * 1e3:6.1f} ms wall "
              f"{sec['cpu'] * 1e3:6.1f} ms cpu")
    print("  every measurement below runs with reuse_freed_memory(), as toylab's train() does")


def bench_presets(n_steps: int, peak: dict[str, float]) -> None:
    print(f"\n{'preset':16s} {'batch x ctx':>11s} {'ms/step':>8s} {'cpu ms':>7s} {'tokens/s':>10s} {'GFLOP/s':>8s} "
          f"{'of peak':>8s} {'(cpu)':>6s}")
    for name, preset in PRESETS.items():
        cfg, tcfg = preset.model, preset.train
        data = make_dataset(preset.data)
        full = is_full_batch(data)  # grokking-1l: every training pair at every step
        batch = data.split("train")[0] if full else data.sample(tcfg.batch_size, torch.Generator().manual_seed(0))
        model = AttnOnlyTransformer(cfg, seed=0)
        sec = time_steps_both(train_step(model, batch), n_steps)
        tokens = batch.numel()
        flop = train_flops_per_token(cfg, batch.shape[1]) * tokens
        print(f"{name:16s} {batch.shape[0]:5d} x {batch.shape[1]:3d} {sec['wall'] * 1e3:8.1f} {sec['cpu'] * 1e3:7.1f} "
              f"{tokens / sec['wall']:10.0f} {flop / sec['wall'] / 1e9:8.1f} {flop / sec['wall'] / peak['wall']:8.0%} "
              f"{flop / sec['cpu'] / peak['cpu']:6.0%}")


def bench_paths_and_parts(n_steps: int, peak: dict[str, float]) -> None:
    """induction-2l: fast path vs hooked path (interleaved), then where a training step goes."""
    preset = PRESETS["induction-2l"]
    cfg, tcfg = preset.model, preset.train
    data = make_dataset(preset.data)
    batch = data.sample(tcfg.batch_size, torch.Generator().manual_seed(0))
    flop = train_flops_per_token(cfg, batch.shape[1]) * batch.numel()
    fast, hooked = AttnOnlyTransformer(cfg, seed=0), AttnOnlyTransformer(cfg, seed=0)
    hooked.fast_path = False
    t = interleaved({"fast": train_step(fast, batch), "hooked": train_step(hooked, batch)}, n_steps)
    print(f"\ninduction-2l step, batch {batch.shape[0]} x {batch.shape[1]} ({flop / 1e9:.2f} GFLOP), interleaved:")
    for name in ("hooked", "fast"):
        print(f"  {name:7s} path  {t[name]['wall'] * 1e3:6.1f} ms wall {t[name]['cpu'] * 1e3:6.1f} ms cpu   "
              f"{flop / t[name]['cpu'] / peak['cpu']:4.0%} of peak (cpu)")
    print(f"  fast / hooked = {t['fast']['cpu'] / t['hooked']['cpu']:.2f} (cpu), "
          f"{t['fast']['wall'] / t['hooked']['wall']:.2f} (wall)")

    # where a step of the training loop goes (the loop's own recipe: fused AdamW, clipping)
    model = AttnOnlyTransformer(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=tcfg.betas, fused=True)
    gen = torch.Generator().manual_seed(1)
    parts = {k: 0.0 for k in ("data", "forward", "backward", "clip", "optimiser")}
    clock = time.thread_time
    for i in range(n_steps + 5):
        t0 = clock()
        tokens = data.sample(tcfg.batch_size, gen)
        t1 = clock()
        loss = model(tokens, return_type="loss")
        t2 = clock()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = clock()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        t4 = clock()
        opt.step()
        loss.item()
        t5 = clock()
        if i >= 5:
            for k, (a, b) in zip(parts, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]):
                parts[k] += (b - a) / n_steps
    total = sum(parts.values())
    print("  a training step (cpu): " + ", ".join(f"{k} {v * 1e3:.2f} ms ({v / total:.0%})" for k, v in parts.items()))


def bench_profile(n_steps: int, top: int = 15) -> None:
    """induction-2l: the operators a training step of the loop's recipe spends its CPU time in
    (``torch.profiler``, self time, grouped by operator and input shapes), per step."""
    from torch.profiler import ProfilerActivity, profile

    preset = PRESETS["induction-2l"]
    tcfg = preset.train
    model = AttnOnlyTransformer(preset.model, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3, betas=tcfg.betas, fused=True)
    batch = make_dataset(preset.data).sample(tcfg.batch_size, torch.Generator().manual_seed(0))

    def step():
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n_steps):
            step()
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\nprofile of an induction-2l training step (torch.profiler, {n_steps} steps; self CPU time per step, "
          f"{total / n_steps / 1e3:.1f} ms in all, profiler overhead included):")
    for e in rows[:top]:
        shapes = str([list(s) for s in e.input_shapes if s])[:58]
        print(f"  {e.self_cpu_time_total / n_steps / 1e3:6.2f} ms {e.self_cpu_time_total / total:4.0%}  "
              f"{e.count // n_steps:3d} calls  {e.key[:44]:44s} {shapes}")


def bench_induction_run() -> None:
    preset = PRESETS["induction-2l"]
    tcfg = dataclasses.replace(preset.train, eval_every=25)
    half_ln_v = 0.5 * math.log(preset.model.d_vocab)
    marks: dict[str, float] = {}

    def watch(entry):
        if "phase change" not in marks and entry["loss_repeat"] < half_ln_v:
            marks["phase change"] = entry["seconds"]
        if "induction > 0.9" not in marks and max(entry["induction"][1]) > 0.9:
            marks["induction > 0.9"] = entry["seconds"]

    # as chapter 4's live run does: the on-probe history only (the same weights either way)
    result = train(preset.model, preset.data, tcfg, seed=preset.seed, progress=False, callback=watch,
                   off_probe=False)
    print(f"\ninduction-2l, {tcfg.steps} steps, evaluating every {tcfg.eval_every} without the off-probe "
          "metrics, as chapter 4's live run (evaluation time included):")
    for key in ("phase change", "induction > 0.9"):
        print(f"  {key:18s} {marks.get(key, float('nan')):6.1f} s wall")
    n_evals = len(result.history)
    for off_probe in (False, True):
        t0 = time.perf_counter()
        evaluate(result.model, make_dataset(preset.data), tcfg.steps, off_probe=off_probe)
        one_eval = time.perf_counter() - t0
        print(f"  evaluation{' + off-probe' if off_probe else '            '} {one_eval:6.2f} s each; "
              f"{n_evals} of them would be {one_eval * n_evals / result.seconds:.0%} of this run")
    m = result.metrics
    print(f"  whole run          {result.seconds:6.1f} s; final induction {max(m['induction'][1]):.2f}, "
          f"previous-token {max(m['prev_token'][0]):.2f}, repeated-half loss {m['loss_repeat']:.3f}")


def bench_transformer_lens(n_steps: int) -> None:
    """toylab against TransformerLens on the induction-2l config, attention-only and with an MLP of
    width 4 d_model in each layer (ReLU; then GELU with learned LayerNorm), same batch, same optimiser."""
    import warnings

    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        print("\ntransformer_lens is not importable: no comparison (make bench-tl installs it in .venv-tl)")
        return
    preset = PRESETS["induction-2l"]
    batch = make_dataset(preset.data).sample(preset.train.batch_size, torch.Generator().manual_seed(0))
    d = preset.model.d_model
    variants = {
        "attention-only": preset.model,
        f"MLP d_mlp={4 * d} relu": dataclasses.replace(preset.model, d_mlp=4 * d),
        f"MLP d_mlp={4 * d} gelu + LN": dataclasses.replace(preset.model, d_mlp=4 * d, act_fn="gelu",
                                                            layernorm=True, ln_affine=True),
    }
    for label, cfg in variants.items():
        norm = ("LN" if cfg.ln_affine else "LNPre") if cfg.layernorm else None
        tl_cfg = HookedTransformerConfig(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
            d_vocab=cfg.d_vocab, attn_only=cfg.d_mlp == 0, d_mlp=cfg.d_mlp or None, normalization_type=norm,
            positional_embedding_type=cfg.positional, act_fn=cfg.act_fn, device="cpu", seed=0,
        )
        t = interleaved({"toylab": train_step(AttnOnlyTransformer(cfg, seed=0), batch),
                         "TransformerLens": train_step(HookedTransformer(tl_cfg), batch)}, n_steps)
        print(f"\nstep time on the induction-2l config, {label}, batch {batch.shape[0]} x {batch.shape[1]} "
              "(interleaved):")
        for name, r in t.items():
            print(f"  {name:16s} {r['wall'] * 1e3:7.1f} ms wall {r['cpu'] * 1e3:7.1f} ms cpu")
        print(f"  ratio toylab / TransformerLens = {t['toylab']['cpu'] / t['TransformerLens']['cpu']:.2f} (cpu), "
              f"{t['toylab']['wall'] / t['TransformerLens']['wall']:.2f} (wall); below 1: toylab is faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the training default is 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--skip-2l", action="store_true", help="skip the full induction-2l training run")
    parser.add_argument("--profile", action="store_true", help="also profile a training step by operator")
    parser.add_argument("--tl-only", action="store_true", help="only the comparison with TransformerLens")
    args = parser.parse_args()
    if args.tl_only:
        torch.set_num_threads(args.threads)
        reuse_freed_memory()
        bench_transformer_lens(args.steps)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    first = {}
    for name, cls in (("toylab.training.optim.AdamW", AdamW), ("torch.optim.AdamW", torch.optim.AdamW)):
        t0, c0 = time.perf_counter(), time.thread_time()
        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.ones(1)
        opt = cls([p])
        opt.zero_grad(set_to_none=False)
        opt.step()
        first[name] = (time.perf_counter() - t0, time.thread_time() - c0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); the first optimiser step of a process costs "
          + ", ".join(f"{n} {w:.2f} s wall ({c:.2f} s cpu)" for n, (w, c) in first.items())
          + " (torch's imports torch._dynamo)")
    peak = matmul_peak()
    print(f"float32 matmul peak {peak['wall'] / 1e9:.1f} GFLOP/s wall, {peak['cpu'] / 1e9:.1f} GFLOP/s cpu")
    bench_allocator(args.steps)  # from here on malloc keeps freed memory, as in toylab's train()
    bench_presets(args.steps, peak)
    bench_paths_and_parts(args.steps, peak)
    if not args.skip_2l:
        bench_induction_run()
    if args.profile:
        bench_profile(args.steps)
    bench_transformer_lens(args.steps)


if __name__ == "__main__":
    main()
