"""Graded tests of chapter 13, "When methods fail".

Ground truth: the shipped suite models ``redundant-2l`` (two induction heads that back
each other up) and ``majority-1l`` (the negative control), with the suite's tasks and
truths (:mod:`toylab.suite.planted`), exact patching (:mod:`toylab.discovery.edge_patching`)
and the library's EAP and probes; plain loops over small random tables; and hand-built
cases where a plausible shortcut ("high accuracy, so trust it", "the rank correlation is
high", "the circuit is faithful", "the mean MCC passes") gives the wrong choice.
"""

import math

import pytest
import torch

from toylab.course.answers import expect_number, load_answers

CH = "ch13_when_methods_fail"


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def redundant():
    """``redundant-2l`` (shipped, seed 0), its graph, the suite's task and truth."""
    from toylab.discovery.graph import Graph
    from toylab.suite.planted import PLANTED
    from toylab.training.presets import load_shipped

    model = load_shipped("redundant-2l").model
    graph = Graph(model)
    entry = PLANTED["redundant"]
    return model, graph, entry.make_task(model, 0, 32), entry.truth(model, graph)


@pytest.mark.exercise("kept_and_removed")
@pytest.mark.points(1)
def test_kept_and_removed(redundant):
    from toylab.discovery.edge_patching import run_with_edges
    from toylab.suite.truth import behaviour_metric, check_truth

    f = answers().kept_and_removed
    kept, removed, holds = f(0.25, 3.0, 4.0)
    expect_number(kept, 0.9375, "kept", tol=1e-9,
                  hint="kept is 1 - b_keep / b_all: b_keep is how far the circuit alone is from the clean "
                       "run, so a faithful circuit has a small b_keep" if abs(float(kept) - 0.0625) < 1e-9
                  else "kept = 1 - b_keep / b_all")
    expect_number(removed, 0.75, "removed", tol=1e-9,
                  hint="removed is b_remove / b_all itself (no 1 - ...): removing the truth should move the "
                       "run far from clean" if abs(float(removed) - 0.25) < 1e-9 else "removed = b_remove / b_all")
    assert not bool(holds), "removed 0.75 is below the bar of 0.8: the check does not hold"
    # the bar itself counts ("at least"): kept exactly 0.9, removed exactly 0.8
    assert bool(f(0.1, 0.8, 1.0)[2]), ("kept = 0.9 and removed = 0.8 meet the bar exactly: the rule is >= 0.9 "
                                       "and >= 0.8, not a strict >")
    assert not bool(f(0.5, 1.0, 1.0)[2]), "kept 0.5 is below 0.9: the check does not hold"
    # on the suite's redundant-2l: the same fractions as toylab.suite.truth.check_truth
    model, graph, task, truth = redundant
    mask = graph.circuit(truth).mask
    b_all, b_keep, b_remove = (float(v) for v in run_with_edges(
        model, graph, task.clean, task.corrupted, torch.stack([torch.ones_like(mask), ~mask, mask]),
        behaviour_metric(model, task)))
    want = check_truth(model, graph, truth, task, "resample")
    kept, removed, holds = f(b_keep, b_remove, b_all)
    expect_number(kept, want.kept, "kept on redundant-2l", tol=1e-6)
    expect_number(removed, want.removed, "removed on redundant-2l", tol=1e-6)
    assert bool(holds) == want.passed, f"redundant-2l's truth {'passes' if want.passed else 'fails'} the check"


def _loop_auroc(scores, is_true):
    pos = [abs(float(s)) for s, t in zip(scores, is_true) if t]
    neg = [abs(float(s)) for s, t in zip(scores, is_true) if not t]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.mark.exercise("auroc_by_magnitude")
@pytest.mark.points(2)
def test_auroc_by_magnitude(redundant):
    from toylab.discovery.edge_patching import edge_effects
    from toylab.discovery.metrics import next_token_loss_on
    from toylab.discovery.roc import roc_from_scores

    f = answers().auroc_by_magnitude
    # signs: the true edges have the largest |score|, one of them negative
    s = torch.tensor([-3.0, 2.0, 0.5, 0.1])
    t = torch.tensor([True, True, False, False])
    keep_s, keep_t = s.clone(), t.clone()
    got = f(s, t)
    assert torch.equal(s, keep_s) and torch.equal(t, keep_t), "auroc_by_magnitude changed an input in place"
    expect_number(got, 1.0, "the AUROC with a negative true edge", tol=1e-9,
                  hint="rank by |score|: a large negative effect is a large effect" if abs(float(got) - 0.5) < 1e-9
                  else "you counted the pairs where the false edge ranks higher: count those where the TRUE edge "
                       "is larger" if abs(float(got)) < 1e-9
                  else "compare |score| of every true edge with every false edge")
    # ties count one half
    got = f(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([True, True, False, False]))
    expect_number(got, 0.75, "the AUROC with ties", tol=1e-9,
                  hint="a tie counts 1/2 (here one true edge ties with both false edges)" if abs(float(got) - 0.5)
                  < 1e-9 or abs(float(got) - 1.0) < 1e-9 else "pairs: 2 wins, 2 ties out of 4")
    # the direction: a worse-than-chance ranking stays below 1/2
    got = f(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([True, True, False, False]))
    expect_number(got, 0.0, "a ranking that puts every false edge first", tol=1e-9,
                  hint="you computed P(false edge ranks higher): count the pairs where the TRUE edge is larger")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        s = torch.randn(30, generator=g).round(decimals=1)  # rounded: some ties
        t = torch.rand(30, generator=g) < 0.3
        t[0], t[1] = True, False
        expect_number(f(s, t), _loop_auroc(s, t), "the AUROC on a random table", tol=1e-9)
    # exact patching on redundant-2l: the pos edges have exactly zero effect under resampling (ties)
    model, graph, task, truth = redundant
    ex = edge_effects(model, graph, task.clean, task.corrupted, next_token_loss_on(task.clean, task.positions))
    is_true = torch.tensor([e.name in truth for e in graph.edges])
    expect_number(f(ex, is_true), roc_from_scores(graph, ex, graph.circuit(truth))[2],
                  "the AUROC of exact patching on redundant-2l", tol=1e-6)


@pytest.mark.exercise("decorrelated_accuracy")
@pytest.mark.points(1)
def test_decorrelated_accuracy():
    f = answers().decorrelated_accuracy
    labels = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4])
    correlate = torch.tensor([1, 5, 2, 6, 3, 7, 4, 8])  # equals the label in rows 0, 2, 4, 6
    pred = torch.tensor([1, 0, 2, 0, 3, 3, 4, 8])  # right in rows 0, 2, 4, 5, 6
    keep = pred.clone(), labels.clone(), correlate.clone()
    acc, dec = f(pred, labels, correlate)
    assert all(torch.equal(a, b) for a, b in zip((pred, labels, correlate), keep)), \
        "decorrelated_accuracy changed an input in place"
    expect_number(acc, 5 / 8, "the accuracy over every row", tol=1e-9)
    by_pred = [float((pred == labels)[m].double().mean()) for m in (pred != correlate, pred != labels)]
    expect_number(dec, 1 / 4, "the accuracy where the correlate disagrees with the label", tol=1e-9,
                  hint="keep the rows where correlate != labels (you kept the rows where they agree)"
                  if abs(float(dec) - 1.0) < 1e-9 else
                  "select rows by correlate != labels, not by what the probe predicted"
                  if any(abs(float(dec) - v) < 1e-9 for v in by_pred) else
                  "among rows 1, 3, 5, 7 the probe is right in one")
    _, none = f(torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert isinstance(none, float) and math.isnan(none), \
        "when the correlate always equals the label there is no row to score: return nan"


@pytest.mark.exercise("trust_single_ablations")
@pytest.mark.points(2)
def test_trust_single_ablations(redundant):
    from toylab.discovery.edge_patching import run_with_edges
    from toylab.suite.truth import behaviour_metric

    f = answers().trust_single_ablations
    # the suite's redundant-2l: each induction head's output alone, then both
    model, graph, task, _ = redundant
    rows = [graph.mask(n).float() for n in (["L1H0->logits"], ["L1H1->logits"],
                                             ["L1H0->logits", "L1H1->logits"])]
    rows.append(torch.ones(len(graph)))
    vals = run_with_edges(model, graph, task.clean, task.corrupted, torch.stack(rows), behaviour_metric(model, task))
    e_a, e_b, e_ab = (float(v / vals[3]) for v in vals[:3])
    choice, ratio = f(e_a, e_b, e_ab)
    expect_number(ratio, e_ab / (e_a + e_b), "the ratio e_ab / (e_a + e_b) on redundant-2l", tol=1e-9)
    assert choice == "ablate jointly", (
        f"on redundant-2l each head alone costs {e_a:.2f} and {e_b:.2f} of the behaviour, both together "
        f"{e_ab:.2f}: small single effects do not mean unimportant heads, the joint effect decides")
    # necessary parts in series (an AND): each alone already costs most of it
    choice, ratio = f(0.6, 0.55, 0.7)
    assert choice == "trust", (f"each head alone costs most of the behaviour (ratio {float(ratio):.2f} < 1.5): "
                               "single ablations do not under-report these heads")
    # the boundary is included
    choice, _ = f(0.25, 0.25, 0.75)
    assert choice == "ablate jointly", "a ratio of exactly 1.5 already means backup (>= 1.5)"
    choice, ratio = f(0.0, 0.0, 0.5)
    assert choice == "ablate jointly" and math.isinf(float(ratio)), \
        "no single effect at all but a joint one: the ratio is infinite, and the heads must be ablated jointly"
    choice, ratio = f(0.0, 0.0, 0.0)
    assert choice == "trust" and float(ratio) == 1.0, "nothing is lost either way: ratio 1.0, 'trust'"


@pytest.mark.exercise("trust_eap_ranking")
@pytest.mark.points(2)
def test_trust_eap_ranking(redundant):
    from toylab.discovery.attribution_patching import edge_attribution
    from toylab.discovery.edge_patching import edge_effects
    from toylab.discovery.metrics import next_token_loss_on
    from toylab.discovery.roc import spearman

    f = answers().trust_eap_ranking
    # zero ablation on redundant-2l: the previous-token head's saturated softmax hides its pos edges from EAP
    model, graph, task, _ = redundant
    loss = next_token_loss_on(task.clean, task.positions)
    exact = edge_effects(model, graph, task.clean, "zero", loss)
    eap = edge_attribution(model, graph, task.clean, "zero", loss).detach()
    top_ex = set(exact.abs().topk(3).indices.tolist())
    want = len(top_ex & set(eap.abs().topk(3).indices.tolist())) / 3
    keep = eap.clone(), exact.clone()
    choice, recall = f(eap, exact, 3)
    assert torch.equal(eap, keep[0]) and torch.equal(exact, keep[1]), "trust_eap_ranking changed an input"
    rho = spearman(eap, exact)
    expect_number(recall, want, "the top-3 recall of EAP on redundant-2l (zero ablation)", tol=1e-9,
                  hint="you returned a rank correlation over all edges: judge by the top-k recall instead"
                  if abs(float(recall) - rho) < 1e-6 else
                  "rank by |score| on both sides, and count the exact top-k found in EAP's top-k")
    assert choice == ("trust" if want == 1.0 else "re-check"), (
        f"EAP's Spearman with exact patching is {rho:.2f}, yet it finds {want:.2f} of the 3 largest edges: "
        "a high rank correlation does not say the big edges are found; judge by the top-k recall")
    # signs: the largest exact effect is negative
    exact2 = torch.tensor([-5.0, 3.0, 2.0, 0.5, 0.1])
    choice, recall = f(0.5 * exact2, exact2, 2)
    assert choice == "trust" and float(recall) == 1.0, \
        "an estimate proportional to the exact effects finds every top edge: rank by |score|, not by score"
    # one large edge near zero in the estimate, the rest in order
    eap3 = torch.tensor([0.01, 3.0, 2.0, 0.5, 0.1])
    choice, recall = f(eap3, exact2.abs(), 2)
    expect_number(recall, 0.5, "the recall when the largest edge is missed", tol=1e-9)
    assert choice == "re-check", "the largest edge is missed: re-check it exactly, whatever the rest says"


@pytest.mark.exercise("trust_acdc_circuit")
@pytest.mark.points(1)
def test_trust_acdc_circuit():
    f = answers().trust_acdc_circuit
    a = ["L1H0->logits", "embed->L1H0.q", "embed->L1H0.v"]
    b = ["L1H1->logits", "embed->L1H1.q", "embed->L1H1.v"]
    keep = list(a), list(b)
    choice, jac = f(a, b)
    assert (a, b) == keep, "trust_acdc_circuit changed a circuit in place"
    assert choice == "order-dependent", ("the two circuits have the same size but keep different heads: "
                                         "compare the edge sets, not their sizes")
    expect_number(jac, 0.0, "the Jaccard index of disjoint circuits", tol=1e-9)
    c = a + ["embed->L0H0.v"]
    choice, jac = f(a, c)
    expect_number(jac, 0.75, "the Jaccard index |A & B| / |A | B|", tol=1e-9,
                  hint="divide the shared edges by the edges in EITHER circuit (the union)")
    assert choice == "order-dependent", "one circuit has an edge the other lacks: the result depends on the order"
    choice, jac = f(["x", "y", "z"], ["z", "w"])
    expect_number(jac, 0.25, "the Jaccard index of circuits of 3 and 2 edges sharing 1", tol=1e-9,
                  hint="divide the shared edges by the edges in EITHER circuit (the union), not by the larger "
                       "circuit's size")
    choice, jac = f(set(a), tuple(reversed(a)))
    assert choice == "stable" and float(jac) == 1.0, "the same edges in another order are the same circuit"
    choice, jac = f([], [])
    assert choice == "stable" and float(jac) == 1.0, "two empty circuits agree: Jaccard 1.0"


@pytest.mark.exercise("trust_returned_circuit")
@pytest.mark.points(2)
def test_trust_returned_circuit():
    f = answers().trust_returned_circuit
    # a dense model: the circuit is faithful, but so is any random circuit of its size
    rand = [0.91, 0.93, 0.88]
    choice, margin = f(0.95, rand)
    expect_number(margin, 0.95 - 0.93, "the margin over the best random circuit", tol=1e-9,
                  hint="compare with the BEST random circuit (the max), not the mean")
    assert choice == "low confidence", ("faithfulness 0.95, but random circuits of the same size keep 0.93: "
                                        "a faithful circuit is no discovery when any circuit of its size is")
    choice, margin = f(0.97, torch.tensor([0.2, 0.35, 0.1]))
    assert choice == "trust", "faithful (0.97) and far above random circuits of its size (0.35): trust it"
    choice, _ = f(0.85, [0.1])
    assert choice == "low confidence", "far above random, but it keeps only 0.85 of the behaviour (< 0.9)"
    choice, _ = f(0.9, [0.0])
    assert choice == "trust", "faithfulness of exactly 0.9 meets the bar (>= 0.9)"


@pytest.fixture(scope="module")
def majority_probe():
    """A probe for the favoured token of ``majority-1l`` at ``hook_embed`` (the current token only):
    its accuracy on every row, and on the rows where the current token is not the favoured one."""
    from toylab.data import make_dataset
    from toylab.features.probes import fit_probe
    from toylab.features.train_sae import gather_activations
    from toylab.training.presets import load_shipped

    ckpt = load_shipped("majority-1l")
    ds = make_dataset(ckpt.data_spec)
    batch = ds.sample_batch(200, torch.Generator().manual_seed(5))
    tokens = batch.tokens
    labels = batch.majority[:, None].expand_as(tokens)[:, 1:].reshape(-1) - 1
    current = tokens[:, 1:].reshape(-1) - 1
    groups = torch.arange(tokens.shape[0]).repeat_interleave(tokens.shape[1] - 1)
    acts = gather_activations(ckpt.model, "hook_embed", tokens)[:, 1:].reshape(len(labels), -1)
    acc = fit_probe(acts, labels, groups=groups).test_accuracy
    dec = fit_probe(acts, torch.where(current == labels, -1, labels), groups=groups).test_accuracy
    return acc, dec, 1.0 / ds.k


@pytest.mark.exercise("trust_probe")
@pytest.mark.points(2)
@pytest.mark.hidden
def test_trust_probe(majority_probe):
    f = answers().trust_probe
    acc, dec, chance = majority_probe
    choice, lift = f(acc, dec, chance)
    expect_number(lift, dec - chance, "the lift over chance where the correlate disagrees", tol=1e-9,
                  hint="lift = decorrelated - chance (not accuracy - chance)")
    assert choice == "correlated", (
        f"at hook_embed of majority-1l the probe scores {acc:.2f} against a chance of {chance:.2f}, yet "
        f"{dec:.2f} where the current token is not the favoured one: high accuracy alone does not mean the "
        "model computed the variable; the probe reads the current token")
    choice, lift = f(0.8, 0.7, 0.125)
    assert choice == "planted", "the probe keeps most of its lift (0.575 of 0.675) where the correlate is no help"
    choice, _ = f(0.625, 0.375, 0.125)  # exactly half the lift kept
    assert choice == "planted", "keeping exactly half the lift counts as planted (>= 0.5 * (accuracy - chance))"


@pytest.mark.exercise("trust_sae_mcc")
@pytest.mark.points(1)
def test_trust_sae_mcc():
    f = answers().trust_sae_mcc
    mccs = [0.966, 0.88, 0.87]  # seed 0 passes, the mean passes, two seeds do not
    keep = list(mccs)
    choice, worst = f(mccs)
    assert mccs == keep, "trust_sae_mcc changed its input in place"
    expect_number(worst, 0.87, "the worst MCC over the seeds", tol=1e-9,
                  hint="you averaged the seeds: report the worst one (the min)" if abs(float(worst) - 0.905) < 1e-6
                  else "you took one seed (or the best): report the worst one (the min)")
    assert choice == "do not trust", ("seed 0 gives 0.966 and the mean is 0.905, but two seeds are below 0.9: "
                                      "a recovery that fails at some seeds is not a recovery")
    choice, worst = f(torch.tensor([0.95, 0.92, 0.91]))
    assert choice == "trust", "every seed reaches 0.9: trust it"
    choice, _ = f([0.9], 0.9)
    assert choice == "trust", "an MCC of exactly the threshold meets it (>=)"
    choice, _ = f([0.99, 0.97], threshold=0.98)
    assert choice == "do not trust", "with threshold 0.98, the seed at 0.97 fails: use the threshold you are given"
