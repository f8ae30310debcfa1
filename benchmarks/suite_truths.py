"""The suite's planted truths, checked by intervention at every seed (issue 23 section 1).

For every planted model (:data:`toylab.suite.planted.PLANTED`) and seed: the training time (wall and
CPU seconds, one thread; the seed-0 ``induction-2l`` is the shipped checkpoint), the task
performance (mean next-token loss at the task's positions, clean run, nats; ``ln V`` is chance),
the intended structure (:data:`~toylab.suite.planted.INTENDED`), the truth's kept and removed
fractions of the behaviour (:func:`toylab.suite.truth.check_truth`, resample source = the task's
corrupted run, and zero ablation), the largest fraction one head's edges remove alone, and
whether the seed is included (intended structure and the 90/80 check under the resample source).
The negative control is checked by :func:`toylab.suite.truth.check_dense` instead (the best
circuit of at most half the heads). For a model with LayerNorm, what it changes for the analyses:
whether :func:`toylab.circuits.folding.fold_layer_norm` keeps the logits (their largest difference)
and how far the final LayerNorm's scale varies over the task's positions; for learned positions,
the truth without its ``pos ->`` edges, under both sources (resample patching cannot see them:
the corrupted run has the same positions). Then ``induction-2l`` with today's reference circuit
(:func:`toylab.discovery.reference.induction_circuit`) as its truth, with and without the
previous-token head's ``pos -> .q/.k`` edges. Last, per model, the seeds included and whether the
suite's registry scores it (a model is registered when at least 2 of its 3 seeds are included).

Checkpoints are cached in ``--cache`` (``PRESET-sSEED.pt`` and a ``.time.json`` with the times).

    python benchmarks/suite_truths.py [--cache DIR] [--names redundant,...] [--seeds 0,1,2] [--n 128]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from toylab.discovery.graph import Graph
from toylab.discovery.reference import induction_circuit, induction_heads
from toylab.data import repeated_tokens
from toylab.files import atomic_write
from toylab.model import head_name, next_token_loss
from toylab.suite.entries import registry
from toylab.suite.planted import INTENDED, NEGATIVE_CONTROLS, PLANTED
from toylab.suite.readers import heads_of
from toylab.suite.truth import check_dense, check_truth
from toylab.circuits.folding import fold_layer_norm
from toylab.training.checkpoint import load_checkpoint
from toylab.training.presets import get_preset, load_shipped
from toylab.training.train import train


def get_model(preset: str, seed: int, cache: Path):
    """``(model, wall seconds, cpu seconds)``: cached, shipped (induction-2l seed 0) or trained now."""
    p = get_preset(preset)
    if preset == "induction-2l" and seed == 0:
        return load_shipped(preset).model, math.nan, math.nan
    path = cache / f"{preset}-s{seed}.pt"
    times = path.with_suffix(".time.json")
    if path.is_file() and times.is_file():
        t = json.loads(times.read_text())
        return load_checkpoint(path).model, t["wall"], t["cpu"]
    w0, c0 = time.perf_counter(), time.process_time()
    result = train(p.model, p.data, p.train, seed=seed, off_probe=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    result.save(path)
    text = json.dumps({"wall": wall, "cpu": cpu})
    atomic_write(times, lambda tmp: Path(tmp).write_text(text))
    return result.model, wall, cpu


@torch.no_grad()
def task_loss(model, task) -> float:
    loss = next_token_loss(model(task.clean), task.clean)  # [batch, pos]: at p, of the token p + 1
    mask = task.positions if task.positions is not None else torch.ones_like(loss, dtype=torch.bool)
    return float(loss[mask[:, :loss.shape[1]]].mean())


def single_head_removal(model, graph, truth, task) -> tuple[str, float]:
    """The head of the truth whose edges alone remove the largest fraction, and that fraction."""
    best = ("-", math.nan)
    for h in heads_of(truth):
        edges = {e for e in truth if h in (e.split("->")[0], e.split("->")[1].split(".")[0])}
        r = check_truth(model, graph, edges, task).removed
        if not r <= best[1]:
            best = (h, r)
    return best


@torch.no_grad()
def layernorm_effects(model, task) -> dict:
    """What LayerNorm changes for the analyses: the largest logit difference of
    :func:`~toylab.circuits.folding.fold_layer_norm`'s model on the task's clean run (0 up to float
    rounding: folding is exact), and the spread of ``ln_final``'s scale ``s(x)`` over the task's positions
    (min, max and max/min: a weights-only reading such as ``W_E W_OV W_U`` is off by that factor, which
    activation-based readings freeze at its value on the run)."""
    diff = float((fold_layer_norm(model)(task.clean) - model(task.clean)).abs().max())
    _, cache = model.run_with_cache(task.clean, names_filter=lambda n: n == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][task.positions]
    scale = (resid.var(-1, unbiased=False) + 1e-5).sqrt()
    return {"fold_max_logit_diff": diff, "scale_min": float(scale.min()), "scale_max": float(scale.max())}


def without_pos_edges(model, graph, truth, task) -> dict:
    """The truth without its ``pos -> ...`` edges (learned positions: the previous-token head finds the
    previous position through them), checked under both sources: the edges it drops, and kept / removed."""
    pos = sorted(e for e in truth if e.startswith("pos->"))
    out = {"pos_edges": pos}
    for src in ("resample", "zero"):
        c = check_truth(model, graph, truth - set(pos), task, src)
        out[src] = {"kept": c.kept, "removed": c.removed, "passed": c.passed}
    return out


def row(name: str, seed: int, cache: Path, n: int) -> dict:
    pc = PLANTED[name]
    model, wall, cpu = get_model(pc.preset, seed, cache)
    graph = Graph(model)
    task = pc.make_task(model, seed, n)
    ok, why = INTENDED[name](model, graph)
    out = {"name": name, "preset": pc.preset, "seed": seed, "wall_s": wall, "cpu_s": cpu,
           "task_loss": task_loss(model, task), "chance": math.log(model.cfg.d_vocab), "intended": ok, "why": why}
    if name in NEGATIVE_CONTROLS:
        for src in ("resample", "zero"):
            d = check_dense(model, graph, task, src)
            out[src] = {"best_small_kept": d.best_kept, "best_heads": list(d.best_heads),
                        "removed_by_head": d.removed_by_head, "passed": d.passed}
        out["included"] = ok and out["resample"]["passed"]
        return out
    if model.cfg.layernorm:
        out["layernorm"] = layernorm_effects(model, task)
    truth = pc.truth(model, graph)
    out["n_edges"] = len(truth)
    if truth and model.cfg.positional == "learned":
        out["without_pos"] = without_pos_edges(model, graph, truth, task)
    if not truth:
        out["included"] = False
        return out
    for src in ("resample", "zero"):
        c = check_truth(model, graph, truth, task, src)
        out[src] = {"kept": c.kept, "removed": c.removed, "gap": c.gap, "passed": c.passed}
    out["single_head"] = single_head_removal(model, graph, truth, task)
    out["included"] = bool(ok and out["resample"]["passed"])
    return out


def reference_rows(seeds, cache: Path, n: int) -> list[dict]:
    """induction-2l with reference.induction_circuit as its truth, with and without pos -> P.q/k."""
    rows = []
    for seed in seeds:
        model, _, _ = get_model("induction-2l", seed, cache)
        graph = Graph(model)
        task = PLANTED["induction"].make_task(model, seed, n)
        probe = repeated_tokens(model.cfg.d_vocab, 15, 64, torch.Generator().manual_seed(0))
        ref = induction_circuit(model, graph, probe).edges
        p = head_name(*induction_heads(model, probe)[0])
        for label, edges in (("reference", ref), (f"reference + pos->{p}.q/k", ref | {f"pos->{p}.q", f"pos->{p}.k"})):
            r = {"seed": seed, "truth": label, "n_edges": len(edges)}
            for src in ("resample", "zero"):
                c = check_truth(model, graph, edges, task, src)
                r[src] = {"kept": c.kept, "removed": c.removed, "passed": c.passed}
            rows.append(r)
    return rows


def fmt(x, spec=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "toylab", "suite-truths"))
    ap.add_argument("--names", default=",".join(PLANTED))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    print("| model | seed | train wall / CPU s | task loss (chance) | intended | truth edges | kept / removed "
          "(resample) | kept / removed (zero) | one head removes | included |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.names.split(","):
        for seed in seeds:
            r = row(name, seed, cache, args.n)
            rows.append(r)
            t = f"{fmt(r['wall_s'], '.0f')} / {fmt(r['cpu_s'], '.0f')}"
            perf = f"{r['task_loss']:.2f} ({r['chance']:.2f})"
            if name in NEGATIVE_CONTROLS:
                c, z = r["resample"], r["zero"]
                kr = f"best <=half-heads circuit keeps {c['best_small_kept']:.2f} ({'+'.join(c['best_heads'])})"
                kz = f"best keeps {z['best_small_kept']:.2f}"
                one = "removes " + ", ".join(f"{h} {v:.2f}" for h, v in c["removed_by_head"].items())
                edges = "every edge"
            elif "resample" in r:
                c, z = r["resample"], r["zero"]
                kr, kz = f"{c['kept']:.3f} / {c['removed']:.3f}", f"{z['kept']:.3f} / {z['removed']:.3f}"
                one, edges = f"{r['single_head'][0]} {r['single_head'][1]:.2f}", str(r["n_edges"])
            else:
                kr = kz = one = "-"
                edges = "0 (no circuit read)"
            print(f"| {name} | {seed} | {t} | {perf} | {'yes' if r['intended'] else 'NO'}: {r['why']} | {edges} | "
                  f"{kr} | {kz} | {one} | {'yes' if r['included'] else 'NO'} |", flush=True)
    print("\nSeeds included per model (intended structure and the 90/80 check, resample), and whether the "
          "suite's registry (toylab.suite.entries.registry, plus the negative controls) scores it:\n")
    registered = set(registry()) | set(NEGATIVE_CONTROLS)
    for name in dict.fromkeys(r["name"] for r in rows):
        seeds_in = [r["seed"] for r in rows if r["name"] == name and r["included"]]
        n = sum(r["name"] == name for r in rows)
        print(f"- {name}: {len(seeds_in)} of {n} seeds {seeds_in}; registered: {'yes' if name in registered else 'no'}")
    extra = [r for r in rows if "layernorm" in r or "without_pos" in r]
    if extra:
        print("\nLayerNorm and learned positions: fold_layer_norm's largest logit difference on the task's clean "
              "run, the spread of the final LayerNorm's scale s(x) at the task's positions, and the truth without "
              "its pos edges (kept / removed, resample and zero):\n")
    for r in extra:
        parts = []
        if "layernorm" in r:
            ln = r["layernorm"]
            parts.append(f"fold_layer_norm max |logit diff| {ln['fold_max_logit_diff']:.1e}; final LN scale "
                         f"{ln['scale_min']:.2f}..{ln['scale_max']:.2f} (x{ln['scale_max'] / ln['scale_min']:.1f})")
        if "without_pos" in r:
            w = r["without_pos"]
            parts.append(f"without {', '.join(w['pos_edges']) or 'no pos edges'}: resample "
                         f"{w['resample']['kept']:.3f} / {w['resample']['removed']:.3f}, zero "
                         f"{w['zero']['kept']:.3f} / {w['zero']['removed']:.3f}")
        print(f"- {r['name']} seed {r['seed']}: " + "; ".join(parts))
    if not args.no_reference:
        print("\ninduction-2l with reference.induction_circuit as its truth\n")
        print("| seed | truth | edges | kept / removed (resample) | kept / removed (zero) | passes 90/80 "
              "(resample, zero) |")
        print("|---|---|---|---|---|---|")
        for r in reference_rows(seeds, cache, args.n):
            rows.append(r)
            c, z = r["resample"], r["zero"]
            print(f"| {r['seed']} | {r['truth']} | {r['n_edges']} | {c['kept']:.3f} / {c['removed']:.3f} | "
                  f"{z['kept']:.3f} / {z['removed']:.3f} | {c['passed']}, {z['passed']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
