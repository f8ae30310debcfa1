"""Probes against what the induction generator planted, with the majority baseline and control tasks."""

import pytest
import torch

from toylab.data import InductionData
from toylab.features.probes import (control_labels, fit_probe, induction_variables, probe_across_hooks,
                                    probe_with_control)
from toylab.features.train_sae import gather_activations
from toylab.training.presets import load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def batch():
    return InductionData(d_vocab=128, n_ctx=32).sample_batch(80, torch.Generator().manual_seed(3))


def groups_of(batch):
    b, n = batch.tokens.shape
    return torch.arange(b).repeat_interleave(n - 1)


def test_probe_on_planted_linear_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    r = fit_probe(x, y, seed=0)
    assert r.test_accuracy > 0.95 and r.n_classes == 2 and r.n_test == 150
    noise = fit_probe(x, torch.randint(0, 2, (600,), generator=g), seed=0)
    assert noise.test_accuracy < 0.65


def test_control_labels_are_a_function_of_type():
    types = torch.tensor([3, 1, 3, 2, 1, 3])
    labels = torch.tensor([0, 1, 1, 0, -1, 1])
    c = control_labels(types, labels, seed=0)
    assert c[4] == -1
    assert c[0] == c[2] == c[5] and c[1] >= 0
    assert set(c[labels != -1].tolist()) <= {0, 1}


def test_induction_variables_follow_the_generator(batch):
    v = induction_variables(batch)
    n = batch.tokens.shape[1]
    assert all(t.shape == (80 * (n - 1),) for t in v.values())
    torch.testing.assert_close(v["previous_token"].view(80, n - 1), batch.tokens[:, :-1])
    off = v["repeat_offset"].view(80, n - 1)
    rep = batch.is_repeat[:, 1:]
    assert bool((off[~rep] == -1).all()) and bool((off[rep] >= 2).all())


def test_previous_token_jumps_at_the_write_site(model, batch):
    """Layer 0's previous-token head writes x_{p-1} into the stream: a linear probe for the previous
    token is at chance before layer 0 and high right after it."""
    labels, groups = induction_variables(batch)["previous_token"], groups_of(batch)
    acc = {}
    for hook in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"):
        acc[hook] = fit_probe(gather_activations(model, hook, batch.tokens), labels, groups=groups,
                              seed=0).test_accuracy
    first_high = next(h for h, a in acc.items() if a > 0.5)
    assert first_high == "blocks.0.hook_resid_post", acc
    majority = 1 / 31  # x_0 = BOS is the previous token of every position 1
    assert acc["hook_embed"] < majority + 0.02 and acc["blocks.0.hook_resid_pre"] < majority + 0.02
    assert acc["blocks.0.hook_resid_post"] > 0.8


def test_selectivity_and_the_cautionary_control(model, batch):
    """At hook_embed the control task (a random label per current token) is solved perfectly while
    the previous token is not: negative selectivity. Layer 0's attention output is mostly the
    previous-token head's output: the previous token is decodable there, and the current token
    (what the control needs) much less, so selectivity is clearly positive."""
    r = probe_across_hooks(model, batch, "previous_token", hooks=["hook_embed", "blocks.0.hook_attn_out"])
    embed, attn = r["hook_embed"], r["blocks.0.hook_attn_out"]
    assert embed["control_accuracy"] > 0.9 and embed["selectivity"] < -0.8
    assert attn["accuracy"] > 0.8 and attn["selectivity"] > 0.3, attn
    assert embed["chance"] == pytest.approx(1 / 128)


def test_bad_inputs(model, batch):
    acts = gather_activations(model, "hook_embed", batch.tokens)
    with pytest.raises(ValueError, match="length 10 but there are"):
        fit_probe(acts, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        fit_probe(acts, torch.zeros(acts.shape[0]))
    with pytest.raises(ValueError, match="unknown variable"):
        probe_across_hooks(model, batch, "colour")
    with pytest.raises(ValueError, match="types"):
        probe_with_control(acts, torch.zeros(acts.shape[0], dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_skip_trigram_variables_against_brute_force():
    from toylab.data import SkipTrigramLanguage
    from toylab.features.probes import skip_trigram_variables
    lang = SkipTrigramLanguage(d_vocab=64, n_ctx=32, seed=0)
    tokens = lang.sample(8, torch.Generator().manual_seed(0))
    v = skip_trigram_variables(tokens, lang)
    sources = {a for a, _, _ in lang.rules}
    want_seen = [[int(any(int(t) in sources for t in row[:p])) for p in range(1, 32)] for row in tokens]
    want_rule = [[int(any(int(row[p]) == b and a in [int(t) for t in row[:p]] for a, b, _ in lang.rules))
                  for p in range(1, 32)] for row in tokens]
    assert v["source_earlier"].view(8, 31).tolist() == want_seen
    assert v["rule_active"].view(8, 31).tolist() == want_rule
    assert 0 < float(v["rule_active"].float().mean()) < 1
    with pytest.raises(TypeError, match="SkipTrigramLanguage"):
        skip_trigram_variables(tokens, object())
