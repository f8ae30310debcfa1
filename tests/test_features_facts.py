"""Fact features in neuron space: planted directions, MCC of neurons and of an SAE, the sweep.

The hand-built model of tests/test_neurons_facts.py stores fact f in neuron f alone, so its
neurons are silent wherever no subject is: its planted directions are exactly d_f = e_f,
and the neuron basis matches them with cosine 1.
"""

import math

import torch

from test_neurons_facts import LANG, hand_built
from toylab.features.fact_features import (facts_sweep, neuron_fact_mcc, neuron_rows, planted_fact_directions,
                                           sae_fact_mcc)
from toylab.neurons.facts import fact_batch


def test_planted_directions_of_the_hand_built_model():
    d = planted_fact_directions(hand_built(), LANG)
    torch.testing.assert_close(d, torch.eye(6, dtype=torch.float64))
    scores = neuron_fact_mcc(d)
    assert math.isclose(scores["mcc"], 1.0, rel_tol=1e-12) and math.isclose(scores["mmcs"], 1.0, rel_tol=1e-12)
    # shifting a neuron's silent level moves the baseline with it: the directions do not change
    model = hand_built()
    with torch.no_grad():
        model.blocks[0].mlp.b_in.fill_(-0.5)  # pre-activation 1.5 on the subject, 0 elsewhere: same post
    torch.testing.assert_close(planted_fact_directions(model, LANG), 1.5 * torch.eye(6, dtype=torch.float64))


def test_neuron_rows_are_hook_post_without_bos():
    model, tokens = hand_built(), fact_batch(LANG, batch=64)
    rows = neuron_rows(model, LANG, tokens)
    assert rows.shape == (64 * 7, 6)
    # one-hot on the subject's own neuron at subject positions, zero elsewhere
    want = torch.zeros(64, 7, 6)
    t = tokens[:, 1:]
    subj = LANG.is_subject(t)
    want[subj, t[subj] - 1] = 1.0
    torch.testing.assert_close(rows, want.reshape(-1, 6))


def test_an_sae_on_the_hand_built_neurons_finds_the_facts():
    r = sae_fact_mcc(hand_built(), LANG, fact_batch(LANG, batch=256), d_sae=12, steps=1500, l1_coefficient=0.5)
    assert r["neuron_mcc"] == neuron_fact_mcc(planted_fact_directions(hand_built(), LANG))["mcc"]
    assert r["sae_mcc"] >= 0.95 and r["fve"] >= 0.9, r  # measured 0.999 and 0.996


def test_the_sweep_counts_facts_per_neuron_with_its_identity():
    rows = facts_sweep(table_sizes=(8,), d_mlp=8, seeds=(0,), steps=40)
    (r,) = rows
    assert r["n_facts"] == 8 and r["pigeonhole"] == 1.0
    assert math.isclose(r["analytic"], r["facts_per_neuron"], rel_tol=1e-9)  # sum_n count_n = sum_f k_f
    assert 0 <= r["learned"] <= 8 and r["unused_neurons"] + r["monosemantic_neurons"] <= 8
