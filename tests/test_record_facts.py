"""The recorded key-value memory numbers that chapter "MLPs and neurons" reads.

``chapters/data/ch11_facts.json`` is written by ``benchmarks/record_facts.py`` (minutes of
training, so not rerun here). These checks are cheap: the file has what the chapter reads,
seed 0's report agrees with the shipped model's numbers recomputed now, and the sweep obeys
the counting identity ``mean facts per neuron = N_learned kbar / d_mlp``.
"""

import json
from pathlib import Path

import pytest
import torch

RECORD = Path(__file__).resolve().parents[1] / "chapters" / "data" / "ch11_facts.json"


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


def test_the_record_has_what_the_chapter_reads(record):
    assert record["script"] == "benchmarks/record_facts.py"
    assert [r["seed"] for r in record["reports"]] == [0, 1, 2]
    for r in record["reports"]:
        for key in ("accuracy", "neurons_per_fact", "facts_per_used_neuron", "ablate_own", "ablate_others",
                    "random_own", "sae_mcc", "neuron_mcc"):
            assert 0 <= r[key] <= 200, (key, r[key])
    sizes = record["sweep_args"]["table_sizes"]
    assert sorted({row["n_facts"] for row in record["sweep"]}) == sizes
    assert len(record["sweep"]) == len(sizes) * len(record["sweep_args"]["seeds"])


def test_the_sweep_obeys_the_counting_identity(record):
    d = record["sweep_args"]["d_mlp"]
    for row in record["sweep"]:
        assert row["analytic"] == pytest.approx(row["learned"] * row["neurons_per_fact"] / d)
        assert row["facts_per_neuron"] == pytest.approx(row["analytic"], rel=1e-9)
        assert row["facts_per_neuron"] >= row["learned"] / d - 1e-9  # pigeonhole, every fact has a neuron


def test_seed_0_is_the_shipped_model(record):
    from toylab.data import make_dataset
    from toylab.neurons.facts import fact_accuracy, fact_batch, fact_contributions, fact_neurons
    from toylab.training.presets import load_shipped

    torch.set_num_threads(1)
    ckpt = load_shipped("facts-1l")
    lang = make_dataset(ckpt.data_spec)
    tokens = fact_batch(lang)
    r0 = record["reports"][0]
    assert float(fact_accuracy(ckpt.model, lang, tokens).mean()) == pytest.approx(r0["accuracy"])
    sets = fact_neurons(fact_contributions(ckpt.model, lang, tokens), 0.8)
    assert sum(len(s) for s in sets) / len(sets) == pytest.approx(r0["neurons_per_fact"])
