"""Speed (and agreement) of the circuit-discovery tools on the shipped induction-2l model.

Clean and corrupted batches are two independent batches of the model's own
induction data; the metric is scored on the positions predictable by
induction. Times (best of ``--repeats``, one thread by default), in the same
run, and as multiples of one hooked forward pass of the batch (per-head results computed):

- exhaustive exact edge patching (every edge, batched; and one edge per pass);
- attribution of every edge: EAP, EAP-IG (5 steps);
- a full ACDC run (KL metric, tau = 0.03);
- a causal-scrubbing score with its bootstrap interval (the weight-derived induction hypothesis);

and the quality numbers: Spearman correlation of each approximation with the
exact edge effects, the ACDC sweep's ROC AUC against the weight-derived
circuit, and the loss each scrubbing hypothesis recovers. The issue's targets
(on one core): exact <= 1 s, attribution <= 0.1 s, ACDC <= 10 s, scrubbing <= 10 s.

    python benchmarks/bench_discovery.py [--batch 32] [--pool 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from toylab.data import make_dataset
from toylab.discovery.acdc import acdc, acdc_sweep
from toylab.discovery.attribution_patching import edge_attribution, node_attribution, node_effects
from toylab.discovery.edge_patching import edge_effects
from toylab.discovery.graph import Graph
from toylab.discovery.metrics import induction_positions, kl_to_clean, logit_diff, next_token_loss_on
from toylab.discovery.reference import induction_circuit, induction_hypotheses
from toylab.discovery.roc import roc_curve, spearman, topk_recall
from toylab.discovery.subnetwork_probing import subnetwork_probing
from toylab.discovery.scrubbing import EquivalenceClasses, Hypothesis, scrub
from toylab.training.presets import get_preset, load_model


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pool", type=int, default=256, help="sequences in the scrubbing pool")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("induction-2l")
    graph = Graph(model)
    ds = make_dataset(get_preset("induction-2l").data)
    clean = ds.sample_batch(args.batch, torch.Generator().manual_seed(0))
    corr = ds.sample_batch(args.batch, torch.Generator().manual_seed(1))
    pos = induction_positions(clean.is_repeat)
    with torch.no_grad():
        kl = kl_to_clean(model(clean.tokens), pos)
    ld = logit_diff(clean.tokens, corr.tokens, pos)
    loss = next_token_loss_on(clean.tokens, pos)
    x, y = clean.tokens, corr.tokens
    result_hooks = [(f"blocks.{l}.attn.hook_result", lambda act, hook: None) for l in range(model.cfg.n_layers)]
    with torch.no_grad():  # the unit: a forward pass through the hooked path, which every tool here takes
        t_fwd, _ = best_time(lambda: model.run_with_hooks(x, fwd_hooks=result_hooks), max(args.repeats, 5))

    print(f"induction-2l: {graph}, batch {args.batch}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"  one hooked forward pass of the batch: {t_fwd * 1e3:.2f} ms (the unit 'fwd' below)")
    rows = []
    t_exact, exact = best_time(lambda: edge_effects(model, graph, x, y, kl), args.repeats)
    t_naive, naive = best_time(lambda: edge_effects(model, graph, x, y, kl, edges_per_pass=1), args.repeats)
    rows.append(("exact edge patching, all edges (batched)", t_exact, "<= 1 s"))
    rows.append(("exact edge patching, one edge per pass", t_naive, ""))
    t_eap, _ = best_time(lambda: edge_attribution(model, graph, x, y, ld), args.repeats)
    t_ig, _ = best_time(lambda: edge_attribution(model, graph, x, y, ld, "eap-ig", steps=5), args.repeats)
    rows.append(("EAP, all edges", t_eap, "<= 0.1 s"))
    rows.append(("EAP-IG (5 steps), all edges", t_ig, ""))
    t_acdc, res = best_time(lambda: acdc(model, graph, x, y, 0.03, positions=pos), args.repeats)
    rows.append((f"ACDC, tau 0.03 ({res.n_evaluations} tests, {len(res.circuit)} edges kept)", t_acdc, "<= 10 s"))
    pool = ds.sample_batch(args.pool, torch.Generator().manual_seed(2))
    classes = EquivalenceClasses.from_induction(pool)
    ref = induction_circuit(model, graph, pool.tokens, composition=True)
    hyp = Hypothesis.from_circuit(ref)
    t_scrub, r = best_time(lambda: scrub(model, graph, classes, hyp), args.repeats)
    rows.append((f"causal scrubbing score + interval (pool {args.pool}, 4 resamples)", t_scrub, "<= 10 s"))
    for name, t, target in rows:
        print(f"  {name:62s} {t:8.3f} s  {t / t_fwd:8.1f} fwd  {target}")
    print(f"  exact batched vs naive: {t_naive / t_exact:.2f}x faster, max |difference| {(exact - naive).abs().max():.1e}")

    k = len(induction_circuit(model, graph, x, composition=True))
    print(f"agreement with exhaustive exact edge patching: Spearman over edges / top-{k} recall:")
    for mname, metric in (("KL", kl), ("logit diff", ld), ("loss", loss)):
        ex = edge_effects(model, graph, x, y, metric)
        cells = []
        for s in (1, 2, 5, 10):
            est = edge_attribution(model, graph, x, y, metric, "eap-ig", s)  # 1 step is EAP
            cells.append(f"{'EAP' if s == 1 else f'EAP-IG{s}'} {spearman(est, ex):.2f} / {topk_recall(est, ex, k):.2f}")
        print(f"  {mname:10s} " + "  ".join(cells))
    print("node attribution (head outputs, q, k, v: 16 nodes) vs exact node patching, Spearman:")
    nodes = ("result", "q", "k", "v")
    for mname, metric in (("logit diff", ld), ("loss", loss)):
        for source, around in ((y, "clean"), (y, "corrupted"), ("zero", "clean")):
            ex = torch.cat([node_effects(model, x, source, metric, n, around).flatten() for n in nodes])
            at = torch.cat([node_attribution(model, x, source, metric, n, around).flatten() for n in nodes])
            fx = torch.cat([node_attribution(model, x, source, metric, n, around, qk_fix=n in ("q", "k")).flatten()
                            for n in nodes])
            what = "zero ablation" if isinstance(source, str) else f"around {around}"
            print(f"  {mname:10s} {what:17s} AtP {spearman(at, ex):5.2f}   AtP + QK fix {spearman(fx, ex):5.2f}")
    taus = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    minimal = induction_circuit(model, graph, pool.tokens, composition=False)
    for order in ("reverse", "forward"):
        sweep = acdc_sweep(model, graph, x, y, taus, positions=pos, sender_order=order)
        circuits = [s.circuit for s in sweep]
        print(f"ACDC sweep ({order} sender order), ROC AUC: minimal induction circuit ({len(minimal)} edges) "
              f"{roc_curve(circuits, minimal)[2]:.3f}, with the composition edges ({len(ref)} edges) "
              f"{roc_curve(circuits, ref)[2]:.3f}")
    t0 = time.perf_counter()
    sp, _ = subnetwork_probing(model, graph, x, y, 0.3, positions=pos, steps=80, samples=2, lr=0.2)
    prec, rec = sp.precision_recall(ref)
    print(f"subnetwork probing (lam 0.3, 80 steps x 2 samples): {time.perf_counter() - t0:.2f} s, {len(sp)} edges, "
          f"precision {prec:.2f} recall {rec:.2f} against the circuit with composition edges")
    print("causal scrubbing, loss recovered [95% interval]:")
    for name, h in induction_hypotheses(model, graph, pool.tokens).items():
        s = scrub(model, graph, classes, h)
        print(f"  {name:36s} {s.recovered:6.3f} [{s.low:.3f}, {s.high:.3f}]")

if __name__ == "__main__":
    main()
