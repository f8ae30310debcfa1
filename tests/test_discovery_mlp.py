"""MLP nodes in the discovery graph: structure, exact edge patching, EAP, ACDC and scrubbing on MLP models,
and attention-only graphs exactly as they were before MLP nodes existed."""

import hashlib

import pytest
import torch

from toylab.discovery.acdc import acdc
from toylab.discovery.attribution_patching import edge_attribution
from toylab.discovery.edge_patching import edge_effects, run_with_edges, sender_outputs
from toylab.discovery.figures import edge_graph
from toylab.discovery.subnetwork_probing import subnetwork_probing
from toylab.discovery.graph import Graph, GraphNotApplicable
from toylab.discovery.scrubbing import EquivalenceClasses, Hypothesis, scrub, treeified_logits
from toylab.causal.patching import path_patch
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import load_model

torch.set_num_threads(1)


def random_mlp_model(positional="learned", n_layers=2, biases=True, act_fn="relu", seed=0):
    """A small random MLP model in float64 (so that sums in another order agree to ~1e-15)."""
    cfg = ModelConfig(d_vocab=12, n_ctx=8, d_model=16, n_layers=n_layers, n_heads=2, d_mlp=24,
                      positional=positional, biases=biases, act_fn=act_fn)
    return AttnOnlyTransformer(cfg, seed=seed).double().eval()


def pair(d_vocab=12, shape=(3, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, d_vocab, shape, generator=g), torch.randint(0, d_vocab, shape, generator=g)


V = 8
FACTS = torch.tensor([(3 * t + 1) % V for t in range(V)])  # the planted table: subject t -> attribute FACTS[t]


def fact_model(zero_second_mlp=True):
    """A hand-built 2-layer model whose layer-0 MLP stores the fact table and writes it to the logits.

    ``d_model = 2 V``: the embedding writes the one-hot token into dims ``[0, V)``; neuron ``n`` of MLP0
    reads dim ``n`` (``b_in = -1/2``, so only the current token's neuron fires, at 1/2) and writes 4 into
    dim ``V + FACTS[n]``, which ``W_U`` reads as logit ``FACTS[n]``; ``W_U`` ignores dims ``[0, V)``, so
    the direct path carries nothing. The heads keep their random weights with ``W_O`` scaled by 0.05
    (small, not zero). MLP1 is zeroed out (``W_out = 0``, ``b_out = 0``): it writes nothing.
    """
    cfg = ModelConfig(d_vocab=V, n_ctx=6, d_model=2 * V, n_layers=2, n_heads=2, d_mlp=V, positional="none",
                      biases=True)
    m = AttnOnlyTransformer(cfg, seed=0).eval()
    with torch.no_grad():
        m.W_E.zero_()
        m.W_E[:, :V] = torch.eye(V)
        for b in m.blocks:
            b.attn.W_O.mul_(0.05)
        mlp = m.blocks[0].mlp
        mlp.W_in.zero_()
        mlp.W_in[:V] = torch.eye(V)
        mlp.b_in.fill_(-0.5)
        mlp.W_out.zero_()
        mlp.W_out[torch.arange(V), V + FACTS] = 4.0
        mlp.b_out.zero_()
        if zero_second_mlp:
            m.blocks[1].mlp.W_out.zero_()
            m.blocks[1].mlp.b_out.zero_()
        m.W_U.zero_()
        m.W_U[V:] = torch.eye(V)
    return m


def fact_task(seed=0):
    """Clean subjects at the last position, corrupted = the next subject; the metric is the logit of the
    clean attribute minus the logit of the corrupted one at the last position."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, V, (16, 6), generator=g)
    corr = clean.clone()
    corr[:, -1] = (clean[:, -1] + 1) % V
    good, bad = FACTS[clean[:, -1]], FACTS[corr[:, -1]]

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(-1, good[:, None]) - last.gather(-1, bad[:, None])).mean()
    return clean, corr, metric


# --- structure ---------------------------------------------------------------------------------------

def test_mlp_nodes_slots_and_edges():
    m = random_mlp_model("learned", n_layers=2)
    g = Graph(m)
    names = [n.name for n in g.nodes]
    assert names == ["embed", "pos", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1"]
    assert g.receivers[6] == "MLP0" and g.receivers[-2:] == ["MLP1", "logits"]
    # MLP0 reads the inputs and layer 0's heads; layer-1 heads read MLP0; MLP1 reads everything before it
    assert [g.edges[i].sender for i in g.incoming("MLP0")] == ["embed", "pos", "L0H0", "L0H1"]
    assert [g.edges[i].sender for i in g.incoming("L1H0.k")] == ["embed", "pos", "L0H0", "L0H1", "MLP0"]
    assert [g.edges[i].sender for i in g.incoming("MLP1")] == ["embed", "pos", "L0H0", "L0H1", "MLP0",
                                                              "L1H0", "L1H1"]
    assert [g.edges[i].sender for i in g.incoming("logits")] == names
    assert sorted(g.edges[i].receiver for i in g.outgoing("MLP0")) == sorted(
        ["L1H0.q", "L1H0.k", "L1H0.v", "L1H1.q", "L1H1.k", "L1H1.v", "MLP1", "logits"])
    assert g.node("MLP1").kind == "mlp" and g.node("MLP1").layer == 1
    assert "d_mlp 24" in g.describe()
    # shortformer: positions reach queries and keys only, so not the MLPs either
    gs = Graph(random_mlp_model("shortformer"))
    assert "pos->MLP0" not in gs.index and "pos->L1H0.q" in gs.index and "pos->logits" not in gs.index


def test_a_graph_refuses_mlp_modules_its_config_does_not_declare():
    m = AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=1, n_heads=2), seed=0)
    m.blocks[0].mlp = torch.nn.Linear(16, 16)
    with pytest.raises(GraphNotApplicable, match="d_mlp = 0"):
        Graph(m)
    with pytest.raises(GraphNotApplicable, match="shortformer positions join"):
        Graph(AttnOnlyTransformer(ModelConfig(d_vocab=8, n_ctx=6, d_model=8, n_layers=1, d_mlp=8,
                                              layernorm=True, positional="shortformer")))


def test_sender_outputs_sum_to_the_final_residual_stream():
    m = random_mlp_model()
    g = Graph(m)
    a, _ = pair()
    out = sender_outputs(m, g, a)
    _, cache = m.run_with_cache(a)
    assert torch.allclose(out["MLP1"], cache["blocks.1.hook_mlp_out"])
    assert torch.allclose(sum(out.values()), cache["blocks.1.hook_resid_post"], atol=1e-12)


# --- (a) everything patched is the source, nothing patched is the base ---------------------------------

@pytest.mark.parametrize("positional", ["learned", "shortformer", "none"])
@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_every_edge_patched_gives_the_corrupted_logits(positional, act_fn):
    m = random_mlp_model(positional, act_fn=act_fn)
    g = Graph(m)
    a, b = pair()
    la, lb = m(a), m(b)
    assert (la - lb).abs().max() > 0.1  # the two runs differ, so the checks below can fail
    everything = run_with_edges(m, g, a, b, torch.ones(len(g)))[0]
    nothing = run_with_edges(m, g, a, b, torch.zeros(len(g)))[0]
    assert torch.allclose(everything, lb, atol=1e-12, rtol=0)
    assert torch.allclose(nothing, la, atol=1e-12, rtol=0)
    assert (everything - la).abs().max() > 0.1 and (nothing - lb).abs().max() > 0.1
    # zero ablation of every edge leaves the logits' bias alone
    zero = run_with_edges(m, g, a, "zero", torch.ones(len(g)))[0]
    assert torch.allclose(zero, m.b_U.expand_as(zero), atol=1e-12, rtol=0)
    # every edge into the MLPs alone: the MLPs compute on the corrupted stream, nothing else moves
    into_mlps = torch.zeros(len(g))
    into_mlps[g.incoming("MLP0") + g.incoming("MLP1")] = 1.0
    assert not torch.allclose(run_with_edges(m, g, a, b, into_mlps)[0], la, atol=1e-6)


def test_an_mlp_models_hooks_are_removed_after_a_run():
    m = random_mlp_model()
    g = Graph(m)
    a, b = pair()
    run_with_edges(m, g, a, b, torch.ones(len(g)))
    assert not m.any_hooks()


# --- (b) linearity of the residual stream ------------------------------------------------------------

def _affine_image(receiver):
    """The hook holding an affine image of the receiver's input, and how to read one receiver from it."""
    if receiver == "logits":
        return None, None
    if receiver.startswith("MLP"):
        return f"blocks.{receiver[3:]}.mlp.hook_pre", lambda act: act  # x W_in + b_in
    head, slot = receiver.split(".")
    l, h = (int(x) for x in head[1:].split("H"))
    return f"blocks.{l}.attn.hook_{slot}", lambda act: act[:, :, h]  # x W + b, one head


@pytest.mark.parametrize("positional", ["learned", "shortformer"])
def test_edges_into_a_receiver_add_up_to_its_input_difference(positional):
    """One edge s -> r patched changes r's input by src_s - out_s; summed over r's incoming edges this is
    the change of r's input with all of them patched at once. Read through the affine map that follows
    the input (``x W_in + b_in``, ``x W_Q^h + b_Q^h``, ``x W_U + b_U``), which keeps sums."""
    m = random_mlp_model(positional)
    g = Graph(m)
    a, b = pair(seed=3)
    B = a.shape[0]
    checked = 0
    for r in g.receivers:
        inc = g.incoming(r)
        w = torch.zeros(len(inc) + 2, len(g))
        for j, i in enumerate(inc):
            w[j + 1, i] = 1.0
        w[-1, inc] = 1.0  # row 0: nothing patched; rows 1..n: one edge each; last: all of r's edges
        hook, read = _affine_image(r)
        seen = {}
        if hook is None:
            y = run_with_edges(m, g, a, b, w)
        else:
            def keep(act, hp):
                seen["y"] = act.detach().clone()
            with m.hooks([(hook, keep)]):
                run_with_edges(m, g, a, b, w)
            y = read(seen["y"]).reshape(len(w), B, *seen["y"].shape[1:2], -1)
        single = (y[1:-1] - y[0]).sum(0)
        together = y[-1] - y[0]
        assert together.abs().max() > 1e-3, r
        assert torch.allclose(single, together, atol=1e-10, rtol=0), r
        checked += 1
    assert checked == len(g.receivers)


# --- (c) EAP against exact edge effects -----------------------------------------------------------------

def test_eap_ranks_the_fact_mlps_edges_on_top():
    m = fact_model()
    g = Graph(m)
    clean, corr, metric = fact_task()
    assert float(metric(m(clean).detach())) == pytest.approx(2.0, abs=0.2)  # 1/2 x 4 for the right attribute
    exact = edge_effects(m, g, clean, corr, metric)
    eap = edge_attribution(m, g, clean, corr, metric, method="eap")
    top = {"embed->MLP0", "MLP0->logits"}
    for scores in (exact, eap):
        order = scores.abs().argsort(descending=True)
        assert {g.edges[int(i)].name for i in order[:2]} == top
        rest = scores.abs()[order[2:]]
        assert float(rest.max()) < 0.25 * float(scores.abs()[order[1]])
    # the MLP's output edge is linear in the logits: EAP is exact there (-4: the attribute's logit is lost)
    i = g.edge_index("MLP0->logits")
    assert float(exact[i]) == pytest.approx(-4.0, abs=0.3)
    assert float(eap[i]) == pytest.approx(float(exact[i]), abs=1e-5)
    # EAP-IG extends too
    ig = edge_attribution(m, g, clean, corr, metric, method="eap-ig", steps=4)
    assert {g.edges[int(i)].name for i in ig.abs().argsort(descending=True)[:2]} == top


def test_eap_is_exact_for_edges_into_the_logits_of_an_mlp_model():
    """A metric linear in the logits and an edge into the logits: no nonlinearity between them."""
    m = random_mlp_model()
    g = Graph(m)
    a, b = pair(seed=5)
    tgt = torch.randint(0, 12, (3,), generator=torch.Generator().manual_seed(9))

    def metric(logits):
        return logits[torch.arange(3), -1, tgt].mean()
    exact = edge_effects(m, g, a, b, metric)
    eap = edge_attribution(m, g, a, b, metric).double()
    inc = g.incoming("logits")
    assert torch.allclose(eap[inc], exact[inc].double(), atol=1e-5)
    # the MLP edges elsewhere are estimated, not exact, but they are estimated (non-zero, finite)
    mlp_in = g.incoming("MLP1")
    assert bool(torch.isfinite(eap).all()) and float(eap[mlp_in].abs().sum()) > 0


# --- (d) ACDC keeps the MLP a task needs and drops a zeroed one -------------------------------------------

def test_acdc_keeps_the_fact_mlp_and_drops_the_zeroed_one():
    m = fact_model(zero_second_mlp=True)
    g = Graph(m)
    clean, corr, _ = fact_task()
    last = torch.arange(6) == 5  # the KL is taken where the subjects differ (the default skips the last logit)
    res = acdc(m, g, clean, corr, tau=1e-3, positions=last)
    kept = res.circuit
    assert "MLP0" in kept.nodes and "MLP0->logits" in kept and "embed->MLP0" in kept
    assert "MLP1" not in kept.nodes
    assert not [e for e in kept.edges if e.endswith("->MLP1")]  # dead: its inputs go too
    # with MLP1 doing the work instead (MLP0 zeroed and MLP1 given MLP0's weights), the roles swap
    m2 = fact_model(zero_second_mlp=False)
    with torch.no_grad():
        for name in ("W_in", "b_in", "W_out", "b_out"):
            getattr(m2.blocks[1].mlp, name).copy_(getattr(m2.blocks[0].mlp, name))
        m2.blocks[0].mlp.W_out.zero_()
        m2.blocks[0].mlp.b_out.zero_()
    kept2 = acdc(m2, Graph(m2), clean, corr, tau=1e-3, positions=last).circuit
    assert "MLP1" in kept2.nodes and "MLP1->logits" in kept2 and "MLP0" not in kept2.nodes


def test_subnetwork_probing_learns_to_keep_the_fact_mlps_edges():
    m = fact_model()
    g = Graph(m)
    clean, corr, _ = fact_task()
    circuit, log_alpha = subnetwork_probing(m, g, clean, corr, lam=0.05, positions=torch.arange(6) == 5,
                                            steps=60, samples=2, lr=0.1)
    assert log_alpha.shape == (len(g),)
    assert "MLP0->logits" in circuit and "embed->MLP0" in circuit
    assert float(log_alpha[g.edge_index("MLP0->logits")]) > float(log_alpha[g.edge_index("MLP1->logits")])


# --- LayerNorm: each receiver normalises its patched input afresh ---------------------------------------

def ln_model(d_mlp, affine):
    cfg = ModelConfig(d_vocab=12, n_ctx=8, d_model=16, n_layers=2, n_heads=2, d_mlp=d_mlp, layernorm=True,
                      ln_affine=affine, biases=True)
    m = AttnOnlyTransformer(cfg, seed=0).double().eval()
    with torch.no_grad():  # biases and LayerNorm weights away from their initial 0 and 1
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                         dtype=p.dtype))
    return m


@pytest.mark.parametrize("d_mlp", [0, 24])
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_edges_are_exact_patches(d_mlp, affine):
    m = ln_model(d_mlp, affine)
    g = Graph(m)
    a, b = pair(seed=4)
    la, lb = m(a), m(b)
    for project in (False, True):  # the per-head input hooks, or hook_q|k|v = ln1(x) W + b
        assert torch.allclose(run_with_edges(m, g, a, b, torch.ones(len(g)), project_slots=project)[0], lb,
                              atol=1e-12, rtol=0)
        assert torch.allclose(run_with_edges(m, g, a, b, torch.zeros(len(g)), project_slots=project)[0], la,
                              atol=1e-12, rtol=0)
    tgt = torch.tensor([1, 2, 3])

    def metric(logits):
        return logits[torch.arange(3), -1, tgt].mean()
    effects = edge_effects(m, g, a, b, metric)
    m_clean = float(metric(la.detach()))
    # a head's q/k/v edge against path patching (toylab.causal, its own code: x' through ln1 afresh)
    for sender, receiver in (((0, 0), (1, 1)), ((0, 1), (1, 0))):
        for slot in "qkv":
            name = f"L{sender[0]}H{sender[1]}->L{receiver[0]}H{receiver[1]}.{slot}"
            want = path_patch(m, a, b, sender, receiver, slot, metric, normalise=False) - m_clean
            assert float(effects[g.edge_index(name)]) == pytest.approx(want, abs=1e-6), name  # edge_effects is float32
    if d_mlp:  # an MLP's edge: its input (before ln2) with one sender's output swapped, by hand
        _, ca = m.run_with_cache(a)
        _, cb = m.run_with_cache(b)
        h = 1
        swap = cb["blocks.0.attn.hook_result"][:, :, h] - ca["blocks.0.attn.hook_result"][:, :, h]
        by_hand = m.run_with_hooks(a, [("blocks.0.hook_mlp_in", lambda act, hp: act + swap)])
        assert float(effects[g.edge_index("L0H1->MLP0")]) == pytest.approx(float(metric(by_hand.detach())) - m_clean,
                                                                             abs=1e-6)
        assert abs(float(effects[g.edge_index("L0H1->MLP0")])) > 1e-4
    eap = edge_attribution(m, g, a, b, metric)
    assert eap.shape == (len(g),) and bool(torch.isfinite(eap).all())


def test_scrub_refuses_layernorm():
    m = ln_model(24, False)
    pool, _ = pair(shape=(6, 8), seed=2)
    with pytest.raises(ValueError, match="without LayerNorm"):
        scrub(m, Graph(m), EquivalenceClasses(pool), Hypothesis({}), n_resamples=1, n_boot=10)


# --- scrubbing and the figure follow --------------------------------------------------------------------

def test_scrubbing_with_identity_everywhere_is_the_mlp_model():
    m = random_mlp_model(biases=False)
    g = Graph(m)
    pool, _ = pair(shape=(6, 8), seed=2)
    classes = EquivalenceClasses(pool)
    roots = torch.arange(6)
    out = treeified_logits(m, g, classes, Hypothesis({e: "identity" for e in g.edge_names}), roots,
                           torch.Generator().manual_seed(0))
    assert torch.allclose(out, m(pool), atol=1e-10)


def test_edge_graph_draws_the_mlp_nodes():
    import matplotlib.pyplot as plt
    g = Graph(random_mlp_model())
    fig = edge_graph(g, g.circuit(["embed->MLP0", "MLP0->logits"]))
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} >= {"MLP0", "MLP1", "logits"}
    assert "into mlp" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


# --- (e) attention-only graphs unchanged ---------------------------------------------------------------

def _attention_only_rule(cfg):
    """The attention-only graph as it was specified before MLP nodes: nodes, receivers, edges, in order."""
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    nodes = ["embed"] + (["pos"] if cfg.positional != "none" else []) + [f"L{l}H{h}" for l, h in heads]
    receivers, edges = [], []
    for layer, r in [(l, f"L{l}H{h}.{s}") for l, h in heads for s in "qkv"] + [(cfg.n_layers, "logits")]:
        receivers.append(r)
        reads_pos = not (cfg.positional == "shortformer" and (r.endswith(".v") or r == "logits"))
        for n in nodes:
            if n == "pos" and not reads_pos:
                continue
            if n.startswith("L") and int(n[1:].split("H")[0]) >= layer:
                continue
            edges.append(f"{n}->{r}")
    return nodes, receivers, edges


#: sha1 (first 16 hex digits) of "nodes#receivers#edges" joined with "|", taken with the graph code
#: before MLP nodes were added (main at 7af42c9)
BEFORE = {(2, 2, "shortformer"): (37, "d14c5cc5e1527ac4"), (2, 4, "learned"): (106, "a505ec502894b6b5"),
          (1, 1, "none"): (5, "cfa2c222903e6f9e"), (3, 2, "learned"): (80, "de8588f846cb5666")}


@pytest.mark.parametrize("shape", sorted(BEFORE))
def test_attention_only_graphs_are_unchanged(shape):
    L, H, pos = shape
    m = AttnOnlyTransformer(ModelConfig(d_vocab=12, n_ctx=8, d_model=16, n_layers=L, n_heads=H,
                                        positional=pos), seed=0)
    g = Graph(m)
    nodes, receivers, edges = _attention_only_rule(m.cfg)
    assert [n.name for n in g.nodes] == nodes and g.receivers == receivers and g.edge_names == edges
    assert not g.has_mlps and all(n.kind != "mlp" for n in g.nodes)
    s = "|".join(nodes) + "#" + "|".join(receivers) + "#" + "|".join(edges)
    assert (len(g), hashlib.sha1(s.encode()).hexdigest()[:16]) == BEFORE[shape]
    assert "d_mlp" not in g.describe()


@pytest.mark.parametrize("name", ["induction-2l", "text-2l"])
def test_shipped_models_graphs_follow_the_attention_only_rule(name):
    m = load_model(name)
    g = Graph(m)
    nodes, receivers, edges = _attention_only_rule(m.cfg)
    assert [n.name for n in g.nodes] == nodes and g.receivers == receivers and g.edge_names == edges
