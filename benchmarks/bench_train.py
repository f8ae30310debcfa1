"""Training speed, measured against references taken in the same run.

Prints, for this machine and thread count:

1. the float32 matmul peak (a 512 x 512 x 512 matmul, best of several);
2. per preset: step time, training tokens/s, achieved FLOP/s and its fraction
   of that peak (FLOPs counted analytically: 3 x the forward matmuls);
3. the canonical 2L run: wall time to the phase change (repeated-half loss
   below ln(V)/2) and until the best induction score first exceeds 0.9;
4. if transformer_lens is importable: the step time of an equivalent
   HookedTransformer (attn_only, no normalization, same config, optimiser,
   batch) and the ratio toylab / TransformerLens.

    python benchmarks/bench_train.py [--threads N] [--steps N] [--skip-2l]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch

from toylab.data import make_dataset
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.presets import PRESETS
from toylab.train import train


def matmul_peak(n: int = 512, repeats: int = 30) -> float:
    """Best observed float32 FLOP/s of an ``n x n`` matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_flops_per_token(cfg: ModelConfig, n_pos: int) -> float:
    """Forward matmul FLOPs per token x 3 (backward is about twice the forward).

    Per layer: Q, K, V and O projections ``4 * 2 d^2``; scores and mixing over
    all ``n_pos`` keys (the masked half is computed too) ``2 * 2 n_pos d``.
    Unembedding ``2 d V``. The embedding is a lookup.
    """
    d = cfg.d_model
    forward = cfg.n_layers * (8 * d * d + 4 * n_pos * d) + 2 * d * cfg.d_vocab
    return 3 * forward


def time_steps(step, n_steps: int) -> float:
    """Median seconds per call of ``step()`` after a warm-up."""
    for _ in range(5):
        step()
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step(model, batch):
    """One AdamW step of ``model`` (toylab's or TransformerLens's: both take ``return_type="loss"``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_presets(n_steps: int, peak: float) -> None:
    print(f"\n{'preset':16s} {'batch x ctx':>11s} {'ms/step':>8s} {'tokens/s':>10s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, preset in PRESETS.items():
        cfg, tcfg = preset.model, preset.train
        data = make_dataset(preset.data)
        batch = data.sample(tcfg.batch_size, torch.Generator().manual_seed(0))
        model = AttnOnlyTransformer(cfg, seed=0)
        sec = time_steps(train_step(model, batch), n_steps)
        tokens = batch.numel()
        flops = train_flops_per_token(cfg, batch.shape[1]) * tokens / sec
        print(f"{name:16s} {tcfg.batch_size:5d} x {batch.shape[1]:3d} {sec * 1e3:8.1f} {tokens / sec:10.0f} "
              f"{flops / 1e9:8.1f} {flops / peak:8.0%}")


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

    result = train(preset.model, preset.data, tcfg, seed=preset.seed, progress=False, callback=watch)
    print(f"\ninduction-2l, {tcfg.steps} steps, evaluating every {tcfg.eval_every} (evaluation time included):")
    for key in ("phase change", "induction > 0.9"):
        print(f"  {key:18s} {marks.get(key, float('nan')):6.1f} s wall")
    m = result.metrics
    print(f"  whole run          {result.seconds:6.1f} s; final induction {max(m['induction'][1]):.2f}, "
          f"previous-token {max(m['prev_token'][0]):.2f}, repeated-half loss {m['loss_repeat']:.3f}")


def bench_transformer_lens(n_steps: int) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        print("\ntransformer_lens is not importable: no comparison (make bench-tl installs it in .venv-tl)")
        return
    preset = PRESETS["induction-2l"]
    cfg = preset.model
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab, attn_only=True, normalization_type=None, positional_embedding_type=cfg.positional,
        act_fn="relu", device="cpu", seed=0,
    )
    tl_model = HookedTransformer(tl_cfg)
    batch = make_dataset(preset.data).sample(preset.train.batch_size, torch.Generator().manual_seed(0))
    ours = time_steps(train_step(AttnOnlyTransformer(cfg, seed=0), batch), n_steps)
    theirs = time_steps(train_step(tl_model, batch), n_steps)
    print(f"\nstep time on the induction-2l config, batch {batch.shape[0]} x {batch.shape[1]}:")
    print(f"  toylab           {ours * 1e3:7.1f} ms")
    print(f"  TransformerLens  {theirs * 1e3:7.1f} ms")
    print(f"  ratio toylab / TransformerLens = {ours / theirs:.2f} (below 1: toylab is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the training default is 1)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--skip-2l", action="store_true", help="skip the full induction-2l training run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {args.threads} thread(s); float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    bench_presets(args.steps, peak)
    if not args.skip_2l:
        bench_induction_run()
    bench_transformer_lens(args.steps)


if __name__ == "__main__":
    main()
