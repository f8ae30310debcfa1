"""Speed of the weight analysis, against the time of a forward pass measured in the same run.

Prints:
1. the whole head report of each shipped model (first call and warm), next to
   the time of one forward pass of the same model on the same probe;
2. full-OV copying scores of a random 1-layer model with d_vocab = 50 000 and
   d_model = 512 (8 heads), with the peak resident memory of the process, next
   to the memory one dense d_vocab x d_vocab float32 circuit would take.

    python benchmarks/bench_analysis.py [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from toylab.circuits.copying import copying_scores
from toylab.data import probe_half_len, repeated_tokens
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import PRESETS, load_model
from toylab.circuits.report import head_report


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"\n{'model':16s} {'report, 1st':>12s} {'report, warm':>12s} {'forward':>9s} {'warm / fwd':>10s}")
    for name in PRESETS:
        model = load_model(name)
        if model.cfg.n_layers == 0:
            continue
        probe = repeated_tokens(model.cfg.d_vocab, probe_half_len(model.cfg.n_ctx), 64, torch.Generator().manual_seed(0))
        first = seconds(lambda: head_report(model))
        warm = min(seconds(lambda: head_report(model)) for _ in range(3))
        with torch.no_grad():
            fwd = min(seconds(lambda: model(probe)) for _ in range(5))
        print(f"{name:16s} {first:11.2f}s {warm:11.2f}s {fwd * 1e3:7.1f}ms {warm / fwd:9.0f}x")

    cfg = ModelConfig(d_vocab=50_000, n_ctx=8, d_model=512, n_layers=1, n_heads=8)
    big = AttnOnlyTransformer(cfg, seed=0)
    before = peak_rss_gb()
    t = seconds(lambda: copying_scores(big))
    dense_gb = cfg.d_vocab**2 * 4 / 1024**3
    print(f"\ncopying scores, d_vocab {cfg.d_vocab}, d_model {cfg.d_model}, {cfg.n_heads} heads: {t:.2f} s")
    print(f"  peak resident memory {peak_rss_gb():.2f} GB (before: {before:.2f} GB); "
          f"one dense {cfg.d_vocab} x {cfg.d_vocab} float32 circuit would be {dense_gb:.1f} GB per head")


if __name__ == "__main__":
    main()
