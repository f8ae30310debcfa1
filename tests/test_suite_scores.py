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
from toylab.suite.report import aggregate
from toylab.suite.scores import check_scores, node_truth, score_method
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
