"""Record the headline numbers of chapters 4-10 over training seeds 0, 1, 2.

Writes ``chapters/data/seeds.json`` (chapters 4-10 read and print it).

Seed 0 of each preset is the shipped checkpoint; seeds 1 and 2 are trained with the preset's own
recipe. ``induction-2l`` and ``induction-1l`` are trained with their evaluations (every 50 steps,
without the off-probe ones) so that chapter 4 can locate the phase change in each seed's history;
evaluation draws from its own generators, so the weights are those of
:func:`toylab.suite.runner.load_or_train`. Trained seeds are cached under ``$TOYLAB_CACHE``.

Chapter 10's ``text-2l`` is recorded the same way; ``text-induction-2l`` is not: its recipe (2,000
steps) took 493 s on one thread for the shipped model, so two more seeds cost a quarter of an
hour on an idle machine.

Everything runs on one thread (``torch.set_num_threads(1)``).

    python benchmarks/record_seeds.py                # every chapter
    python benchmarks/record_seeds.py --only ch10    # or some chapters (the others are kept)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "data" / "seeds.json"
SEEDS = (0, 1, 2)
HISTORY_PRESETS = ("induction-2l", "induction-1l")


def model_and_history(name: str, seed: int):
    """``(model, history)`` of preset ``name`` at ``seed`` (history ``None`` if not recorded)."""
    from toylab.suite.runner import _code_key, cache_dir, load_or_train
    from toylab.training.checkpoint import load_checkpoint, save_checkpoint
    from toylab.training.presets import get_preset, load_shipped
    from toylab.training.train import train

    p = get_preset(name)
    if seed == p.seed:
        ck = load_shipped(name)
        return ck.model, ck.history
    if name not in HISTORY_PRESETS:
        return load_or_train(name, seed), None
    path = cache_dir() / f"{name}-s{seed}-{_code_key(p)}-history.pt"
    if path.is_file():
        ck = load_checkpoint(path)
        return ck.model, ck.history
    result = train(p.model, p.data, p.train, seed=seed, progress=False, off_probe=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, result.model, data_spec=p.data, train_spec=dataclasses.asdict(p.train),
                    seed=seed, history=result.history)
    return result.model, result.history


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "toylab"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _r(x, nd: int = 4) -> float:
    """A plain float rounded to ``nd`` decimals (JSON-friendly; finer than any printed digit)."""
    x = x.detach() if isinstance(x, torch.Tensor) else x
    return round(float(x), nd) + 0.0


def _name(head) -> str:
    return f"L{head[0]}H{head[1]}"


def _roles(model, probe):
    """``(prev, other, strong, weak)``: layer 0's best previous-token head, the other layer-0 head,
    and the layer-1 heads by induction score on ``probe`` (strongest first)."""
    from toylab.circuits.scores import head_detector_scores

    s = head_detector_scores(model, probe)
    p = int(s["previous_token"][0].argmax())
    ind = s["induction"][1]
    strong = int(ind.argmax())
    return (0, p), (0, 1 - p), (1, strong), (1, 1 - strong)


def steepest_drop(history, key="loss_repeat"):
    """``(step, nats per step)``: the evaluation interval with the largest fall of ``key`` (chapter 4)."""
    pairs = list(itertools.pairwise(history))
    drops = [(a[key] - b[key]) / (b["step"] - a["step"]) for a, b in pairs]
    i = max(range(len(drops)), key=drops.__getitem__)
    return history[i + 1]["step"], drops[i]


def ch04(model2, hist2, model1, hist1) -> dict:
    """Chapter 4: the probe's losses, the detector scores and the phase change in the history."""
    from toylab.circuits.composition import analytic_baseline, composition_scores
    from toylab.circuits.scores import head_detector_scores
    from toylab.data import repeated_tokens

    V, L = model2.cfg.d_vocab, 15
    probe = repeated_tokens(V, L, 256, torch.Generator().manual_seed(0))
    out = {}
    for tag, m in (("2l", model2), ("1l", model1)):
        loss = m(probe, return_type="loss_per_token").mean(0)
        out[f"loss_first_{tag}"] = _r(loss[0:L].mean())
        out[f"loss_repeat_{tag}"] = _r(loss[L + 1:2 * L].mean())
    s = head_detector_scores(model2, probe, destinations=torch.arange(probe.shape[1]) >= L + 1)
    prev, _, strong, weak = _roles(model2, probe)
    out.update(prev_head=_name(prev), induction_head=_name(strong), other_induction_head=_name(weak),
               prev_token_score=_r(s["previous_token"][prev]),
               induction_score=_r(s["induction"][strong]), induction_score_weak=_r(s["induction"][weak]))
    K = composition_scores(model2, "K", 0, 1)
    out["k_comp_ratio"] = _r(K[prev[1], strong[1]] / analytic_baseline(model2.cfg.d_model))
    formed = next(e["step"] for e in hist2 if e["best_induction"] >= 0.5)
    step2, rate2 = steepest_drop([e for e in hist2 if e["step"] <= 200])
    step1, rate1 = steepest_drop([e for e in hist1 if e["step"] <= 200])
    out.update(step_induction_0p5=formed, steepest_step_2l=step2, steepest_rate_2l=_r(rate2),
               steepest_step_1l=step1, steepest_rate_1l=_r(rate1),
               final_best_induction=_r(hist2[-1]["best_induction"]),
               final_loss_repeat=_r(hist2[-1]["loss_repeat"]))
    return out


def ch05(model) -> dict:
    """Chapter 5: ablations, denoising and the key edge, with the heads found by role."""
    from toylab.causal.interventions import ablate_heads, make_metric, term_importance
    from toylab.causal.patching import patch, path_patch
    from toylab.data import repeated_tokens

    V, L = model.cfg.d_vocab, 15
    clean = repeated_tokens(V, L, 32, torch.Generator().manual_seed(0))
    corrupted = repeated_tokens(V, L, 32, torch.Generator().manual_seed(1))
    REPEAT = list(range(L + 1, 2 * L))
    loss_rep = make_metric("loss", clean, REPEAT)
    logprob = make_metric("logprob", clean, REPEAT)
    prev, other, strong, weak = _roles(model, clean)
    out = {"prev_head": _name(prev), "induction_head": _name(strong), "clean_loss": _r(loss_rep(model(clean)))}
    for tag, heads in (("prev", [prev]), ("other", [other]), ("strong", [strong]), ("weak", [weak]),
                       ("both", [strong, weak])):
        out[f"zero_{tag}"] = _r(ablate_heads(model, clean, heads, kind="zero", metric=loss_rep))
    out["frozen_zero_prev"] = _r(ablate_heads(model, clean, [prev], kind="zero", freeze_patterns=True,
                                              metric=loss_rep))
    for tag, (layer, head) in (("both", (1, None)), ("strong", strong), ("weak", weak), ("prev", prev)):
        if tag == "both":
            head = None
        out[f"denoise_{tag}"] = _r(patch(model, clean, corrupted, "z", logprob, layer=layer, head=head))
    node = patch(model, clean, corrupted, "z", logprob, layer=prev[0], head=prev[1], direction="noise")
    for inp in "qkv":
        edge = path_patch(model, clean, corrupted, prev, [strong, weak], inp, logprob)
        out[f"path_{inp}"] = _r((1 - edge) / (1 - node))
    ti = term_importance(model, clean, REPEAT)
    out["virtual_terms"] = _r(ti["virtual_terms"])
    return out


SAE_BUDGET = {"steps": 300, "batch_size": 1024, "seed": 0, "resample_every": 100, "progress": False}


def ch06(model) -> dict:
    """Chapter 6: SAEs on ``blocks.0.hook_resid_pre`` (the token embeddings) against the 127 token
    directions; the chapter's data and budgets, SAE seed 0: the ReLU SAE of its first section
    (lambda 3, 600 steps) and the L0-1 pair of its comparison (TopK k = 1 and ReLU lambda 8.24,
    300 steps on 15,500 rows)."""
    from toylab.data import InductionData
    from toylab.features import metrics
    from toylab.features.ground_truth import true_features
    from toylab.features.sae import ReluSAE
    from toylab.features.topk import TopKSAE
    from toylab.features.train_sae import gather_activations, train_sae

    data = InductionData(d_vocab=128, n_ctx=32)
    tokens = data.sample(1000, torch.Generator().manual_seed(1))
    eval_tokens = data.sample(128, torch.Generator().manual_seed(2))
    hook = "blocks.0.hook_resid_pre"
    acts = gather_activations(model, hook, tokens)
    ev = gather_activations(model, hook, eval_tokens)
    tok_dirs = true_features(model, hook, include_bos=False)["token"]

    def scores(s):
        ce = metrics.ce_loss_recovered(model, s, hook, eval_tokens, skip_first=True)["recovered"]
        return {"l0": _r(metrics.l0(s, ev)), "fve": _r(metrics.fraction_variance_explained(s, ev)),
                "mcc": _r(metrics.mcc(s.directions(), tok_dirs)),
                "mcc_abs": _r(metrics.mcc(s.directions(), tok_dirs, absolute=True)), "ce_recovered": _r(ce)}

    relu3 = ReluSAE(64, 256, l1_coefficient=3.0, seed=0)
    train_sae(relu3, acts, **{**SAE_BUDGET, "steps": 600})
    topk1 = TopKSAE(64, 256, k=1, seed=0)
    train_sae(topk1, acts[:15500], **SAE_BUDGET)
    relu1 = ReluSAE(64, 256, l1_coefficient=8.24, seed=0)
    train_sae(relu1, acts[:15500], **SAE_BUDGET)
    return {"relu_lambda3": scores(relu3), "topk_k1": scores(topk1), "relu_lambda8.24": scores(relu1)}


def ch07(model) -> dict:
    """Chapter 7: the previous-token probe at the chapter's sites (the layer-0 heads by role)."""
    from toylab.data import InductionData
    from toylab.features.probes import induction_variables, probe_with_control
    from toylab.features.train_sae import gather_activations

    batch = InductionData(d_vocab=128, n_ctx=32).sample_batch(80, torch.Generator().manual_seed(3))
    variables = induction_variables(batch)
    groups = torch.arange(80).repeat_interleave(31)
    current = variables["current_token"]
    prev, other, _, _ = _roles(model, batch.tokens)
    sites = [("hook_embed", None, "embed"), ("blocks.0.attn.hook_result", prev[1], "prev_head_out"),
             ("blocks.0.attn.hook_result", other[1], "other_head_out"), ("blocks.0.hook_attn_out", None, "attn_out0"),
             ("blocks.0.hook_resid_post", None, "resid_post0"), ("blocks.1.hook_resid_post", None, "resid_post1")]
    out = {"prev_head": _name(prev)}
    for hook, head, label in sites:
        acts = gather_activations(model, hook, batch.tokens, head=head)
        r = probe_with_control(acts, variables["previous_token"], current, groups=groups, max_iter=30)
        out[label] = {"accuracy": _r(r["accuracy"]), "selectivity": _r(r["selectivity"])}
    return out


def ch07_skip(m) -> dict:
    """Chapter 7, the skip-trigram model: "rule fires (at triggers)" at the embedding and after attention."""
    from toylab.data import make_dataset
    from toylab.features.probes import probe_with_control, skip_trigram_variables
    from toylab.features.train_sae import gather_activations
    from toylab.training.presets import get_preset

    lang = make_dataset(get_preset("skiptrigram-1l").data)
    toks = lang.sample(200, torch.Generator().manual_seed(0))
    v = skip_trigram_variables(toks, lang)
    cur = toks[:, 1:].reshape(-1)
    grp = torch.arange(200).repeat_interleave(31)
    triggers = torch.tensor(sorted({b for _, b, _ in lang.rules}))
    labels = torch.where((cur[:, None] == triggers).any(-1), v["rule_active"], -1)
    out = {}
    for hook, label in (("hook_embed", "embed"), ("blocks.0.hook_attn_out", "attn_out0")):
        r = probe_with_control(gather_activations(m, hook, toks), labels, cur, groups=grp, max_iter=30)
        out[label] = {"accuracy": _r(r["accuracy"]), "majority": _r(r["majority"]),
                      "selectivity": _r(r["selectivity"])}
    return out


def ch08(model) -> dict:
    """Chapter 8: exact edge patching, EAP / EAP-IG against it (Spearman) and ACDC's ROC AUC against
    the detectors' induction circuit, with a corrupted batch and with zero ablation."""
    from toylab.data import make_dataset
    from toylab.discovery.acdc import acdc_sweep
    from toylab.discovery.attribution_patching import edge_attribution
    from toylab.discovery.edge_patching import edge_effects
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, kl_to_clean, logit_diff, next_token_loss_on
    from toylab.discovery.reference import induction_circuit
    from toylab.discovery.roc import roc_curve, spearman
    from toylab.training.presets import get_preset

    graph = Graph(model)
    data = make_dataset(get_preset("induction-2l").data)
    clean = data.sample_batch(32, torch.Generator().manual_seed(0))
    corr = data.sample_batch(32, torch.Generator().manual_seed(1))
    x, y = clean.tokens, corr.tokens
    known = induction_circuit(model, graph, x)
    pos = induction_positions(clean.is_repeat)
    with torch.no_grad():
        clean_logits = model(x)
    metrics = {"kl": kl_to_clean(clean_logits, pos), "logit_diff": logit_diff(x, y, pos),
               "loss": next_token_loss_on(x, pos)}
    exact = {k: edge_effects(model, graph, x, y, m) for k, m in metrics.items()}
    out = {"known_edges": sorted(known.edges)}
    for k in ("logit_diff", "loss"):
        out[f"eap_spearman_{k}"] = _r(spearman(edge_attribution(model, graph, x, y, metrics[k]), exact[k]))
    for k in ("logit_diff", "loss", "kl"):
        est = edge_attribution(model, graph, x, y, metrics[k], "eap-ig", 5)
        out[f"eapig5_spearman_{k}"] = _r(spearman(est, exact[k]))
    taus = [0.0, 0.003, 0.03, 0.3, 1.0, 3.0]
    sweep = acdc_sweep(model, graph, x, y, taus, positions=pos)
    out["acdc_auc_resample"] = _r(roc_curve([r.circuit for r in sweep], known)[2])
    mid = sweep[taus.index(0.03)].circuit
    out["acdc_tau0.03_equals_known"] = mid == known
    out["acdc_tau0.03_extra"] = sorted(set(mid.edges) - set(known.edges))
    out["acdc_tau0.03_missing"] = sorted(set(known.edges) - set(mid.edges))
    zero = [r.circuit for r in acdc_sweep(model, graph, x, "zero", taus, positions=pos)]
    out["acdc_auc_zero"] = _r(roc_curve(zero, known)[2])
    prev = next(e.split("->")[0] for e in known.edges if e.endswith(".k") and e.startswith("L0"))
    with_pos = graph.circuit(set(known.edges) | {f"pos->{prev}.q", f"pos->{prev}.k"})
    out["acdc_auc_zero_with_pos"] = _r(roc_curve(zero, with_pos)[2])
    return out


def ch08_control(model) -> dict:
    """Chapter 8's one-layer control: what ACDC (tau 0.03) keeps on ``induction-1l``."""
    from toylab.data import make_dataset
    from toylab.discovery.acdc import acdc
    from toylab.discovery.edge_patching import run_circuit
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, next_token_loss_on
    from toylab.training.presets import get_preset

    data = make_dataset(get_preset("induction-2l").data)
    clean = data.sample_batch(32, torch.Generator().manual_seed(0))
    corr = data.sample_batch(32, torch.Generator().manual_seed(1))
    x, y = clean.tokens, corr.tokens
    pos = induction_positions(clean.is_repeat)
    loss = next_token_loss_on(x, pos)
    g = Graph(model)
    res = acdc(model, g, x, y, 0.03, positions=pos)
    return {"edges_kept": len(res.circuit), "edges": len(g), "loss_full": _r(loss(model(x))),
            "loss_circuit": _r(run_circuit(model, g, res.circuit, x, y, loss))}


def ch09(model) -> dict:
    """Chapter 9: causal scrubbing's loss recovered for the chapter's ladder of hypotheses."""
    from toylab.data import make_dataset
    from toylab.discovery.graph import Graph
    from toylab.discovery.reference import induction_heads, induction_hypotheses
    from toylab.discovery.scrubbing import EquivalenceClasses, Hypothesis, redraw_tokens, scrub
    from toylab.training.presets import get_preset

    spec = get_preset("induction-2l").data
    graph = Graph(model)
    gen = torch.Generator().manual_seed(0)
    base = make_dataset(spec).sample_batch(32, gen)
    by_structure, _ = redraw_tokens(base, spec["d_vocab"], 2, gen, keep="structure")
    pool, parent = redraw_tokens(by_structure, spec["d_vocab"], 3, gen, keep="segment")
    classes = EquivalenceClasses.from_induction(pool, segment=parent)
    prev, heads = induction_heads(model, pool.tokens)
    ladder = induction_hypotheses(model, graph, pool.tokens)
    steps = ["layer-1 heads only", "+ K-composition", "+ tokens into queries and values", "full circuit",
             "layer-1 reading tokens only"]
    out = {"prev_head": _name(prev), "induction_heads": [_name(h) for h in heads], "hypotheses": {}}
    first = None
    for name in steps:
        r = scrub(model, graph, classes, ladder[name], n_resamples=2, baseline=first)
        first = first or r
        out["hypotheses"][name] = {"edges": len(ladder[name].edges), "recovered": _r(r.recovered),
                                   "low": _r(r.low), "high": _r(r.high)}
    P = _name(prev)
    minimal = ladder["+ tokens into queries and values"].edges
    r = scrub(model, graph, classes, Hypothesis({**minimal, f"embed->{P}.v": "structure"}), n_resamples=2,
              baseline=first)
    out["hypotheses"]["prev head v reads the structure only"] = {
        "edges": len(minimal), "recovered": _r(r.recovered), "low": _r(r.low), "high": _r(r.high)}
    noise_only = Hypothesis({e: ("segment" if e.startswith("embed->") else "identity") for e in graph.edge_names})
    r = scrub(model, graph, classes, noise_only, n_resamples=2, baseline=first)
    out["hypotheses"]["only the copied segment matters"] = {
        "edges": len(graph.edge_names), "recovered": _r(r.recovered), "low": _r(r.low), "high": _r(r.high)}
    return out


def ch10(model) -> dict:
    """Chapter 10, ``text-2l`` (``text-induction-2l`` takes too long to retrain; module doc): the
    validation loss, how well the direct path and the model on ``[BOS, c]`` fit the corpus's bigram
    table, which layer-0 heads map ``(`` to ``)`` first in their OV circuits, the ICL score, and
    induction on copied spans."""
    from toylab.circuits.copying import icl_score
    from toylab.circuits.scores import induction_score
    from toylab.circuits.weights import full_ov
    from toylab.data import make_dataset
    from toylab.training.presets import get_preset

    data = make_dataset(get_preset("text-2l").data)
    tok, V = data.tokenizer, data.d_vocab
    val = data.sample(256, torch.Generator().manual_seed(0), split="validation")
    out = {"val_loss": _r(model(val, return_type="loss"))}
    ids = data.splits["train"]
    counts = torch.bincount(ids[:-1] * V + ids[1:], minlength=V * V).view(V, V).double()
    total = counts.sum(-1, keepdim=True)
    P = torch.where(total > 0, counts / total.clamp_min(1), 0 * counts)
    freq = torch.bincount(ids, minlength=V).double()
    w = freq / freq.sum()
    xlogx = lambda p: torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0 * p)

    def fit(logits):
        log_q = torch.log_softmax(logits.double(), -1)
        kl = (w * (xlogx(P) - P * log_q).sum(-1)).sum()
        return _r(kl), _r((w * (P.argmax(-1) == logits.argmax(-1)).double()).sum())

    one_char = torch.stack([torch.zeros(V, dtype=torch.long), torch.arange(V)], 1)
    out["direct_kl"], out["direct_top1"] = fit(model.W_E @ model.W_U)
    out["bos_c_kl"], out["bos_c_top1"] = fit(model(one_char)[:, 1])
    lp, rp = tok.encode("()").tolist()
    ov = full_ov(model, 0).AB
    boost = ov - ov.mean(-1, keepdim=True)
    out["paren_heads"] = [f"L0H{h}" for h in range(model.cfg.n_heads) if int(boost[h, lp].argmax()) == rp]
    x = data.sample(512, torch.Generator().manual_seed(0))
    out["icl_score"] = _r(icl_score(model, x, 5, None))
    rep = make_dataset({"kind": "text_repeats", "n_ctx": 64, "seed": 0, "min_len": 8, "max_len": 24,
                        "p_repeat": 1.0})
    toks, is_rep = rep.sample_with_truth(256, torch.Generator().manual_seed(7), split="validation")
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: "pattern" in n)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
    ind = torch.stack([induction_score(cache["pattern", l], toks, is_rep) for l in range(2)])
    out.update(loss_copied=_r(loss[is_rep[:, 1:]].mean()), loss_elsewhere=_r(loss[~is_rep[:, 1:]].mean()),
               best_induction=_r(ind.max()))
    return out


CHAPTERS = ("ch04", "ch05", "ch06", "ch07", "ch08", "ch09", "ch10")


def record_chapter(chapter: str, seed: int) -> dict:
    """One chapter's numbers at one training seed (autograd off, as in the chapters)."""
    with torch.no_grad():
        return _record_chapter(chapter, seed)


def _record_chapter(chapter: str, seed: int) -> dict:
    if chapter == "ch10":
        return ch10(model_and_history("text-2l", seed)[0])
    model2, hist2 = model_and_history("induction-2l", seed)
    if chapter == "ch04":
        model1, hist1 = model_and_history("induction-1l", seed)
        return ch04(model2, hist2, model1, hist1)
    if chapter == "ch05":
        return ch05(model2)
    if chapter == "ch06":
        return ch06(model2)
    if chapter == "ch07":
        return {**ch07(model2), "skiptrigram": ch07_skip(model_and_history("skiptrigram-1l", seed)[0])}
    if chapter == "ch08":
        return {**ch08(model2), "control_1l": ch08_control(model_and_history("induction-1l", seed)[0])}
    if chapter == "ch09":
        return ch09(model2)
    raise ValueError(f"chapter must be one of {CHAPTERS}, got {chapter!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=CHAPTERS, action="append")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from toylab.files import atomic_write

    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rec = {"script": "benchmarks/record_seeds.py", "code_version": code_version(), "torch": torch.__version__,
           "python": platform.python_version(), "threads": 1, "seeds": list(SEEDS),
           "models": {"induction-2l": "ch04-ch09", "induction-1l": "ch04, ch08", "skiptrigram-1l": "ch07",
                      "text-2l": "ch10"},
           "settings": {"seed 0": "the shipped checkpoint",
                        "seeds 1, 2": "the preset's recipe; induction-2l/1l with their evaluations every 50 steps "
                                      "(off_probe=False), cached in $TOYLAB_CACHE/suite",
                        "ch06": "SAE seed 0, the chapter's data and budgets (see ch06's docstring)"},
           "chapters": dict(old.get("chapters", {}))}
    seconds = old.get("seconds") if isinstance(old.get("seconds"), dict) else {}
    for chapter in args.only or CHAPTERS:
        rows, t0 = [], time.perf_counter()
        for seed in SEEDS:
            t = time.perf_counter()
            rows.append({"seed": seed, **record_chapter(chapter, seed)})
            print(f"{chapter} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
        rec["chapters"][chapter] = rows
        seconds[chapter] = round(time.perf_counter() - t0, 1)  # training included when not cached
    rec["seconds"] = seconds
    atomic_write(args.out, lambda p: Path(p).write_text(json.dumps(rec, indent=1) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
