"""The suite's truths, scores and the `toylab suite` command (toylab.suite: truth, entries, scores, runner,
report)."""

import json
import math

import pytest
import torch

from toylab.cli import main
from toylab.discovery.graph import Graph
from toylab.model import AttnOnlyTransformer
from toylab.suite.entries import CIRCUITS, NoPlantedCircuit, induction_truth, registry
from toylab.suite.report import aggregate, confidence_table, failures_table
from toylab.suite.scores import check_scores, circuit_confidence, confidence, node_truth, score_method
from toylab.suite.truth import check_truth, truth_holds
from toylab.training.presets import get_preset, load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def induction():
    model = load_model("induction-2l")
    graph = Graph(model)
    entry = CIRCUITS["induction-2l"]
    return model, graph, entry.make_task(model, 0, 32), entry.truth(model, graph)


def test_induction_truth_passes_the_intervention_check_and_a_partial_one_does_not(induction):
    model, graph, task, truth = induction
    assert {"pos->L0H0.q", "pos->L0H0.k", "embed->L0H0.v"} <= truth  # the previous-token head's edges
    r = check_truth(model, graph, graph.circuit(truth), task)
    kept, removed = r.kept, r.removed
    assert truth_holds(kept, removed), (kept, removed)
    # the induction heads' outputs alone, without what they read, keep little of the behaviour
    part = graph.circuit([e for e in truth if e.endswith("->logits")])
    rp = check_truth(model, graph, part, task)
    kept_p, removed_p = rp.kept, rp.removed
    assert kept_p < 0.5 and removed_p > 0.9


def test_an_untrained_model_has_no_planted_circuit():
    model = AttnOnlyTransformer(get_preset("induction-2l").model)
    with pytest.raises(NoPlantedCircuit, match="no (previous-token|induction) head"):
        induction_truth(model, Graph(model))


def test_node_truth_and_registry(induction):
    _, graph, _, truth = induction
    nodes = node_truth(graph, truth)
    assert "L0H0.result" in nodes and "L0H0.q" in nodes and "L0H1.result" not in nodes
    assert {"induction-2l", "skiptrigram-1l"} <= set(registry())


@pytest.mark.slow  # two exact sweeps over 37 edges: 3-7 s on the shared machine
def test_exact_patching_under_zero_finds_the_truth_and_resampling_misses_the_position_edges(induction):
    model, graph, task, truth = induction
    zero = score_method(model, graph, task, truth, "patching", "zero")
    resample = score_method(model, graph, task, truth, "patching", "resample")
    assert zero["auroc"] > 0.95
    # a few edges carry nearly all of the exact effects: the method is confident, and rightly so
    assert zero["confidence"] > 0.5 and zero["coverage"] > 0.8 and zero["size"] < 0.5
    # positions are the same in the clean and corrupted runs, so resampling gives the pos edges effect 0
    assert resample["recall"] <= 1 - 2 / len(truth) + 1e-9
    for s in (zero, resample):
        assert all(0 <= s[k] <= 1 for k in ("auroc", "precision", "recall"))


def test_scores_refuse_nan_and_out_of_range():
    with pytest.raises(ValueError, match="auroc came out nan"):
        check_scores({"auroc": math.nan}, "x")
    with pytest.raises(ValueError, match=r"recall = 1.5 lies outside \[0, 1\]"):
        check_scores({"recall": 1.5}, "x")
    assert check_scores({"faithfulness": -0.2, "mcc": -0.5}, "x") == {"faithfulness": -0.2, "mcc": -0.5}


def test_aggregate_is_mean_and_spread_over_scored_seeds():
    rs = [{"model": "m", "seed": s, "status": "scored", "scores": {"eap/zero": {"auroc": a}}}
          for s, a in ((0, 0.5), (1, 1.0))] + [{"model": "m", "seed": 2, "status": "excluded", "scores": {}}]
    cell = aggregate(rs)["m"]["eap/zero"]["auroc"]
    assert cell["mean"] == pytest.approx(0.75) and cell["spread"] == pytest.approx(0.25) and cell["n"] == 2


@pytest.mark.slow  # about 8-18 s on the shared 2-core machine (imports, four methods, the figure)
def test_suite_command_quick_on_one_model(tmp_path, capsys):
    rc = main(["suite", "--quick", "--quiet", "--models", "skiptrigram-1l", "--methods", "patching", "eap", "acdc",
               "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "suite.json").read_text())
    cells = data["aggregate"]["skiptrigram-1l"]
    assert set(cells) == {"patching/resample", "eap/resample", "acdc/resample"}
    for cell in cells.values():
        assert 0 <= cell["auroc"]["mean"] <= 1
    assert "| skiptrigram-1l |" in (tmp_path / "suite.md").read_text()
    assert (tmp_path / "suite.png").stat().st_size > 1000
    assert main(["suite", "--quick", "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown suite model(s) ['nope']" in capsys.readouterr().err


def test_confidence_is_high_for_a_planted_sparse_graph_and_low_for_a_dense_one():
    g = torch.Generator().manual_seed(0)
    sparse = torch.rand(37, generator=g) * 0.002
    sparse[[3, 8, 20]] = torch.tensor([1.0, 0.8, 0.6])  # three edges carry the behaviour
    kept = sparse >= 0.1 * sparse.max()
    c = confidence(sparse, kept)
    assert kept.sum() == 3 and c["coverage"] > 0.95 and c["confidence"] > 0.85
    dense = 0.5 + 0.5 * torch.rand(37, generator=g)  # every edge carries a similar share
    c = confidence(dense, dense >= 0.1 * dense.max())
    assert c["size"] == 1.0 and abs(c["confidence"]) < 1e-12
    # a dense behaviour cut down to its top half: the half carries only a little more than its share
    top = dense >= dense.median()
    assert 0 < confidence(dense, top)["confidence"] < 0.15
    assert confidence(torch.zeros(5), torch.zeros(5, dtype=torch.bool))["confidence"] == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        confidence(torch.tensor([1.0, -1.0]), torch.tensor([True, False]))
    # ACDC/SP: the faithfulness they measure themselves, minus the circuit's size
    assert circuit_confidence(0.97, 4, 40)["confidence"] == pytest.approx(0.87)
    assert circuit_confidence(1.2, 40, 40)["confidence"] == pytest.approx(0.0)  # coverage clipped to 1


def test_a_negative_control_is_scored_without_a_truth(induction):
    model, graph, task, truth = induction
    s = score_method(model, graph, task, None, "eap", "resample")
    assert not {"auroc", "precision", "recall"} & set(s)
    assert {"confidence", "coverage", "size", "faithfulness", "seconds", "cpu_seconds"} <= set(s)
    t = score_method(model, graph, task, truth, "eap", "resample")
    assert t["confidence"] == pytest.approx(s["confidence"]) and "auroc" in t


@pytest.mark.slow  # one SP run of 100 steps on 32 sequences: 2-8 s on the shared machine
def test_subnetwork_probing_ranks_edges_by_its_mask_logits(induction):
    """SP is trained once at its recommended lam and its AUROC ranks the edges by sigmoid(log_alpha);
    under zero ablation (every truth edge visible) that ranking finds the induction circuit."""
    model, graph, task, truth = induction
    s = score_method(model, graph, task, truth, "sp", "zero", sp_steps=100)
    assert s["auroc"] > 0.9 and s["recall"] == 1.0 and s["faithfulness"] > 0.9


def test_the_confidence_table_flags_a_confident_circuit_on_the_negative_control():
    def cell(v):
        return {"mean": v, "spread": 0.0, "n": 1, "values": [v]}

    agg = {"induction-2l": {"eap/zero": {"confidence": cell(0.8)}, "acdc/zero": {"confidence": cell(0.7)}},
           "majority": {"eap/zero": {"confidence": cell(0.62), "faithfulness": cell(0.3), "size": cell(0.1)},
                        "acdc/zero": {"confidence": cell(0.05), "faithfulness": cell(0.95), "size": cell(0.9)}}}
    rows = {line.split(" | ")[0].strip("| "): line for line in confidence_table(agg) if line.startswith("| ")}
    assert "confident wrong" in rows["eap/zero"] and "low confidence" in rows["acdc/zero"]
    assert "0.80 ± 0.00" in rows["eap/zero"] and "0.62 ± 0.00" in rows["eap/zero"]


def test_the_failures_table_names_each_methods_lowest_cell_and_why():
    def cell(v):
        return {"mean": v, "spread": 0.0, "n": 1, "values": [v]}

    agg = {"induction-2l": {"eap/resample": {"auroc": cell(0.7), "faithfulness": cell(0.95)},
                            "eap/zero": {"auroc": cell(0.95), "faithfulness": cell(0.9)},
                            "probe": {"selectivity": cell(-0.02), "accuracy": cell(0.97),
                                      "control_accuracy": cell(0.99)}},
           "redundant": {"eap/zero": {"auroc": cell(0.92), "faithfulness": cell(0.3)}},
           "majority": {"eap/zero": {"faithfulness": cell(0.0)}}}  # a negative control: never a failure row
    results = [{"model": "induction-2l", "truth": {"edges": ["pos->L0H0.q", "L1H0->logits"]}},
               {"model": "redundant", "truth": {"edges": ["L1H0->logits"]}}]
    rows = [line for line in failures_table(results, agg) if line.startswith("| ") and "---" not in line][1:]
    by = {(r.split(" | ")[0].strip("| "), r.split(" | ")[1].split()[0]): r for r in rows}
    auroc, faith = by["eap", "auroc"], by["eap", "faithfulness"]
    assert "0.70" in auroc and "induction-2l, resample" in auroc and "| yes |" in auroc
    assert "share their positions" in auroc  # a resample cell whose truth has pos edges
    assert "0.30" in faith and "redundant, zero" in faith and "| yes |" in faith
    assert "under-reports" in faith  # the redundant model's trap is the reason given
    probe = by["probe", "selectivity"]
    assert "-0.02" in probe and "control accuracy 0.99" in probe and "| yes |" in probe
    assert not any("majority" in r for r in rows)


def test_seeds_shared_by_two_suite_models_are_trained_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from toylab.suite.runner import training_plan

    monkeypatch.setenv("TOYLAB_CACHE", str(tmp_path))
    every = {"a": SimpleNamespace(preset="skiptrigram-1l"), "b": SimpleNamespace(preset="skiptrigram-1l"),
             "c": SimpleNamespace(preset="induction-2l")}
    plan = training_plan(every, [(m, s) for m in every for s in (0, 1)])
    # seed 0 of both presets is shipped; seed 1 of the shared preset is trained once, the longer recipe first
    assert plan == [("induction-2l", 1), ("skiptrigram-1l", 1)]


def test_the_search_batch_is_the_tasks_first_sequences_unless_they_read_nothing(induction):
    from toylab.suite.scores import SEARCH_BATCH, _search_task
    from toylab.suite.spec import Task

    _, _, task, _ = induction
    big = Task(task.clean.repeat(2, 1), task.corrupted.repeat(2, 1), task.positions.repeat(2, 1), "x")
    sub = _search_task(big)
    assert sub.clean.shape[0] == SEARCH_BATCH and torch.equal(sub.clean, big.clean[:SEARCH_BATCH])
    assert torch.equal(sub.positions, big.positions[:SEARCH_BATCH])
    late = torch.zeros_like(big.positions)
    late[-1, 3] = True  # only the last sequence is read: the search keeps the whole task
    assert _search_task(Task(big.clean, big.corrupted, late, "x")).clean.shape[0] == big.clean.shape[0]


def test_the_probe_on_128_sequences_agrees_with_256():
    from toylab.suite.scores import probe_scores

    model = load_model("skiptrigram-1l")
    a, b = probe_scores(model, "skiptrigram-1l", 0)["probe"], probe_scores(model, "skiptrigram-1l", 0, n=256)["probe"]
    assert abs(a["selectivity"] - b["selectivity"]) < 0.02 and a["accuracy"] > 0.9


@pytest.mark.recipes
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_a_suite_circuit_recipe_plants_its_truth_at_another_seed(name):
    """The suite's own circuit models (induction-2l, skiptrigram-1l; the planted ones have theirs in
    tests/test_suite_planted.py): the preset's recipe, retrained whole at seed 1, grows the circuit the
    generator's labels read (no NoPlantedCircuit) and that truth passes the intervention check."""
    import dataclasses

    from toylab.training.train import train

    entry = CIRCUITS[name]
    p = get_preset(entry.preset)
    once = dataclasses.replace(p.train, eval_every=p.train.steps)
    model = train(p.model, p.data, once, seed=1, progress=False, off_probe=False).model
    graph = Graph(model)
    truth = entry.truth(model, graph, 1)
    r = check_truth(model, graph, graph.circuit(truth), entry.make_task(model, 1, 64))
    assert truth_holds(r.kept, r.removed), (
        f"{name} at seed 1: the truth read off the generator's labels keeps {r.kept:.2f} and removing it "
        f"destroys {r.removed:.2f} (needs >= 0.90 and >= 0.80)")
