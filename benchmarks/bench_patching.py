"""Speed of a full heads x positions activation-patching sweep on the shipped induction-2l model.

Denoising ``hook_z`` of every head at every position (2 layers x 2 heads x 31
positions = 124 cells) on the probe [BOS, r, r] (half_len 15) against
[BOS, r', r'], metric = log-prob of the clean next tokens on the repeated copy.
Times, in the same run, the batched implementation (many cells per forward
pass) and the naive loop (one forward pass per cell), checks they agree, and
prints both times and their ratio (best of ``--repeats``).

    python benchmarks/bench_patching.py [--batch 32] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from toylab.data import repeated_tokens
from toylab.causal.interventions import make_metric
from toylab.causal.patching import patch_sweep
from toylab.training.presets import load_model


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("induction-2l")
    half = 15
    g = torch.Generator().manual_seed(0)
    clean = repeated_tokens(model.cfg.d_vocab, half, args.batch, g)
    corrupted = repeated_tokens(model.cfg.d_vocab, half, args.batch, g)
    metric = make_metric("logprob", clean, positions=range(1 + half, 2 * half))
    n_cells = model.cfg.n_layers * model.cfg.n_heads * clean.shape[1]
    t_batched, v_batched = best_time(lambda: patch_sweep(model, clean, corrupted, metric)[0], args.repeats)
    t_naive, v_naive = best_time(lambda: patch_sweep(model, clean, corrupted, metric, cells_per_pass=1)[0],
                                 args.repeats)
    err = (v_batched - v_naive).abs().max().item()
    print(f"induction-2l, hook_z sweep: {n_cells} cells (heads x positions), batch {args.batch}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"  batched : {t_batched:8.3f} s")
    print(f"  naive   : {t_naive:8.3f} s  (one forward pass per cell)")
    print(f"  ratio naive / batched: {t_naive / t_batched:.2f}x   max |difference| {err:.2e}")


if __name__ == "__main__":
    main()
