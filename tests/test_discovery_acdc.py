"""ACDC, ROC scoring and the reference circuits (toylab.discovery.acdc, roc, reference)."""

import math

import pytest
import torch

from toylab.data import make_dataset
from toylab.discovery.acdc import acdc, acdc_sweep
from toylab.discovery.edge_patching import run_circuit
from toylab.discovery.graph import Graph
from toylab.discovery.metrics import induction_positions, next_token_loss_on
from toylab.discovery.reference import induction_circuit, induction_heads
from toylab.discovery.roc import roc_curve, roc_from_scores, tpr_fpr
from toylab.training.presets import get_preset, load_model
from toylab.circuits.scores import head_detector_scores

torch.set_num_threads(1)
TAUS = [0.0, 0.003, 0.03, 0.3, 3.0]


def batches(name, n=32):
    ds = make_dataset(get_preset(name).data)
    return ds.sample_batch(n, torch.Generator().manual_seed(0)), ds.sample_batch(n, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def two_layer():
    model = load_model("induction-2l")
    clean, corr = batches("induction-2l")
    return model, Graph(model), clean, corr


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


def test_reference_circuit_comes_from_the_detectors(two_layer):
    model, g, clean, _ = two_layer
    prev, heads = induction_heads(model, clean.tokens)
    scores = head_detector_scores(model, clean.tokens, exclude_bos=True)
    assert scores["previous_token"][prev] > 0.8 and all(scores["induction"][h] > 0.5 for h in heads)
    minimal = induction_circuit(model, g, clean.tokens, composition=False)
    full = induction_circuit(model, g, clean.tokens, composition=True)
    assert minimal.edges <= full.edges
    p = f"L0H{prev[1]}"
    for l, h in heads:
        assert {f"{p}->L{l}H{h}.k", f"embed->L{l}H{h}.q", f"embed->L{l}H{h}.v", f"L{l}H{h}->logits"} <= minimal.edges


def test_acdc_recovers_the_induction_circuit(two_layer):
    """ROC over a threshold sweep against the circuit derived from the detectors and composition scores."""
    model, g, clean, corr = two_layer
    pos = induction_positions(clean.is_repeat)
    results = acdc_sweep(model, g, clean.tokens, corr.tokens, TAUS, positions=pos)
    sizes = [len(r.circuit) for r in results]
    assert sizes[0] == len(g) and sizes == sorted(sizes, reverse=True)  # tau = 0 keeps every edge; larger tau, fewer
    ref = induction_circuit(model, g, clean.tokens, composition=False)  # P -> I.k, embed -> I.q/v, I -> logits
    fpr, tpr, auc = roc_curve([r.circuit for r in results], ref)
    assert auc >= 0.95, f"ROC AUC {auc:.3f} against {ref}"
    # a mid threshold keeps a circuit that does the task: loss on the induction positions near the full model's
    loss = next_token_loss_on(clean.tokens, pos)
    mid = results[2]
    full = run_circuit(model, g, g.circuit(g.edge_names), clean.tokens, corr.tokens, loss)
    empty = run_circuit(model, g, g.circuit([]), clean.tokens, corr.tokens, loss)
    kept = run_circuit(model, g, mid.circuit, clean.tokens, corr.tokens, loss)
    assert (empty - kept) / (empty - full) > 0.9
    assert not any(e.startswith("pos->") for e in mid.circuit.edges)  # invisible to this corruption
    assert no_hooks(model)


def test_acdc_sweep_shares_tests_between_thresholds_and_changes_no_result(two_layer):
    """acdc_sweep reads a test another threshold already ran from a shared table: every run equals acdc
    at that threshold alone (circuit, final M, log), and the sweep runs fewer forward passes."""
    import toylab.discovery.acdc as acdc_module

    model, g, clean, corr = two_layer
    pos = induction_positions(clean.is_repeat)
    taus = [0.003, 0.01, 0.03, 0.1]
    alone = [acdc(model, g, clean.tokens, corr.tokens, t, positions=pos) for t in taus]
    calls = []
    real = acdc_module.run_with_edges
    acdc_module.run_with_edges = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        swept = acdc_sweep(model, g, clean.tokens, corr.tokens, taus, positions=pos)
    finally:
        acdc_module.run_with_edges = real
    for a, b in zip(alone, swept):
        assert a.circuit.edges == b.circuit.edges and a.metric == b.metric and a.log == b.log
        assert a.n_evaluations == b.n_evaluations
    assert len(calls) < sum(a.n_evaluations + 1 for a in alone)
    with pytest.raises(TypeError, match="unexpected argument"):
        acdc_sweep(model, g, clean.tokens, corr.tokens, taus, tau=0.1)


def test_acdc_on_the_one_layer_control_finds_no_induction():
    model = load_model("induction-1l")
    g = Graph(model)
    clean, corr = batches("induction-1l")
    pos = induction_positions(clean.is_repeat)
    res = acdc(model, g, clean.tokens, corr.tokens, 0.03, positions=pos)
    loss = next_token_loss_on(clean.tokens, pos)
    kept = run_circuit(model, g, res.circuit, clean.tokens, corr.tokens, loss)
    # an induction circuit predicts repeated tokens almost surely (the 2L model's circuit: ~0.1 nats); this one cannot
    assert kept > 1.0
    scores = head_detector_scores(model, clean.tokens, exclude_bos=True)["induction"][0]
    kept_heads = {n for n in res.circuit.nodes if n.startswith("L")}
    assert all(float(scores[int(n[3])]) < 0.5 for n in kept_heads)
    with pytest.raises(ValueError, match="at least two layers"):
        induction_circuit(model, g, clean.tokens)


def test_sender_order_and_zero_ablation(two_layer):
    model, g, clean, corr = two_layer
    pos = induction_positions(clean.is_repeat)
    rev = acdc(model, g, clean.tokens, corr.tokens, 0.03, positions=pos)
    fwd = acdc(model, g, clean.tokens, corr.tokens, 0.03, positions=pos, sender_order="forward")
    listed = acdc(model, g, clean.tokens, corr.tokens, 0.03, positions=pos,
                  sender_order=[n.name for n in g.nodes][::-1])
    assert listed.circuit == rev.circuit
    ref = induction_circuit(model, g, clean.tokens, composition=False)
    for r in (rev, fwd):
        assert ref.edges <= r.circuit.edges
        assert r.metric < 0.03 * r.n_evaluations  # each removal raised the KL by less than tau
    zero = acdc(model, g, clean.tokens, "zero", 0.03, positions=pos)
    assert any(e.startswith("pos->") for e in zero.circuit.edges)  # zero ablation does remove positions


def test_roc_helpers(two_layer):
    model, g, clean, _ = two_layer
    ref = g.circuit(["embed->logits", "L1H0->logits"])
    assert tpr_fpr(ref, ref) == (1.0, 0.0)
    assert roc_curve([ref], ref)[2] == pytest.approx(1.0)
    assert roc_curve([g.circuit(g.edge_names), g.circuit([])], ref)[2] == pytest.approx(0.5)
    scores = torch.zeros(len(g))
    scores[g.edge_index("embed->logits")] = -2.0  # sign does not matter
    scores[g.edge_index("L1H0->logits")] = 1.0
    assert roc_from_scores(g, scores, ref)[2] == pytest.approx(1.0)
    assert roc_from_scores(g, torch.zeros(len(g)), ref)[2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one per edge"):
        roc_from_scores(g, torch.zeros(3), ref)
    with pytest.raises(ValueError, match="at least one edge in and one edge out"):
        roc_curve([ref], g.circuit([]))


@pytest.mark.parametrize("tau", [-0.1, math.nan, math.inf])
def test_bad_tau(two_layer, tau):
    model, g, clean, corr = two_layer
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        acdc(model, g, clean.tokens, corr.tokens, tau)
    with pytest.raises(ValueError, match="tau must be"):
        acdc_sweep(model, g, clean.tokens, corr.tokens, [0.1, tau])


def test_bad_input_leaves_no_hook(two_layer):
    model, g, clean, corr = two_layer
    with pytest.raises(ValueError, match="same shape"):
        acdc(model, g, clean.tokens, corr.tokens[:, :10], 0.1)
    with pytest.raises(ValueError, match="sender_order"):
        acdc(model, g, clean.tokens, corr.tokens, 0.1, sender_order="random")
    with pytest.raises(ValueError, match="unknown node"):
        acdc(model, g, clean.tokens, corr.tokens, 0.1, sender_order=["embed", "L7H7"])
    with pytest.raises(ValueError, match="every node"):
        acdc(model, g, clean.tokens, corr.tokens, 0.1, sender_order=["embed"])
    with pytest.raises(ValueError, match="must return a scalar"):
        acdc(model, g, clean.tokens, corr.tokens, 0.1, metric=lambda lg: lg[..., 0])
    with pytest.raises(TypeError, match="tau"):
        acdc(model, g, clean.tokens, corr.tokens, "0.1")
    assert no_hooks(model)


@pytest.mark.slow
def test_subnetwork_probing_keeps_the_induction_circuit(two_layer):
    """The ACDC paper's learned-mask baseline: hard-concrete edge masks with an L0 penalty."""
    from toylab.discovery.subnetwork_probing import gate, subnetwork_probing

    model, g, clean, corr = two_layer
    x, y = clean.tokens[:16], corr.tokens[:16]
    pos = induction_positions(clean.is_repeat[:16])
    circuit, log_alpha = subnetwork_probing(model, g, x, y, 0.3, positions=pos, steps=80, samples=2, lr=0.2)
    ref = induction_circuit(model, g, x, composition=False)
    precision, recall = circuit.precision_recall(ref)
    assert recall == 1.0 and precision >= 0.6, circuit  # it may keep a second, weaker route too
    assert not any(e.startswith("pos->") for e in circuit.edges)
    assert gate(torch.tensor([-10.0, 10.0])).tolist() == [0.0, 1.0]
    assert all(p.requires_grad for p in model.parameters())  # the model's parameters are left as they were
    with pytest.raises(ValueError, match="lam"):
        subnetwork_probing(model, g, x, y, -1.0)
    assert no_hooks(model)


def test_acdc_on_a_random_init_model_finds_no_induction(two_layer):
    """Negative control: an untrained model of the same shape. Its kept graph must not predict repeats."""
    from toylab.features.ground_truth import random_init_control

    model, _, clean, corr = two_layer
    rand = random_init_control(model)
    g = Graph(rand)
    pos = induction_positions(clean.is_repeat)
    res = acdc(rand, g, clean.tokens, corr.tokens, 0.03, positions=pos)
    loss = next_token_loss_on(clean.tokens, pos)
    kept = run_circuit(rand, g, res.circuit, clean.tokens, corr.tokens, loss)
    assert kept > 0.9 * math.log(rand.cfg.d_vocab)  # at chance: no induction
    ref = induction_circuit(model, Graph(model), clean.tokens)  # the trained model's circuit, same edge names
    assert len(res.circuit.edges & ref.edges) < len(ref)
    assert no_hooks(rand)


def test_acdc_on_the_skip_trigram_model_keeps_the_rule_edges():
    """The planted rules A ... B -> C need, for a head H: embed -> H.q (B), embed -> H.k (A), embed -> H.v
    (A's boost of C) and H -> logits. Replacing every A by a non-source token changes only what the keys
    and values read, so ACDC must keep exactly the key, value and output edges of the heads."""
    model = load_model("skiptrigram-1l")
    lang = make_dataset(get_preset("skiptrigram-1l").data)
    g = Graph(model)
    toks = lang.sample(32, torch.Generator().manual_seed(0))
    fires = lang.active_rules(toks) >= 0
    fires[:, -1] = False
    sources = torch.tensor(sorted({a for a, _, _ in lang.rules}))
    used = set(sources.tolist()) | {b for _, b, _ in lang.rules}
    neutral = torch.tensor([t for t in range(1, lang.d_vocab) if t not in used])
    fill = neutral[torch.randint(len(neutral), toks.shape, generator=torch.Generator().manual_seed(1))]
    no_a = torch.where(torch.isin(toks, sources), fill, toks)
    assert not (lang.active_rules(no_a) >= 0).any()  # the corruption switches every rule off
    res = acdc(model, g, toks, no_a, 0.03, positions=fires)
    heads = [n.name for n in g.nodes if n.kind == "head"]
    visible = {f"embed->{h}.{s}" for h in heads for s in "kv"} | {f"{h}->logits" for h in heads}
    assert res.circuit.edges == visible, res.circuit
    assert no_hooks(model)


def test_spearman_and_topk_recall():
    from toylab.discovery.roc import spearman, topk_recall

    a = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a ** 3 + 5) == pytest.approx(1.0)  # ranks only
    # ties share the average rank: [0.5, 0.5, 2, 3, 4] against [0, 1, 2, 3, 4]
    r = torch.tensor([0.5, 0.5, 2.0, 3.0, 4.0])
    want = float(torch.corrcoef(torch.stack([r, torch.arange(5.0)]))[0, 1])
    assert spearman(a, torch.arange(5.0)) == pytest.approx(want)
    assert topk_recall(torch.tensor([3.0, -2.0, 0.1, 0.0]), torch.tensor([-5.0, 0.2, 4.0, 0.0]), 2) == 0.5
    with pytest.raises(ValueError, match="same length"):
        spearman(a, a[:3])
    with pytest.raises(ValueError, match="k <= n"):
        topk_recall(a, a, 9)
