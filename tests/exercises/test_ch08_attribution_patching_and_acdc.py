"""Graded tests of chapter 8, "Attribution patching and automated circuit discovery".

Ground truth: the library's independent implementations in ``toylab.discovery``
(exact edge patching, attribution patching, ACDC, ROC scoring, Spearman) run on
the shipped ``induction-2l`` and ``skiptrigram-1l`` models and on small random
models of other shapes, and the induction circuit derived from the model's own
detectors (``toylab.discovery.reference``); nothing is a number recorded from
the solutions.
"""

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers

CH = "ch08_attribution_patching_and_acdc"


def answers():
    return load_answers(CH)


def random_model(n_layers, n_heads, d_model, d_vocab, positional, seed):
    from toylab.model import AttnOnlyTransformer, ModelConfig

    cfg = ModelConfig(d_vocab=d_vocab, n_ctx=12, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      positional=positional)
    return AttnOnlyTransformer(cfg, seed=seed).eval()


def token_pair(model, batch, n_pos, seed):
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    return torch.randint(V, (batch, n_pos), generator=g), torch.randint(V, (batch, n_pos), generator=g)


def induction_batches(n, seed):
    from toylab.data import make_dataset
    from toylab.training.presets import get_preset

    ds = make_dataset(get_preset("induction-2l").data)
    return ds.sample_batch(n, torch.Generator().manual_seed(seed)), ds.sample_batch(
        n, torch.Generator().manual_seed(seed + 1))


# ----------------------------------------------------------------------------- edge_patch_effect
@pytest.mark.exercise("edge_patch_effect")
@pytest.mark.points(3)
def test_edge_patch_effect(induction_model):
    from toylab.discovery.edge_patching import edge_effects, run_with_edges
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, kl_to_clean, logit_diff

    clean, corr = induction_batches(8, 3)
    pos = induction_positions(clean.is_repeat)
    cases = [(induction_model, clean.tokens, corr.tokens, logit_diff(clean.tokens, corr.tokens, pos),
              ["L0H0->L1H1.k", "embed->L1H0.v", "L1H1->logits", "pos->L1H0.q"])]
    m3 = random_model(3, 3, 24, 20, "learned", seed=5)
    x3, y3 = token_pair(m3, 4, 9, 6)
    with torch.no_grad():
        kl3 = kl_to_clean(m3(x3))
    cases.append((m3, x3, y3, kl3, ["L0H2->L2H1.v", "L1H0->L2H2.q", "pos->L1H1.k", "embed->logits"]))
    for model, x, y, metric, names in cases:
        graph = Graph(model)
        want = edge_effects(model, graph, x, y, metric)
        before = (x.clone(), y.clone())
        for name in names:
            i = graph.edge_index(name)
            sender, receiver = name.split("->")
            got = answers().edge_patch_effect(model, x, y, metric, sender, receiver)
            w = float(want[i])
            node = graph.circuit(graph.edges[j].name for j in graph.outgoing(sender))
            with torch.no_grad():
                base = float(metric(model(x)))
                as_node = float(run_with_edges(model, graph, x, y, node.mask, metric)[0]) - base
                denoise = float(edge_effects(model, graph, x, y, metric, direction="denoise")[i])
            tol = 1e-3 * max(1.0, abs(w))
            value = float(got)
            assert abs(value + w) > tol or abs(w) < tol, (
                f"{name}: you have {value:.4g}, the exact effect is {w:.4g}. The sign is flipped: "
                "return M(patched) - M(clean), and patch in corrupted - clean (not clean - corrupted)")
            assert abs(value - as_node) > tol or abs(as_node - w) < tol, (
                f"{name}: you have {value:.4g}, the edge's effect is {w:.4g}: you patched the sender's output "
                f"for every reader ({as_node:.4g}, node patching). Change only receiver {receiver}'s input")
            assert abs(value - denoise) > tol or abs(denoise - w) < tol, (
                f"{name}: you have {value:.4g}, expected {w:.4g}: that is denoising (start from the corrupted "
                "run). Noising starts from the clean run and patches in the corrupted sender output")
            expect_number(value, w, f"the effect of edge {name} (model with {model.cfg.n_layers} layers)",
                          tol=tol, hint="x_r := x_r - out_s(clean) + out_s(corrupted), only for the receiver's head")
        assert torch.equal(x, before[0]) and torch.equal(y, before[1]), "your function changed its input tokens"


# ----------------------------------------------------------------------------- atp_estimate
def _grads_of_results(model, base, metric):
    """``dM/d result`` of every layer at ``base``, and the results themselves."""
    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_result" for l in range(L)]
    deltas = {}

    def add(act, hook):
        deltas[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + deltas[hook.name]

    with torch.enable_grad():
        value = metric(model.run_with_hooks(base, fwd_hooks=[(n, add) for n in names]))
        grads = torch.autograd.grad(value, [deltas[n] for n in names])
    with torch.no_grad():
        _, cache = model.run_with_cache(base, names_filter=names)
    return grads, [cache[n] for n in names]


@pytest.mark.exercise("atp_estimate")
@pytest.mark.points(1)
def test_atp_estimate(induction_model):
    from toylab.discovery.attribution_patching import node_attribution
    from toylab.discovery.metrics import induction_positions, logit_diff, next_token_loss_on

    clean, corr = induction_batches(8, 7)
    pos = induction_positions(clean.is_repeat)
    m3 = random_model(3, 3, 24, 20, "shortformer", seed=2)
    x3, y3 = token_pair(m3, 4, 10, 9)
    cases = [(induction_model, clean.tokens, corr.tokens, logit_diff(clean.tokens, corr.tokens, pos)),
             (m3, x3, y3, next_token_loss_on(x3))]
    for model, x, y, metric in cases:
        for around in ("clean", "corrupted"):
            base, other = (x, y) if around == "clean" else (y, x)
            want = node_attribution(model, x, y, metric, "result", around=around)
            grads, base_acts = _grads_of_results(model, base, metric)
            with torch.no_grad():
                _, cache = model.run_with_cache(other, names_filter=lambda n: n.endswith("hook_result"))
            for l in range(model.cfg.n_layers):
                o = cache[f"blocks.{l}.attn.hook_result"]
                g, b = grads[l].clone(), base_acts[l].clone()
                got = answers().atp_estimate(g, b, o)
                assert torch.equal(g, grads[l]) and torch.equal(b, base_acts[l]), "atp_estimate changed its inputs"
                diff = o - base_acts[l]
                expect_tensor(got, want[l], f"AtP estimate of layer {l} around the {around} run", "n_heads",
                              atol=1e-3 * float(want.abs().max()), rtol=1e-3,
                              hints=[(-want[l], "the sign is flipped: the step goes from the base run to the "
                                                "other run, (a_other - a_base) . grad"),
                                     ((diff * grads[l]).mean(dim=(0, 1, 3)), "sum over batch, positions and d "
                                      "(the metric's gradient already carries the averaging), do not average"),
                                     ((diff * grads[l]).sum().expand(want[l].shape), "you summed over the heads "
                                      "too: keep one estimate per head (sum over dims 0, 1 and 3 only)"),
                                     ((diff * grads[l]).sum(dim=(1, 3)).mean(0), "sum over the batch too, do "
                                      "not average it (the metric's gradient already carries the averaging)")])


# ----------------------------------------------------------------------------- spearman
@pytest.mark.exercise("spearman")
@pytest.mark.points(1)
def test_spearman():
    from toylab.discovery.roc import spearman as truth

    g = torch.Generator().manual_seed(11)
    a = torch.randn(30, generator=g)
    b = a + 0.8 * torch.randn(30, generator=g)
    tied_a = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 0.5, 0.0])
    tied_b = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.9, 2.5, 0.0, 2.0, 0.0, 0.05])
    cubic = torch.linspace(-2, 2, 15)
    for x, y in ((a, b), (tied_a, tied_b), (cubic, cubic ** 3), (cubic, -cubic.exp())):
        xc, yc = x.clone(), y.clone()
        got = answers().spearman(xc, yc)
        assert torch.equal(xc, x) and torch.equal(yc, y), "spearman changed its inputs"
        want = truth(x, y)
        pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        no_ties = float(torch.corrcoef(torch.stack([x.argsort().argsort().double(),
                                                    y.argsort().argsort().double()]))[0, 1])
        value = float(got)
        if abs(pearson - want) > 1e-3:
            assert abs(value - pearson) > 1e-6, "that is Pearson's correlation of the values: correlate the RANKS"
        if abs(no_ties - want) > 1e-3:
            assert abs(value - no_ties) > 1e-6, ("tied values must share their average rank; argsort().argsort() "
                                                 "gives tied values different ranks")
        expect_number(value, want, "Spearman's correlation", tol=1e-6,
                      hint="Pearson correlation of the average ranks")


# ----------------------------------------------------------------------------- roc_auc
@pytest.mark.exercise("roc_auc")
@pytest.mark.points(1)
def test_roc_auc(induction_model):
    from toylab.discovery.edge_patching import edge_effects
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, logit_diff
    from toylab.discovery.reference import induction_circuit
    from toylab.discovery.roc import roc_from_scores

    graph = Graph(induction_model)
    clean, corr = induction_batches(8, 13)
    metric = logit_diff(clean.tokens, corr.tokens, induction_positions(clean.is_repeat))
    ref = induction_circuit(induction_model, graph, clean.tokens)
    g = torch.Generator().manual_seed(4)
    exact = edge_effects(induction_model, graph, clean.tokens, corr.tokens, metric)
    noisy = exact + 2.0 * torch.randn(len(graph), generator=g)
    ties = torch.zeros(len(graph))
    ties[:5] = 1.0
    for scores in (exact.abs(), exact, noisy, ties, -noisy.abs()):
        inref = ref.mask.clone()
        sc = scores.clone()
        got = answers().roc_auc(sc, inref)
        assert torch.equal(sc, scores) and torch.equal(inref, ref.mask), "roc_auc changed its inputs"
        want = roc_from_scores(graph, scores, ref)[2]
        pos, neg = scores[ref.mask], scores[~ref.mask]
        signed = float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())
        value = float(got)
        if abs(1 - want - want) > 1e-6 and abs(1 - want - signed) > 1e-6:
            assert abs(value - (1 - want)) > 1e-6, "the AUC is reversed: reference edges should score HIGHER"
        if abs(signed - want) > 1e-6:
            assert abs(value - signed) > 1e-6, "rank by |score|: an effect of -3 matters as much as +3"
        if abs(1 - want - want) > 1e-6:
            assert abs(value - (1 - want)) > 1e-6, "the AUC is reversed: reference edges should score HIGHER"
        expect_number(value, want, "the ROC AUC", tol=1e-6, hint="ties between a reference and another edge count 1/2")


# ----------------------------------------------------------------------------- acdc_prune
@pytest.mark.exercise("acdc_prune")
@pytest.mark.points(2)
def test_acdc_prune():
    from toylab.discovery.acdc import acdc
    from toylab.discovery.edge_patching import run_with_edges
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import kl_to_clean

    # synthetic metrics that tell the typical mistakes apart
    names = ["a", "b", "c", "d"]
    each = {"a": 0.6, "b": 0.6, "c": 0.6, "d": 0.6}
    got = answers().acdc_prune(lambda r: sum(each[e] for e in r), names, 1.0)
    assert list(got) == [], (f"every removal raises the metric by 0.6 < tau = 1 over the CURRENT graph, so all go; "
                             f"you kept {list(got)}: compare with the metric after the removals so far, not "
                             "with the full graph's")
    got = answers().acdc_prune(lambda r: -2.0 * len(r), names, 0.5)
    assert list(got) == [], "a removal that LOWERS the metric is accepted (do not compare |difference|)"
    got = answers().acdc_prune(lambda r: 0.5 * len(r & {"b"}) + 0.25 * len(r & {"c"}), names, 0.5)
    assert list(got) == ["b"], (f"an increase of exactly tau is not 'less than tau': b must stay (got {list(got)})")
    got = answers().acdc_prune(lambda r: 1.0 if {"a", "b"} <= set(r) else 0.0, names, 0.5)
    assert list(got) == ["b"], (f"a and b back each other up: removing either alone costs nothing, but once a is "
                                f"gone removing b costs 1 >= tau. Measure each removal on the CURRENT graph (the "
                                f"earlier removals applied), not on the full one (got {list(got)})")
    # against the library's ACDC on a random model (no skipping of dead heads)
    model = random_model(2, 3, 24, 20, "learned", seed=8)
    graph = Graph(model)
    x, y = token_pair(model, 4, 10, 1)
    with torch.no_grad():
        kl = kl_to_clean(model(x))

    def metric_of(removed):
        with torch.no_grad():
            return float(run_with_edges(model, graph, x, y, graph.mask(removed), kl)[0])

    order = [graph.edges[i].name for r in reversed(graph.receivers) for i in reversed(graph.incoming(r))]
    for tau in (0.002, 0.02):
        want = acdc(model, graph, x, y, tau, metric=kl, skip_dead=False)
        got = answers().acdc_prune(metric_of, order, tau)
        assert set(got) == set(want.circuit.edges), (
            f"tau = {tau}: you kept {len(set(got))} edges, ACDC keeps {len(want.circuit)}; "
            f"missing {sorted(want.circuit.edges - set(got))}, extra {sorted(set(got) - want.circuit.edges)}")
        assert list(got) == [e for e in order if e in want.circuit.edges], "return the kept edges in visiting order"


# ----------------------------------------------------------------------------- choose_metric
@pytest.mark.exercise("choose_metric")
@pytest.mark.points(2)
def test_choose_metric(induction_model):
    from toylab.discovery.attribution_patching import edge_attribution
    from toylab.discovery.edge_patching import edge_effects
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, kl_to_clean, logit_diff, next_token_loss_on
    from toylab.discovery.reference import induction_circuit
    from toylab.discovery.roc import spearman, topk_recall

    choice = answers().choose_metric()
    assert choice in ("kl", "logit_diff", "loss"), f"return 'kl', 'logit_diff' or 'loss', got {choice!r}"
    graph = Graph(induction_model)
    for seed in (20, 30):
        clean, corr = induction_batches(16, seed)
        x, y = clean.tokens, corr.tokens
        pos = induction_positions(clean.is_repeat)
        with torch.no_grad():
            metric = {"kl": lambda: kl_to_clean(induction_model(x), pos),
                      "logit_diff": lambda: logit_diff(x, y, pos),
                      "loss": lambda: next_token_loss_on(x, pos)}[choice]()
        exact = edge_effects(induction_model, graph, x, y, metric)
        est = edge_attribution(induction_model, graph, x, y, metric)
        if choice == "kl":
            assert est.abs().max() > 1e-4 * exact.abs().max(), (
                f"EAP on KL: the largest estimate is {float(est.abs().max()):.1e} against exact effects up to "
                f"{float(exact.abs().max()):.2f}. KL(clean || patched) is minimal (0) at the clean run, where "
                "EAP takes its gradient: the gradient is 0 and EAP ranks float noise")
        k = len(induction_circuit(induction_model, graph, x))
        rho, rec = spearman(est, exact), topk_recall(est, exact, k)
        assert rho >= 0.7 and rec >= 0.75, (
            f"EAP on {choice}: Spearman {rho:.2f} with exact patching, top-{k} recall {rec:.2f}")


# ----------------------------------------------------------------------------- choose_tau
def _sweep(model, graph, x, y, taus, positions):
    from toylab.discovery.acdc import acdc_sweep

    res = acdc_sweep(model, graph, x, y, taus, positions=positions)
    return {t: r.circuit for t, r in zip(taus, res)}, [len(r.circuit) for r in res], [r.metric for r in res]


def _skiptrigram_case():
    """Rule-firing positions of the skip-trigram language, with each firing B replaced by a token
    that triggers nothing; the reference: every q/k/v edge from the embedding and every head's logits."""
    from toylab.data import make_dataset
    from toylab.discovery.graph import Graph
    from toylab.training.presets import get_preset, load_model

    model = load_model("skiptrigram-1l")
    lang = make_dataset(get_preset("skiptrigram-1l").data)
    graph = Graph(model)
    toks = lang.sample(48, torch.Generator().manual_seed(5))
    fires = lang.active_rules(toks) >= 0
    fires[:, -1] = False
    used = {a for a, _, _ in lang.rules} | {b for _, b, _ in lang.rules}
    neutral = torch.tensor([t for t in range(1, lang.d_vocab) if t not in used])
    fill = neutral[torch.randint(len(neutral), toks.shape, generator=torch.Generator().manual_seed(6))]
    corrupted = torch.where(fires, fill, toks)
    heads = [n.name for n in graph.nodes if n.kind == "head"]
    ref = graph.circuit([f"embed->{h}.{s}" for h in heads for s in "qkv"] + [f"{h}->logits" for h in heads])
    return model, graph, toks, corrupted, fires, ref


@pytest.mark.exercise("choose_tau")
@pytest.mark.points(3)
def test_choose_tau(induction_model):
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions
    from toylab.discovery.reference import induction_circuit

    clean, corr = induction_batches(8, 40)
    graph = Graph(induction_model)
    cases = [(induction_model, graph, clean.tokens, corr.tokens, induction_positions(clean.is_repeat),
              induction_circuit(induction_model, graph, clean.tokens),
              [0.001, 0.004, 0.015, 0.05, 0.2, 0.8, 3.0], "induction-2l")]
    m, g, x, y, fires, ref = _skiptrigram_case()
    cases.append((m, g, x, y, fires, ref, [0.0005, 0.002, 0.02, 0.2, 2.0, 20.0], "skiptrigram-1l"))
    for model, graph, x, y, pos, ref, taus, name in cases:
        circuits, sizes, kls = _sweep(model, graph, x, y, taus, pos)
        good = [t for t in taus if circuits[t].precision_recall(ref)[1] == 1.0
                and circuits[t].precision_recall(ref)[0] >= 0.75]
        assert good, f"test premise: some threshold of the {name} sweep recovers the reference"
        chosen = answers().choose_tau(list(taus), list(sizes), list(kls))
        assert any(abs(float(chosen) - t) < 1e-12 for t in taus), (
            f"{name}: return one of the sweep's thresholds {taus}, got {chosen!r}")
        t = min(taus, key=lambda s: abs(s - float(chosen)))
        p, r = circuits[t].precision_recall(ref)
        table = ", ".join(f"tau {tt:g}: {n} edges KL {max(k, 0.0):.3f}" for tt, n, k in zip(taus, sizes, kls))
        assert r == 1.0, (f"{name}: at tau {t:g} the kept circuit misses {1 - r:.0%} of the known circuit; "
                          f"the threshold is too large (the KL of the kept circuit jumped). Sweep: {table}")
        assert p >= 0.75, (f"{name}: at tau {t:g} only {p:.0%} of the kept edges are in the known circuit: "
                           f"too small a threshold keeps noise edges. Sweep: {table}")


# ----------------------------------------------------------------------------- is_edge_real
@pytest.mark.hidden
@pytest.mark.exercise("is_edge_real")
@pytest.mark.points(2)
def test_is_edge_real(induction_model):
    from toylab.discovery.attribution_patching import edge_attribution
    from toylab.discovery.edge_patching import edge_effects, run_with_edges
    from toylab.discovery.graph import Graph
    from toylab.discovery.metrics import induction_positions, kl_to_clean
    from toylab.discovery.reference import induction_circuit, induction_heads

    graph = Graph(induction_model)
    clean, corr = induction_batches(16, 50)
    x, y = clean.tokens, corr.tokens
    pos = induction_positions(clean.is_repeat)
    with torch.no_grad():
        kl = kl_to_clean(induction_model(x), pos)
    ref = induction_circuit(induction_model, graph, x)
    _, ind = induction_heads(induction_model, x)
    a, b = (f"L{l}H{h}" for l, h in ind[:2])
    alone = edge_effects(induction_model, graph, x, y, kl)
    approx = edge_attribution(induction_model, graph, x, y, kl)

    def partner(name):
        return name.replace(a, "#").replace(b, a).replace("#", b)

    rows = []
    with torch.no_grad():
        for i, e in enumerate(graph.edges):
            p = partner(e.name)
            if p == e.name:
                without = float(alone[i])
            else:
                v = run_with_edges(induction_model, graph, x, y, torch.stack([graph.mask([p]).float(),
                                                                            graph.mask([p, e.name]).float()]), kl)
                without = float(v[1] - v[0])
            rows.append((e.name, float(alone[i]), without, float(approx[i])))
    for al, wo, ap, tau, want, why in (
            (0.3, 0.3, 0.3, 0.3, True, "an increase of exactly tau is at least tau: the edge matters (>= tau)"),
            (0.5, 0.1, 0.5, 0.3, True, "patched alone it costs 0.5 >= tau: an edge that matters in either test "
                                       "is real, whatever its partner does"),
            (0.1, 0.5, 0.0, 0.3, True, "once its partner is patched it costs 0.5 >= tau: the two heads back "
                                       "each other up, and an edge that matters in either test is real"),
            (0.1, 0.2, 0.9, 0.3, False, "both exact measurements are below tau; the EAP estimate is only an "
                                        "estimate of them")):
        got = answers().is_edge_real(al, wo, ap, tau)
        assert bool(got) == want, (f"alone {al}, without its partner {wo}, EAP {ap}, tau {tau}: you said "
                                   f"{bool(got)}; {why}")
    for tau in (0.3, 1.0):
        for name, al, wo, ap in rows:
            got = answers().is_edge_real(al, wo, ap, tau)
            want = name in ref
            if got != want and want and al < tau <= wo:
                raise AssertionError(f"{name} (tau {tau}): patched alone it costs {al:.2f}, but once its "
                                     f"counterpart at the other induction head is gone it costs {wo:.2f}. The two "
                                     "heads back each other up: an edge is real if it matters in either test")
            if got != want and want and abs(ap) < tau <= al:
                raise AssertionError(f"{name} (tau {tau}): exact patching says {al:.2f}, EAP {ap:.1e}. EAP "
                                     "on KL takes a gradient at KL's minimum and sees nothing: trust the "
                                     "exact measurement over the estimate")
            assert bool(got) == want, (f"{name} (tau {tau}): alone {al:.3f}, without its partner {wo:.3f}, "
                                       f"EAP {ap:.1e}: you said {bool(got)}, the known circuit says {want}")
