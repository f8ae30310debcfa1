"""Ablations, frozen-pattern runs and term importance on the shipped induction-2l model."""

import pytest
import torch

from toylab.data import repeated_tokens
from toylab.causal.interventions import ablate_heads, ablation_hooks, make_metric, normalised_effect, term_importance
from toylab.model import next_token_loss
from toylab.training.presets import load_model
from toylab.circuits.scores import induction_score

H = 15


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def probe():
    return repeated_tokens(128, H, 32, torch.Generator().manual_seed(21))


@pytest.fixture(scope="module")
def reference():
    return repeated_tokens(128, H, 64, torch.Generator().manual_seed(22))


def no_hooks(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


def measure(model, probe, **kw):
    """(loss on first copy, loss on repeated copy, best layer-1 induction score)."""
    logits, cache = ablate_heads(model, probe, return_cache=True, names_filter="blocks.1.attn.hook_pattern", **kw)
    loss = next_token_loss(logits, probe)
    ind = induction_score(cache["pattern", 1], probe, torch.arange(probe.shape[1]) >= 1 + H)
    return loss[:, :H].mean().item(), loss[:, 1 + H:].mean().item(), ind.max().item()


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablating_previous_token_head_kills_induction(model, probe, reference, kind):
    first, repeat, best = measure(model, probe, heads=[(0, 0)], kind=kind, reference=reference)
    print(f"ablate 0.0 ({kind}): loss first {first:.3f} repeat {repeat:.3f} best induction {best:.3f}")
    assert best < 0.2
    assert repeat > 0.85 * first  # the repeated copy is as hard as the first
    assert no_hooks(model)


def test_clean_and_unrelated_head(model, probe, reference):
    first, repeat, best = measure(model, probe, heads=[], kind="zero")
    assert repeat <= 0.3 and best > 0.9  # the shipped model's acceptance bounds
    first1, repeat1, best1 = measure(model, probe, heads=[(0, 1)], kind="mean", reference=reference)
    print(f"clean: repeat {repeat:.3f} best {best:.3f}; ablate 0.1 (mean): first {first1:.3f} "
          f"repeat {repeat1:.3f} best {best1:.3f}")
    assert best1 > 0.8  # the main induction head still works
    assert repeat1 < 0.25 * first1  # most of the induction benefit survives
    assert abs(first1 - first) < 0.05


def test_pattern_preserving_ablation(model, probe, reference):
    """With patterns frozen, 0.0 only writes values: it acts through 1.x's keys (K-composition), so
    freezing the patterns makes its ablation harmless."""
    _, clean_repeat, _ = measure(model, probe, heads=[], kind="zero")
    _, repeat, best = measure(model, probe, heads=[(0, 0)], kind="mean", reference=reference, freeze_patterns=True)
    print(f"pattern-preserving ablation of 0.0: repeat loss {repeat:.4f} (clean {clean_repeat:.4f}), "
          f"induction {best:.3f}")
    assert abs(repeat - clean_repeat) < 0.05 and best > 0.9


def test_ablation_kinds_do_what_they_say(model, probe, reference):
    before = probe.clone(), reference.clone()
    _, c = ablate_heads(model, probe, [(1, 1)], kind="zero", return_cache=True, names_filter="blocks.1.attn.hook_z")
    assert c["z", 1][:, :, 1].abs().max() == 0 and c["z", 1][:, :, 0].abs().max() > 0
    _, ref_cache = model.run_with_cache(reference, names_filter="blocks.1.attn.hook_z")
    _, c = ablate_heads(model, probe, [(1, 1)], kind="mean", reference=reference, return_cache=True,
                        names_filter="blocks.1.attn.hook_z")
    want = ref_cache["z", 1][:, :, 1].mean(0, keepdim=True).expand(32, -1, -1)
    torch.testing.assert_close(c["z", 1][:, :, 1], want)
    # hook_result gives the same zero ablation as hook_z
    torch.testing.assert_close(ablate_heads(model, probe, [(0, 0)], at="result"),
                               ablate_heads(model, probe, [(0, 0)], at="z"), rtol=0, atol=1e-4)
    # resampling is seeded, and from the batch itself it never returns a row its own activation
    a = ablate_heads(model, probe, [(0, 0)], kind="resample", seed=1)
    assert torch.equal(a, ablate_heads(model, probe, [(0, 0)], kind="resample", seed=1))
    assert not torch.equal(a, ablate_heads(model, probe, [(0, 0)], kind="resample", seed=2))
    _, c = ablate_heads(model, probe, [(0, 0)], kind="resample", return_cache=True, names_filter="blocks.0.attn.hook_z")
    _, clean = model.run_with_cache(probe, names_filter="blocks.0.attn.hook_z")
    own = (c["z", 0][:, :, 0] - clean["z", 0][:, :, 0]).flatten(1).abs().max(1).values
    assert (own > 0).all()
    assert torch.equal(probe, before[0]) and torch.equal(reference, before[1])
    metric = make_metric("loss", probe)
    assert float(ablate_heads(model, probe, [], metric=metric)) == pytest.approx(model(probe, "loss").item(), abs=1e-5)


def test_term_importance(model, probe):
    t = term_importance(model, probe)
    print("term importance on [BOS, r, r] (mean loss, nats):",
          {k: round(v, 4) for k, v in t.items()})
    assert t["full"] == pytest.approx(model(probe, return_type="loss").item(), abs=1e-4)
    assert t["direct"] > t["no_virtual"] >= t["full"] - 1e-3
    assert abs(t["virtual_terms"]) < 0.05 * t["single_head_terms"]
    rep = term_importance(model, probe, positions=range(1 + H, 2 * H))
    print("  ... on the repeated copy only:", {k: round(v, 4) for k, v in rep.items()})
    assert abs(rep["virtual_terms"]) < 0.05 * rep["single_head_terms"]


def test_metrics_and_normalisation(model, probe):
    other = repeated_tokens(128, H, 32, torch.Generator().manual_seed(23))
    clean_logits, corr_logits = model(probe), model(other)
    second = list(range(1 + H, 2 * H))
    for name in ("logit_diff", "logprob", "prob", "rank", "loss"):
        m = make_metric(name, probe, positions=second, incorrect_tokens=other)
        mc, mr = m(clean_logits), m(corr_logits)
        assert normalised_effect(mr, mc, mr) == 0.0
        assert normalised_effect(mc, mc, mr) == 1.0
    rank = make_metric("rank", probe, positions=second)(clean_logits)
    assert rank < 0.1
    lp = make_metric("logprob", probe)(clean_logits)
    assert lp.item() == pytest.approx(-model(probe, "loss").item(), abs=1e-5)
    with pytest.raises(ValueError, match="unknown metric"):
        make_metric("accuracy", probe)
    with pytest.raises(ValueError, match="incorrect_tokens"):
        make_metric("logit_diff", probe)
    with pytest.raises(ValueError, match="positions"):
        make_metric("prob", probe, positions=[40])
    with pytest.raises(ValueError, match="same metric"):
        normalised_effect(1.0, 2.0, 2.0)


def test_ablation_bad_input_leaves_no_hooks(model, probe):
    with pytest.raises(ValueError, match="out of range"):
        ablate_heads(model, probe, [(0, 2)])
    with pytest.raises(ValueError, match="out of range"):
        ablate_heads(model, probe, [(2, 0)])
    with pytest.raises(ValueError, match="kind"):
        ablate_heads(model, probe, [(0, 0)], kind="gaussian")
    with pytest.raises(ValueError, match="positions"):
        ablate_heads(model, probe, [(0, 0)], kind="mean", reference=probe[:, :10])
    with pytest.raises(ValueError, match="pair"):
        ablation_hooks(model, probe, [0])

    def boom(logits):
        raise RuntimeError("metric failed")
    with pytest.raises(RuntimeError):
        ablate_heads(model, probe, [(0, 0)], freeze_patterns=True, metric=boom)
    assert no_hooks(model)
