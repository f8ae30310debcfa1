"""Grokking: wall and CPU time until the grokking-1l recipe generalises, at several seeds.

For each seed (default 0, 1, 2) this trains the ``grokking-1l`` preset exactly as
``toylab train`` does (one thread, full batch, evaluated every ``eval_every`` steps) and
stops at the first evaluation whose fresh-test accuracy (the held-out pairs whose swap
is held out too) is over 0.99. It prints, per seed: the step at which training accuracy
first reached 1, the last step after it with fresh-test accuracy still under 0.1 (near
chance), the step at which it passed 0.99, and the wall and CPU time to that step
(evaluations included: they are how the step is found). With ``--keys`` each seed is
trained on to the preset's full length as well, for its key frequencies (the shipped
model's are those of seed 0). Beside them, the one-thread float32 matmul peak measured in
the same run (``bench_train.matmul_peak``), the reference for how fast the machine was.

On a machine shared with other jobs the wall times include waiting for a core; the CPU
time (this thread's) is what the training costs. ``--json PATH`` writes the per-seed
results as JSON.

    python benchmarks/bench_grokking.py [--seeds 0 1 2] [--keys] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import matmul_peak  # noqa: E402

from toylab.files import atomic_write  # noqa: E402
from toylab.training.presets import get_preset  # noqa: E402
from toylab.training.train import train  # noqa: E402

GROKKED = 0.99  # fresh-test accuracy
CHANCE = 0.1


class _Grokked(Exception):
    """Raised by the callback to stop training at the first evaluation past GROKKED."""


def time_to_grok(seed: int) -> dict:
    """Train grokking-1l at ``seed`` until fresh-test accuracy > GROKKED; the steps and times."""
    preset = get_preset("grokking-1l")
    seen = []
    start = {"wall": time.perf_counter(), "cpu": time.thread_time()}

    def callback(entry):
        seen.append({"step": entry["step"], "train_acc": entry["train_acc"], "fresh_acc": entry["fresh_acc"],
                     "wall": time.perf_counter() - start["wall"], "cpu": time.thread_time() - start["cpu"]})
        if entry["fresh_acc"] > GROKKED:
            raise _Grokked

    try:
        train(preset.model, preset.data, preset.train, seed=seed, progress=False, callback=callback)
    except _Grokked:
        pass
    memorised = next((e["step"] for e in seen if e["train_acc"] == 1.0), None)
    end = seen[-1] if seen[-1]["fresh_acc"] > GROKKED else None
    chance = [e["step"] for e in seen if memorised is not None and e["step"] >= memorised
              and e["fresh_acc"] < CHANCE]
    return {"seed": seed, "memorised_step": memorised, "last_chance_step": max(chance) if chance else None,
            "grokked_step": end["step"] if end else None, "wall_s": round(end["wall"], 1) if end else None,
            "cpu_s": round(end["cpu"], 1) if end else None, "steps_planned": preset.train.steps}


def final_keys(seed: int) -> dict:
    """The preset trained whole at ``seed``: its key frequencies and final fresh-test accuracy."""
    preset = get_preset("grokking-1l")
    result = train(preset.model, preset.data, preset.train, seed=seed, progress=False)
    last = result.metrics
    return {"key_frequencies": last.get("key_frequencies"), "final_fresh_acc": round(last["fresh_acc"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keys", action="store_true", help="also train each seed whole, for its key frequencies")
    ap.add_argument("--json", default=None, help="write the per-seed results to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    preset = get_preset("grokking-1l")
    peak = matmul_peak()
    print(f"torch {torch.__version__}, 1 thread; float32 matmul peak {peak['cpu'] / 1e9:.1f} GFLOP/s (cpu clock), "
          f"{peak['wall'] / 1e9:.1f} (wall)")
    print(f"grokking-1l: p = {preset.data['p']}, train_frac {preset.data['train_frac']}, "
          f"evaluated every {preset.train.eval_every} steps; grokked = fresh-test accuracy > {GROKKED}")
    print(f"\n{'seed':>4s} {'train acc 1':>11s} {'fresh < 0.1':>11s} {'grokked':>8s} {'wall s':>7s} {'cpu s':>6s}"
          f"{'  key frequencies' if args.keys else ''}")
    rows = []
    for seed in args.seeds:
        row = time_to_grok(seed)
        if args.keys:
            row.update(final_keys(seed))
        rows.append(row)
        cell = lambda v: "-" if v is None else str(v)  # noqa: E731
        print(f"{seed:4d} {cell(row['memorised_step']):>11s} {cell(row['last_chance_step']):>11s} "
              f"{cell(row['grokked_step']):>8s} {cell(row['wall_s']):>7s} {cell(row['cpu_s']):>6s}"
              f"{'  ' + str(row.get('key_frequencies')) if args.keys else ''}", flush=True)
    if args.json:
        record = {"made_by": "benchmarks/bench_grokking.py" + (" --keys" if args.keys else ""),
                  "preset": "grokking-1l", "train": preset.train.to_dict(), "data": preset.data,
                  "torch": torch.__version__, "matmul_peak_gflops_cpu": round(peak["cpu"] / 1e9, 1),
                  "seeds": rows}
        text = json.dumps(record, indent=1) + "\n"
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
