"""The suite's planted models (issue 23): generators and their labels, truths, the intervention check.

Fast tests only, except the recipe tests at the end (marked ``recipes``: each trains a suite preset
whole, about a minute, and checks its truth by intervention at seed 0; the distractor's also at
seeds 1 and 2, with its trap).
"""

import dataclasses
import functools
import math

import pytest
import torch

from toylab.data import make_dataset
from toylab.data.majority import MajorityData
from toylab.data.mixture import InductionSkipTrigramMixture, remove_rule_sources
from toylab.data.topic_induction import TopicInductionData
from toylab.discovery.graph import Graph
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.suite.planted import INTENDED, NEGATIVE_CONTROLS, PLANTED, rule_source_triples
from toylab.suite.readers import (attention_scores, heads_of, induction_edges, induction_scores,
                                  two_back_scores)
from toylab.suite.spec import PlantedCircuit, Task
from toylab.suite.truth import check_dense, check_truth, heads_circuit
from toylab.training.presets import PRESETS, SUITE_PRESETS, get_preset
from toylab.training.head_dropout import head_dropout_hook
from toylab.training.train import TrainConfig, train


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- generators
def test_topic_induction_labels():
    ds = TopicInductionData(d_vocab=128, n_ctx=32, n_topics=8, topic_size=12, p_topic=0.4, max_offset=14)
    b = ds.sample_batch(512, gen(1))
    x = b.tokens
    assert (x[:, 0] == 0).all() and (x[:, 1] == 1 + b.topic).all(), "BOS, then the topic marker T_k = 1 + k"
    assert (x[:, 2:] >= ds.first_content).all(), "noise and copies use content tokens only"
    for i in range(64):
        d, o = int(b.dst_start[i]), int(b.offset[i])
        assert 2 + o <= d <= 30
        assert all(x[i, p] == x[i, p - o] for p in range(d, 32)), "the copy reads x_p = x_{p-o}"
        assert b.is_repeat[i].tolist() == [p > d for p in range(32)]
    # noise before the copy follows the topic: P(x in S_k) = p_topic + (1 - p_topic) m / |C|
    pos = torch.arange(32)[None]
    noise = (pos >= 2) & (pos < b.dst_start[:, None])
    in_topic = (x - ds.first_content) // ds.topic_size == b.topic[:, None]
    want = 0.4 + 0.6 * 12 / (128 - 9)
    got = float(in_topic[noise].double().mean())
    assert abs(got - want) < 0.03, f"topic share {got:.3f}, the rule says {want:.3f}"
    p = ds.noise_probs(b.topic[:5])
    assert torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64))
    assert make_dataset(ds.spec).spec == ds.spec


def test_topic_corrupt_keeps_topic_and_prefix_and_breaks_the_copy():
    ds = TopicInductionData()
    b = ds.sample_batch(256, gen(2))
    c = ds.corrupt(b, gen(3))
    before = torch.arange(ds.n_ctx)[None] < b.dst_start[:, None]
    assert torch.equal(c[before], b.tokens[before]), "tokens before the copy are kept"
    assert torch.equal(c[:, 1], b.tokens[:, 1]), "the topic marker is kept"
    assert float((c[b.is_repeat] == b.tokens[b.is_repeat]).double().mean()) < 0.2, "the copy is redrawn"


def test_topic_copy_end_keeps_the_stream_and_labels_the_copy():
    """With p_end > 0 a later copy stops after its second token with probability p_end at each token and
    the noise goes on; a periodic copy (d = 2 + o) runs to the end; everything drawn before is the
    p_end = 0 stream (the stop is the last draw)."""
    plain = TopicInductionData(p_topic=0.6, topic_size=8)
    ends = TopicInductionData(p_topic=0.6, topic_size=8, p_end=0.2)
    a, b = plain.sample_batch(512, gen(5)), ends.sample_batch(512, gen(5))
    assert torch.equal(a.topic, b.topic) and torch.equal(a.dst_start, b.dst_start) and torch.equal(a.offset, b.offset)
    assert (a.length == 32 - a.dst_start).all(), "p_end = 0: the copy runs to the end"
    to_end = b.dst_start + b.length == 32
    at_start = b.dst_start == 2 + b.offset  # the periodic ones, and a few later ones drawn there
    assert float(to_end[at_start].double().mean()) > 0.9, "a periodic copy runs to the end"
    assert (b.length >= 2).all(), "a copy holds at least two tokens"
    assert float(to_end[~at_start].double().mean()) < 0.4, "most later copies stop inside the context"
    x = b.tokens
    pos = torch.arange(32)[None]
    e = (b.dst_start + b.length)[:, None]
    assert torch.equal(x[pos < e], a.tokens[pos < e]), "up to the copy's end the tokens are the p_end = 0 ones"
    for i in range(128):
        d, o, n = int(b.dst_start[i]), int(b.offset[i]), int(b.dst_start[i] + b.length[i])
        assert all(x[i, p] == x[i, p - o] for p in range(d, n)), "inside the copy x_p = x_{p-o}"
        assert b.is_repeat[i].tolist() == [d < p < n for p in range(32)]
    # after the end the noise follows the topic again (not the copy)
    after = pos >= e
    in_topic = (x - ends.first_content) // ends.topic_size == b.topic[:, None]
    want = 0.6 + 0.4 * 8 / (128 - 9)
    assert abs(float(in_topic[after].double().mean()) - want) < 0.04
    assert make_dataset(ends.spec).spec == ends.spec and ends.spec["p_end"] == 0.2
    assert "p_end" not in plain.spec and make_dataset(plain.spec).p_end == 0.0, "p_end = 0 is left out of a spec"
    with pytest.raises(ValueError, match="p_end"):
        TopicInductionData(p_end=1.5)


def test_zero_loss_rise_is_the_loss_of_the_model_without_the_head():
    """One layer: zero-ablating a head's out-edge (L0Hh -> logits) is the model with that head's W_O zeroed."""
    from toylab.model import next_token_loss
    from toylab.suite.planted import zero_loss_rise

    m = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=10, d_model=16, n_layers=1, n_heads=2,
                                        positional="shortformer"), seed=3)
    toks = torch.randint(1, 16, (8, 10), generator=gen(14))
    g = Graph(m)
    cut = AttnOnlyTransformer(m.cfg, seed=3)
    cut.load_state_dict(m.state_dict())
    with torch.no_grad():
        cut.blocks[0].attn.W_O[1].zero_()
        want = float(next_token_loss(cut(toks), toks)[:, 1:].mean() - next_token_loss(m(toks), toks)[:, 1:].mean())
    got = zero_loss_rise(m, g, {"L0H1->logits"}, toks)
    assert abs(got - want) < 1e-5 and abs(want) > 1e-3, (got, want)
    assert zero_loss_rise(m, g, set(), toks) == 0.0


def test_mixture_labels_and_rule_removal():
    ds = InductionSkipTrigramMixture(d_vocab=64, n_ctx=32)
    b = ds.sample_batch(256, gen(4))
    skip = b.task == 1
    assert 0.35 < float(skip.double().mean()) < 0.65
    assert not b.is_repeat[skip].any() and (b.rule[~skip] == -1).all()
    assert torch.equal(b.rule[skip], ds.skip_trigram.active_rules(b.tokens[skip]))
    assert (b.rule[skip] >= 0).any() and b.is_repeat[~skip].any()
    toks = b.tokens[skip]
    clean = toks.clone()
    c = remove_rule_sources(ds.skip_trigram, toks, gen(5))
    assert torch.equal(toks, clean), "the input is not modified"
    assert (ds.skip_trigram.active_rules(c) == -1).all(), "no rule fires once every A is gone"
    is_a = (toks[..., None] == ds.skip_trigram._A).any(-1)
    assert torch.equal(c[~is_a], toks[~is_a]), "only the A tokens change"
    assert make_dataset(ds.spec).spec == ds.spec


def test_rule_source_triples_point_at_the_latest_A():
    lang = InductionSkipTrigramMixture().skip_trigram
    a, bb, _ = lang.rules[0]
    filler = next(t for t in range(1, 64) if all(t not in r for r in lang.rules))
    toks = torch.tensor([[0, a, filler, a, filler, bb, filler, filler]])
    b, q, k = rule_source_triples(lang, toks)
    assert (b.tolist(), q.tolist(), k.tolist()) == ([0], [5], [3]), "at B (pos 5) the rule reads the A at pos 3"


def test_skip_trigram_truth_reads_each_rule_and_composes_layers(monkeypatch):
    """The rule heads are read per rule (a head carrying some of the rules counts), never where the A sits
    right before its B, and a later rule head gets edges from the earlier ones."""
    import toylab.suite.planted as planted

    lang = make_dataset(get_preset("mixture-2l").data).skip_trigram
    seen = []

    def fake_scores(model, tokens, b, q, k):
        assert (k < q - 1).all(), "an A right before its B is left out"
        rules = set(lang.active_rules(tokens)[b, q].tolist())
        assert len(rules) == 1, "one rule at a time"
        r = rules.pop()
        seen.append(r)
        out = torch.zeros(2, 2)
        out[1, 0] = 0.6 if r % 2 == 0 else 0.1  # L1H0 carries the even rules only
        out[0, 1] = 0.5 if r == 3 else 0.0  # L0H1 carries rule 3 only
        return out

    monkeypatch.setattr(planted, "attention_scores", fake_scores)
    m = AttnOnlyTransformer(get_preset("mixture-2l").model, seed=0)
    t = planted.skip_trigram_truth("mixture-2l")(m, Graph(m))
    assert 3 in seen and len(seen) == len(set(seen)) >= 6
    want = {f"embed->{h}.{s}" for h in ("L0H1", "L1H0") for s in "qkv"} | {"L0H1->logits", "L1H0->logits"}
    want |= {f"L0H1->L1H0.{s}" for s in "qkv"}
    assert t == want and want <= set(Graph(m).edge_names)


def brute_majority_probs(ds, seq):
    """P(next | seq) by enumerating the favoured token m (Bayes with the likelihood of every token)."""
    k, p = ds.k, ds.p_major
    like = torch.tensor([math.prod(p * (x == m) + (1 - p) / k for x in seq[1:]) for m in range(1, k + 1)],
                        dtype=torch.float64)
    post = like / like.sum()
    out = torch.zeros(ds.d_vocab, dtype=torch.float64)
    out[1:] = p * post + (1 - p) / k
    return out


def test_majority_truth_is_bayes():
    ds = MajorityData(d_vocab=6, n_ctx=10, p_major=0.3)
    b = ds.sample_batch(4, gen(6))
    probs = ds.next_token_probs(b.tokens)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 10, dtype=torch.float64))
    for i in range(4):
        for t in (0, 3, 9):
            want = brute_majority_probs(ds, b.tokens[i, :t + 1].tolist())
            assert torch.allclose(probs[i, t], want, atol=1e-12), (i, t)
    big = ds.sample_batch(2000, gen(7))
    counts = torch.nn.functional.one_hot(big.tokens[:, 1:], 6).sum(1)
    assert float((counts.argmax(1) == big.majority).double().mean()) > 0.6, "the favoured token is the most frequent"
    assert make_dataset(ds.spec).spec == ds.spec
    with pytest.raises(ValueError, match="p_major"):
        MajorityData(p_major=1.0)


# ----------------------------------------------------------------------------- presets, head dropout
def test_suite_presets_are_found_but_not_shipped():
    assert not set(SUITE_PRESETS) & set(PRESETS), "suite presets are not in the shipped PRESETS"
    for name in SUITE_PRESETS:
        assert get_preset(name) is SUITE_PRESETS[name]
        make_dataset(get_preset(name).data)
    with pytest.raises(ValueError, match="redundant-2l"):
        get_preset("redundant-2L")


def test_head_dropout_config_and_hook():
    assert "head_dropout" not in TrainConfig().to_dict(), "configs without it save as before"
    cfg = TrainConfig(head_dropout=0.5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="head_dropout"):
        TrainConfig(head_dropout=1.0)
    z = torch.ones(1000, 3, 2, 4)
    out = head_dropout_hook(0.5, 2, gen(8))(z, None)
    assert torch.equal(z, torch.ones(1000, 3, 2, 4)), "the input is not modified"
    zeroed = (out == 0).all(-1).all(1)  # [batch, heads]: a head zeroed at every position
    assert (zeroed.sum(1) <= 1).all(), "at most one head is dropped per sequence"
    assert 0.4 < float(zeroed.any(1).double().mean()) < 0.6
    kept = out.permute(0, 2, 1, 3)[~zeroed]  # [kept (row, head) pairs, pos, d_head]
    assert torch.equal(kept, torch.ones_like(kept)), "the other heads pass unchanged"


def test_head_dropout_changes_training_but_not_the_data():
    mc = ModelConfig(d_vocab=16, n_ctx=8, d_model=8, n_layers=1, n_heads=2, positional="shortformer")
    data = {"kind": "induction", "d_vocab": 16, "n_ctx": 8, "seed": 0, "min_offset": 2, "max_offset": 5,
            "p_repeat": 1.0, "p_periodic": 0.5}
    base = TrainConfig(steps=3, batch_size=8, eval_every=3, eval_batch=8, warmup_steps=1)
    a = train(mc, data, base, seed=0, off_probe=False)
    b = train(mc, data, TrainConfig(**{**base.to_dict(), "head_dropout": 0.9}), seed=0, off_probe=False)
    again = train(mc, data, base, seed=0, off_probe=False)
    assert all(torch.equal(a.model.state_dict()[k], again.model.state_dict()[k]) for k in a.model.state_dict())
    assert not torch.equal(a.model.W_E, b.model.W_E), "dropping heads changes the gradients"


# ----------------------------------------------------------------------------- readers and truths
def uniform_model(n_layers=2, n_heads=2, positional="shortformer", d_vocab=16, n_ctx=12):
    m = AttnOnlyTransformer(ModelConfig(d_vocab=d_vocab, n_ctx=n_ctx, d_model=8, n_layers=n_layers,
                                        n_heads=n_heads, positional=positional), seed=0)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.W_Q.zero_()  # q = 0: every head attends uniformly to positions 0..q
    return m


def test_attention_scores_on_uniform_attention():
    m = uniform_model()
    toks = torch.randint(1, 16, (3, 12), generator=gen(9))
    b = torch.tensor([0, 1, 2, 2])
    q = torch.tensor([1, 3, 4, 9])
    k = torch.tensor([0, 2, 0, 9])
    want = float(sum(1 / (qq + 1) for qq in q.tolist()) / 4)
    got = attention_scores(m, toks, b, q, k)
    assert got.shape == (2, 2) and torch.allclose(got, torch.full((2, 2), want), atol=1e-6)
    with pytest.raises(ValueError, match="no labelled"):
        attention_scores(m, toks, b[:0], q[:0], k[:0])


def prev_token_model():
    """Head L0H0 attends from every position p >= 1 to p - 1 (built by hand, through the positions)."""
    m = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=16, n_layers=2, n_heads=2,
                                        positional="shortformer"), seed=0)
    with torch.no_grad():
        m.W_pos.zero_()
        m.W_pos[:, :8] = torch.eye(8)
        m.W_E.mul_(0.0)
        a = m.blocks[0].attn
        a.W_Q.zero_(), a.W_K.zero_()
        for p in range(8):
            a.W_Q[0, p, p] = 30.0  # query of position p: e_p
            if p + 1 < 8:
                a.W_K[0, p, p + 1] = 30.0  # key of position j: e_{j+1}, so q_p . k_j is large iff j = p - 1
    return m


def test_induction_scores_find_the_previous_token_head():
    m = prev_token_model()
    toks = torch.randint(1, 16, (4, 8), generator=gen(10))
    positions = torch.zeros(4, 8, dtype=torch.bool)
    positions[:, 4:7] = True
    offset = torch.full((4,), 3)
    ind, prev = induction_scores(m, toks, positions, offset)
    assert float(prev[0, 0]) > 0.99, "L0H0 attends to the previous position at the labelled keys"
    assert float(prev[0, 1]) < 0.5


def test_induction_edges_from_scores():
    m = uniform_model()
    ind = torch.tensor([[0.0, 0.0], [0.8, 0.1]])
    prev = torch.tensor([[0.1, 0.9], [0.0, 0.0]])
    want = {"embed->L0H1.v", "pos->L0H1.q", "pos->L0H1.k", "L0H1->L1H0.k", "embed->L1H0.q", "embed->L1H0.v",
            "L1H0->logits"}
    assert induction_edges(m, ind, prev) == want
    assert induction_edges(m, ind, prev, pos_edges=False) == want - {"pos->L0H1.q", "pos->L0H1.k"}
    assert induction_edges(m, ind, torch.zeros(2, 2)) == frozenset(), "no previous-token head: no truth"
    assert heads_of(want) == ["L0H1", "L1H0"]
    assert want <= set(Graph(m).edge_names)
    two = induction_edges(m, ind, prev, back2=torch.tensor([[0.7, 0.8], [0.0, 0.0]]))
    assert two == want | {"embed->L0H0.v", "pos->L0H0.q", "pos->L0H0.k", "L0H0->L1H0.k", "L0H1->L1H0.q"}, \
        "a two-back head T (not the previous-token head) adds T -> I.k and P -> I.q"
    assert induction_edges(m, ind, prev, back2=torch.tensor([[0.2, 0.8], [0.0, 0.0]])) == want


def test_two_back_scores_read_the_keys_of_the_copy():
    """A head that attends from j to j - 2, built by hand, scores 1 at the keys k = p + 1 - o."""
    m = prev_token_model()
    with torch.no_grad():
        a = m.blocks[0].attn
        for p in range(8):
            if p + 2 < 8:
                a.W_K[1, p, p + 2] = 30.0
            a.W_Q[1, p, p] = 30.0
    toks = torch.randint(1, 16, (4, 8), generator=gen(13))
    positions = torch.zeros(4, 8, dtype=torch.bool)
    positions[:, 4:7] = True
    two = two_back_scores(m, toks, positions, torch.full((4,), 2))
    assert float(two[0, 1]) > 0.99 and float(two[0, 0]) < 0.5


def test_layernorm_truth_keeps_the_pos_edges_that_resampling_cannot_see():
    """layernorm-2l (LayerNorm, learned positions): the previous-token head's pos -> P.q/k edges are in the
    truth; patching them to the resample source changes nothing (the corrupted run has the same positions),
    zero ablation does; and folding the LayerNorm keeps the logits."""
    from toylab.circuits.folding import fold_layer_norm

    cfg = get_preset("layernorm-2l").model
    assert cfg.layernorm and cfg.positional == "learned"
    m = AttnOnlyTransformer(cfg, seed=0)
    with torch.no_grad():  # sharpen L0H0's attention, so that what its queries and keys read matters
        m.blocks[0].attn.W_Q[0] *= 20
        m.blocks[0].attn.W_K[0] *= 20
    g = Graph(m)
    truth = induction_edges(m, torch.tensor([[0.0, 0.0], [0.8, 0.1]]), torch.tensor([[0.9, 0.1], [0.0, 0.0]]))
    pos = {"pos->L0H0.q", "pos->L0H0.k"}
    assert pos <= truth <= set(g.edge_names)
    task = PLANTED["layernorm"].make_task(m, 0, 32)
    with_pos, without = (check_truth(m, g, t, task, "resample") for t in (truth, truth - pos))
    assert abs(with_pos.kept - without.kept) < 1e-6 and abs(with_pos.removed - without.removed) < 1e-6, \
        "resampling leaves the positions as they are: the pos edges make no difference under it"
    with_pos, without = (check_truth(m, g, t, task, "zero") for t in (truth, truth - pos))
    assert abs(with_pos.removed - without.removed) > 1e-2, "zero ablation removes the positions the head reads"
    assert torch.allclose(fold_layer_norm(m)(task.clean), m(task.clean), atol=1e-4)


def test_truths_of_an_untrained_model_are_empty_or_every_edge():
    """An untrained, uniform-attention model has no planted circuit: the truths say so (empty)."""
    for name, pc in PLANTED.items():
        cfg = get_preset(pc.preset).model
        m = AttnOnlyTransformer(cfg, seed=0)
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.W_Q.zero_()
        g = Graph(m)
        t = pc.truth(m, g)
        if name in NEGATIVE_CONTROLS:
            assert t == frozenset(g.edge_names)
        else:
            assert t == frozenset(), name
        ok, why = INTENDED[name](m, g)
        assert isinstance(why, str) and (ok is (name in NEGATIVE_CONTROLS)), (name, why)


def test_planted_records_and_tasks():
    assert len({pc.preset for pc in PLANTED.values()} - {"induction-2l"}) >= 5
    for name, pc in PLANTED.items():
        assert isinstance(pc, PlantedCircuit) and pc.name == name and len(pc.seeds) >= 3 and pc.trap
        m = AttnOnlyTransformer(get_preset(pc.preset).model, seed=0)
        task = pc.make_task(m, 0, 16)
        assert isinstance(task, Task) and task.clean.shape[0] == 16
        assert not torch.equal(task.clean, task.corrupted)
        again = pc.make_task(m, 0, 16)
        assert torch.equal(task.clean, again.clean) and torch.equal(task.corrupted, again.corrupted)
        assert not torch.equal(pc.make_task(m, 1, 16).clean, task.clean), "the seed fixes the draw"


# ----------------------------------------------------------------------------- the check's arithmetic
def dead_head_model():
    """One layer whose heads write nothing (W_O = 0): the behaviour is all in embed -> logits."""
    m = AttnOnlyTransformer(ModelConfig(d_vocab=12, n_ctx=8, d_model=8, n_layers=1, n_heads=2,
                                        positional="shortformer"), seed=0)
    with torch.no_grad():
        m.blocks[0].attn.W_O.zero_()
    toks = torch.randint(1, 12, (8, 8), generator=gen(11))
    task = Task(toks, torch.randint(1, 12, (8, 8), generator=gen(12)), None, "random tokens")
    return m, Graph(m), task


def test_check_truth_arithmetic_on_a_known_model():
    m, g, task = dead_head_model()
    for source in ("resample", "zero"):
        exact = check_truth(m, g, {"embed->logits"}, task, source)
        assert exact.passed and abs(exact.kept - 1) < 1e-6 and abs(exact.removed - 1) < 1e-6, exact
        dead = check_truth(m, g, {"L0H0->logits", "L0H1->logits"}, task, source)
        assert not dead.passed and abs(dead.kept) < 1e-6 and abs(dead.removed) < 1e-6, dead
        everything = check_truth(m, g, g.edge_names, task, source)
        assert abs(everything.kept - 1) < 1e-6 and abs(everything.removed - 1) < 1e-6
        assert everything.gap > 0 and everything.n_edges == len(g)


def test_check_truth_thresholds_are_the_issues():
    m, g, task = dead_head_model()
    r = check_truth(m, g, {"embed->logits"}, task, min_kept=1.0, min_removed=1.0)
    assert r.passed == (r.kept >= 1.0 and r.removed >= 1.0)
    with pytest.raises(ValueError, match="source"):
        check_truth(m, g, {"embed->logits"}, task, "average")
    with pytest.raises(TypeError, match="Task"):
        check_truth(m, g, {"embed->logits"}, (task.clean, task.corrupted))
    with pytest.raises(TypeError, match="one string"):
        check_truth(m, g, "embed->logits", task)
    with pytest.raises(ValueError, match="min_kept"):
        check_truth(m, g, {"embed->logits"}, task, min_kept=90)
    same = Task(task.clean, task.clean, None, "no corruption")
    with pytest.raises(ValueError, match="changes nothing"):
        check_truth(m, g, {"embed->logits"}, same)


def test_check_dense_flags_a_sparse_model():
    m, g, task = dead_head_model()
    assert heads_circuit(g, ["L0H0", "L0H1"]) == frozenset(g.edge_names)
    r = check_dense(m, g, task)
    assert r.max_heads == 1 and abs(r.best_kept - 1) < 1e-6 and not r.passed, "embed -> logits alone keeps it all"
    assert all(abs(v) < 1e-6 for v in r.removed_by_head.values()), "a dead head's removal destroys nothing"


def test_registry_truths_check_the_intended_structure_first():
    """A registered planted model's truth refuses a seed without the intended structure (the suite excludes it)."""
    from toylab.suite.entries import FROM_PLANTED, NoPlantedCircuit, registry

    reg = registry()
    for name in FROM_PLANTED:
        pc = reg[name]
        assert pc.preset == PLANTED[name].preset and name not in NEGATIVE_CONTROLS
        m = AttnOnlyTransformer(get_preset(pc.preset).model, seed=0)
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.W_Q.zero_()
        with pytest.raises(NoPlantedCircuit, match="intended|structure"):
            pc.truth(m, Graph(m))


# ----------------------------------------------------------------------------- recipes (slow)
# Measured with benchmarks/suite_truths.py (seeds 0-2): the registered planted models
# (toylab.suite.entries.FROM_PLANTED) and the negative control plant their truth at seed 0; the others
# do not yet (see the benchmark's table), so they are not retrained here (a minute each to confirm a
# known failure); the suite leaves them out.
def _registered():
    from toylab.suite.entries import FROM_PLANTED
    return sorted({PLANTED[n].preset for n in (*FROM_PLANTED, *NEGATIVE_CONTROLS)})


@functools.lru_cache(maxsize=None)
def _trained_at_seed_0(preset):
    p = get_preset(preset)
    return train(p.model, p.data, p.train, seed=0, off_probe=False).model


@pytest.mark.recipes
@pytest.mark.slow
@pytest.mark.parametrize("preset", _registered())
def test_suite_recipe_at_seed_0_plants_its_truth(preset):
    model = _trained_at_seed_0(preset)
    g = Graph(model)
    for name in [n for n, pc in PLANTED.items() if pc.preset == preset]:
        pc = PLANTED[name]
        ok, why = INTENDED[name](model, g)
        assert ok, f"{name}: training did not produce the intended structure: {why}"
        task = pc.make_task(model, 0, 128)
        if name in NEGATIVE_CONTROLS:
            r = check_dense(model, g, task)
            assert r.passed, f"{name}: a circuit of heads {r.best_heads} keeps {r.best_kept:.2f} of the behaviour"
        else:
            r = check_truth(model, g, pc.truth(model, g), task)
            assert r.passed, f"{name}: the truth keeps {r.kept:.2f} and removing it destroys {r.removed:.2f}"


@pytest.mark.recipes
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_distractor_recipe_plants_a_topic_head_at_other_seeds(seed):
    """At seeds 1 and 2 too (benchmarks/suite_truths.py: all of 0-2), the distractor's truth passes and a
    topic head outside it reads the marker; it is the trap the suite entry names: it writes more than the
    truth heads' mean, and zero-ablating it raises the clean loss more than for some truth head, while
    the metric (against a same-topic corrupted run) loses < 0.1 when it is patched."""
    from toylab.suite.planted import TRUTH_SEED, head_output_norms, zero_loss_rise

    p = get_preset("distractor-2l")
    once = dataclasses.replace(p.train, eval_every=p.train.steps)
    model = train(p.model, p.data, once, seed=seed, progress=False, off_probe=False).model
    g = Graph(model)
    pc = PLANTED["distractor"]
    ok, why = INTENDED["distractor"](model, g)
    assert ok, f"seed {seed}: no active, high-norm, irrelevant topic head outside the truth: {why}"
    truth = pc.truth(model, g)
    task = pc.make_task(model, seed, 128)
    r = check_truth(model, g, truth, task)
    assert r.passed, f"seed {seed}: the truth keeps {r.kept:.2f} and removing it destroys {r.removed:.2f}"
    batch = make_dataset(p.data).sample_batch(256, gen(TRUTH_SEED))
    noise = ~batch.is_repeat
    noise[:, :2] = False
    b, q = noise.nonzero(as_tuple=True)
    marker = attention_scores(model, batch.tokens, b, q, torch.ones_like(q))
    inside = heads_of(truth)
    names = [f"L{l}H{h}" for l in range(2) for h in range(4)]
    topic = [n for n in names if n not in inside and float(marker[int(n[1]), int(n[3])]) >= 0.3]
    norms = head_output_norms(model, batch.tokens)
    norm = {n: float(norms[int(n[1]), int(n[3])]) for n in names}

    def rise(h):
        return zero_loss_rise(model, g, {e.name for e in g.edges if e.sender == h}, task.clean)

    lowest = min(rise(h) for h in inside)
    mean_norm = sum(norm[h] for h in inside) / len(inside)
    trapped = [h for h in topic if norm[h] > mean_norm and rise(h) > lowest
               and check_truth(model, g, {e.name for e in g.edges if e.sender == h}, task).removed < 0.1]
    assert trapped, (f"seed {seed}: no topic head ({topic}) writes more than the truth heads' mean norm "
                     f"{mean_norm:.2f} and costs more clean loss zero-ablated than the cheapest truth head "
                     f"({lowest:.3f} nats): the distractor does not trap a norm or zero-ablation reading")


@pytest.mark.recipes
@pytest.mark.slow
def test_layernorm_recipe_needs_its_pos_edges_under_zero_ablation_only():
    """Trained layernorm-2l: the previous-token head finds the previous position through its pos edges.
    Zero-ablating them breaks the circuit (benchmarks/suite_truths.py: the truth without them keeps
    -0.2 to -0.3 at seeds 1 and 2), while resampling, whose corrupted run has the same positions,
    cannot see them."""
    model = _trained_at_seed_0("layernorm-2l")
    g = Graph(model)
    pc = PLANTED["layernorm"]
    truth = pc.truth(model, g)
    pos = {e for e in truth if e.startswith("pos->")}
    assert pos, f"the truth {sorted(truth)} has no pos edges: no previous-token head formed"
    task = pc.make_task(model, 0, 128)
    full, cut = (check_truth(model, g, t, task, "zero") for t in (truth, truth - pos))
    assert full.passed, f"zero ablation: the truth keeps {full.kept:.2f}, removing it destroys {full.removed:.2f}"
    assert cut.kept < 0.5, f"without {sorted(pos)} the truth still keeps {cut.kept:.2f} under zero ablation"
    full, cut = (check_truth(model, g, t, task, "resample") for t in (truth, truth - pos))
    assert abs(full.kept - cut.kept) < 1e-6, "resampling keeps the positions: the pos edges change nothing"
