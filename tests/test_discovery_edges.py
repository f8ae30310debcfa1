"""The edge graph, the metrics and exact edge patching (toylab.discovery)."""

import pytest
import torch

from toylab.data import make_dataset
from toylab.discovery.edge_patching import edge_effects, run_circuit, run_with_edges, sender_outputs
from toylab.discovery.graph import Graph
from toylab.discovery.metrics import (check_metric_value, induction_positions, kl_to_clean, logit_diff,
                                      next_token_loss_on)
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.causal.patching import path_patch
from toylab.training.presets import get_preset, load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = load_model("induction-2l")
    ds = make_dataset(get_preset("induction-2l").data)
    clean = ds.sample_batch(24, torch.Generator().manual_seed(0))
    corr = ds.sample_batch(24, torch.Generator().manual_seed(1))
    return model, Graph(model), clean, corr


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


def test_graph_structure(setup):
    model, g, _, _ = setup
    cfg = model.cfg
    # shortformer: pos enters q and k only; layer-l slots read embed, pos (q/k) and every head before l
    per_layer = [cfg.n_heads * (2 * (2 + cfg.n_heads * l) + (1 + cfg.n_heads * l)) for l in range(cfg.n_layers)]
    assert len(g) == sum(per_layer) + 1 + cfg.n_layers * cfg.n_heads
    assert "pos->L0H0.v" not in g.index and "pos->logits" not in g.index
    assert g.receivers[-1] == "logits"
    # topological order: every edge's sender is computed before its receiver's layer
    for e in g.edges:
        s = g.node(e.sender)
        if s.kind == "head" and e.receiver != "logits":
            assert s.layer < int(e.receiver[1])
    learned = Graph(AttnOnlyTransformer(ModelConfig(d_vocab=8, n_ctx=6, d_model=8, n_layers=1, n_heads=2)))
    assert "pos->L0H0.v" in learned.index and "pos->logits" in learned.index


def test_graph_errors(setup):
    model, g, _, _ = setup
    with pytest.raises(ValueError, match="unknown edge"):
        g.edge_index("L1H0->L0H0.q")
    with pytest.raises(ValueError, match="unknown node"):
        g.node("L5H0")
    with pytest.raises(ValueError, match="unknown edge"):
        g.circuit(["embed->L1H0.q", "nope"])
    with pytest.raises(NotImplementedError, match="LayerNorm"):  # shortformer positions join q, k after ln1
        Graph(AttnOnlyTransformer(ModelConfig(d_vocab=8, n_ctx=6, d_model=8, n_layers=1, layernorm=True,
                                              positional="shortformer")))


def test_nothing_patched_is_the_model_and_everything_patched_is_the_source(setup):
    model, g, clean, corr = setup
    with torch.no_grad():
        out = run_with_edges(model, g, clean.tokens, corr.tokens, torch.stack([torch.zeros(len(g)), torch.ones(len(g))]))
        ref_clean, ref_corr = model(clean.tokens), model(corr.tokens)
        zero = run_with_edges(model, g, clean.tokens, "zero", torch.ones(len(g)))
    scale = ref_clean.abs().max()
    assert (out[0] - ref_clean).abs().max() < 1e-5 * scale
    assert (out[1] - ref_corr).abs().max() < 1e-5 * scale
    assert zero.abs().max() == 0  # every sender zeroed: the logits read nothing
    assert no_hooks(model)


def test_single_edge_matches_path_patching(setup):
    """Edge s -> r.k patched = r's key input recomputed from clean - out_s^clean + out_s^corr (toylab.causal.patching)."""
    model, g, clean, corr = setup
    metric = logit_diff(clean.tokens, corr.tokens, induction_positions(clean.is_repeat))
    for sender, receiver, slot in [((0, 0), (1, 1), "k"), ((0, 1), (1, 0), "q"), ((0, 0), (1, 0), "v")]:
        name = f"L{sender[0]}H{sender[1]}->L{receiver[0]}H{receiver[1]}.{slot}"
        with torch.no_grad():
            ours = float(run_with_edges(model, g, clean.tokens, corr.tokens, [name], metric)[0])
        ref = path_patch(model, clean.tokens, corr.tokens, sender, receiver, slot, metric, normalise=False)
        assert ours == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_edge_effects_batched_equal_one_at_a_time(setup):
    model, g, clean, corr = setup
    with torch.no_grad():
        kl = kl_to_clean(model(clean.tokens), induction_positions(clean.is_repeat))
    fast = edge_effects(model, g, clean.tokens, corr.tokens, kl)
    slow = edge_effects(model, g, clean.tokens, corr.tokens, kl, edges_per_pass=1)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert (fast > -1e-5).all()  # KL to the clean run cannot go below its value 0 on the clean run
    # positions are the same in clean and corrupted runs: patching a pos edge changes nothing
    pos_edges = [i for i, e in enumerate(g.edges) if e.sender == "pos"]
    assert fast[pos_edges].abs().max() < 1e-5
    # the weight-derived induction circuit: the previous-token head's value input is the biggest single edge
    # into layer 0, and the induction head's output one of the biggest into the logits
    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens, names_filter="blocks.0.attn.hook_pattern")
    from toylab.circuits.scores import previous_token_score
    prev = int(previous_token_score(cache["pattern", 0], exclude_bos=True).argmax())
    into_l0 = [i for i, e in enumerate(g.edges) if e.receiver.startswith("L0")]
    assert g.edges[into_l0[int(fast[into_l0].argmax())]].name == f"embed->L0H{prev}.v"
    assert no_hooks(model)


def test_denoise_and_zero(setup):
    model, g, clean, corr = setup
    metric = next_token_loss_on(clean.tokens, induction_positions(clean.is_repeat))
    noise = edge_effects(model, g, clean.tokens, corr.tokens, metric)
    denoise = edge_effects(model, g, clean.tokens, corr.tokens, metric, direction="denoise")
    zero = edge_effects(model, g, clean.tokens, "zero", metric)
    # noising any important edge raises the loss on induction positions; denoising lowers it from the corrupted run
    assert noise.max() > 0.5 and denoise.min() < -0.1
    pos_edges = [i for i, e in enumerate(g.edges) if e.sender == "pos"]
    assert zero[pos_edges].abs().max() > 1e-3  # zero ablation does see the positions
    with pytest.raises(ValueError, match="denoising needs"):
        edge_effects(model, g, clean.tokens, "zero", metric, direction="denoise")


def test_run_circuit_full_and_empty(setup):
    model, g, clean, corr = setup
    metric = next_token_loss_on(clean.tokens, induction_positions(clean.is_repeat))
    with torch.no_grad():
        full = float(metric(model(clean.tokens)))
        corrupted = float(metric(model(corr.tokens)))
    assert run_circuit(model, g, g.circuit(g.edge_names), clean.tokens, corr.tokens, metric) == pytest.approx(full, abs=1e-4)
    assert run_circuit(model, g, g.circuit([]), clean.tokens, corr.tokens, metric) == pytest.approx(corrupted, abs=1e-4)


def test_sender_outputs_sum_to_the_residual_stream(setup):
    model, g, clean, _ = setup
    outs = sender_outputs(model, g, clean.tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens, names_filter=f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    total = sum(v for k, v in outs.items() if k != "pos")  # shortformer: positions are not in the stream
    assert torch.allclose(total, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], atol=1e-4)


def test_bad_input_is_a_clear_error_and_leaves_no_hook(setup):
    model, g, clean, corr = setup
    with torch.no_grad():
        kl = kl_to_clean(model(clean.tokens))
    with pytest.raises(ValueError, match="same shape"):
        edge_effects(model, g, clean.tokens, corr.tokens[:5], kl)
    with pytest.raises(ValueError, match="unknown edge"):
        run_with_edges(model, g, clean.tokens, corr.tokens, ["embed->L9H9.q"])
    with pytest.raises(ValueError, match="one per edge"):
        run_with_edges(model, g, clean.tokens, corr.tokens, torch.ones(3))
    with pytest.raises(ValueError, match="must return a scalar"):
        edge_effects(model, g, clean.tokens, corr.tokens, lambda logits: logits.sum(-1))
    with pytest.raises(ValueError, match=r"expects logits \[batch, pos, d_vocab\]"):
        kl(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="'zero'"):
        run_with_edges(model, g, clean.tokens, "average", [])
    def boom(logits):
        raise RuntimeError("metric failed")
    with pytest.raises(RuntimeError, match="metric failed"):
        edge_effects(model, g, clean.tokens, corr.tokens, boom)
    assert no_hooks(model)


def test_metrics():
    tokens = torch.tensor([[0, 1, 2, 3], [0, 2, 2, 1]])
    wrong = torch.tensor([[0, 2, 1, 3], [0, 1, 1, 1]])
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, True, False], [True, False, True, False]])
    ld = logit_diff(tokens, wrong, mask)(logits)
    vals = [logits[b, p, tokens[b, p + 1]] - logits[b, p, wrong[b, p + 1]] for b in range(2) for p in range(3) if mask[b, p]]
    assert float(ld) == pytest.approx(float(torch.stack(vals).mean()), rel=1e-6)
    assert float(kl_to_clean(logits)(logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_clean(logits)(torch.zeros_like(logits))) > 0
    loss = next_token_loss_on(tokens, mask)(torch.zeros_like(logits))
    assert float(loss) == pytest.approx(float(torch.log(torch.tensor(5.0))), rel=1e-6)
    assert induction_positions(torch.tensor([[False, False, True, True]])).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match="selects nothing"):
        kl_to_clean(logits, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scalar"):
        check_metric_value(torch.zeros(3))


def test_per_head_input_hooks_and_projected_slots_agree(setup):
    model, g, clean, corr = setup
    w = torch.rand(3, len(g), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = run_with_edges(model, g, clean.tokens, corr.tokens, w)
        b = run_with_edges(model, g, clean.tokens, corr.tokens, w, project_slots=True)
    assert torch.allclose(a, b, atol=1e-4)
    assert no_hooks(model)
