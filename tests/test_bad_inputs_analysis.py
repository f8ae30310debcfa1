"""Bad inputs to the analysis API and the sentence each gets (issue 8, section 3).

One row per case: (id, call, expected exception, a regex its message must match).
Run with ``-s`` to print the table of messages. Every call must raise; no call may
leave a hook attached or a figure open.
"""

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toylab import plot  # noqa: E402
from toylab.causal.attribution import logit_attrs  # noqa: E402,F401  (registers the cache helpers)
from toylab.circuits.weights import full_ov, skip_trigram_triples  # noqa: E402
from toylab.circuits.composition import composition_scores  # noqa: E402
from toylab.circuits.copying import copying_scores, direct_copying_scores, random_copying_baseline  # noqa: E402
from toylab.data import BigramLanguage, repeated_tokens  # noqa: E402
from toylab.hooks import ActivationCache, resolve_index  # noqa: E402
from toylab.causal.interventions import ablate_heads, make_metric, term_importance  # noqa: E402
from toylab.model import AttnOnlyTransformer, ModelConfig  # noqa: E402
from toylab.causal.patching import patch, patch_sweep  # noqa: E402
from toylab.training.presets import load_model  # noqa: E402
from toylab.circuits.scores import induction_score, previous_token_score  # noqa: E402
from _helpers import raises_a_sentence  # noqa: E402


@functools.lru_cache(maxsize=None)
def m2():
    return load_model("induction-2l")


@functools.lru_cache(maxsize=None)
def ln_model():
    return AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=2, n_heads=2,
                                           layernorm=True), seed=0)


@functools.lru_cache(maxsize=None)
def toks():
    return repeated_tokens(128, 15, 4, torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def cache():
    return m2().run_with_cache(toks())[1]


def _corr():
    return repeated_tokens(128, 15, 4, torch.Generator().manual_seed(1))


def _pattern():
    return cache()["pattern", 1]


def _scores():
    return cache()["attn_scores", 1]


def _hook(fn, name="blocks.0.attn.hook_z"):
    return lambda: m2().run_with_hooks(toks(), fwd_hooks=[(name, fn)])


def _bigram():
    return BigramLanguage(d_vocab=8, n_ctx=8, seed=0, n_successors=3)


def _wrong_dim_softmax():
    return torch.softmax(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), dim=0)


CASES = [
    # --- scores outside their range
    ("detector given attention scores", lambda: induction_score(_scores().masked_fill(_scores().isinf(), 0), toks()),
     ValueError, r"Did you pass the attention scores \(hook_attn_scores"),
    ("detector given scores with -inf", lambda: previous_token_score(_scores()), ValueError, "NaN or inf"),
    ("detector given a transposed pattern", lambda: induction_score(_pattern().transpose(-1, -2), toks()),
     ValueError, "not causal.*transposed"),
    ("detector given a NaN pattern", lambda: previous_token_score(_pattern() * float("nan")), ValueError,
     "NaN or inf"),
    # --- analysis that does not apply
    ("copying_scores on LayerNorm", lambda: copying_scores(ln_model()), ValueError, "has LayerNorm"),
    ("copying_scores(ov) on LayerNorm", lambda: copying_scores(ln_model(), "ov"), ValueError, "has LayerNorm"),
    ("direct_copying_scores on LayerNorm", lambda: direct_copying_scores(ln_model()), ValueError, "has LayerNorm"),
    ("composition_scores on LayerNorm", lambda: composition_scores(ln_model(), "K"), ValueError, "has LayerNorm"),
    ("skip_trigram_triples on LayerNorm", lambda: skip_trigram_triples(AttnOnlyTransformer(ModelConfig(
        d_vocab=10, n_ctx=8, d_model=8, n_layers=1, layernorm=True))), ValueError, "has LayerNorm"),
    ("skip_trigram_triples on 2 layers", lambda: skip_trigram_triples(m2()), ValueError,
     "reads a 1-layer model.*2 layers"),
    ("random_copying_baseline bad shape", lambda: random_copying_baseline(10, 0, 4), ValueError,
     "d_model must be a positive int"),
    # --- hooks
    ("hook taking one argument", _hook(lambda act: act), TypeError, r"a hook takes two arguments"),
    ("hook returning float64", _hook(lambda act, hook: act.double()), TypeError,
     r"returned dtype torch.float64, expected the activation's dtype torch.float32"),
    ("hook returning the wrong shape", _hook(lambda act, hook: act[:, :1]), ValueError, "returned shape"),
    # --- cache keys
    ("cache['pattern'] without a layer", lambda: cache()["pattern"], KeyError, "give a layer"),
    ("cache key, negative layer out of range", lambda: cache()["pattern", -3], KeyError,
     r"layer -3 is out of range: valid layers are 0..1"),
    ("cache key, layer out of range", lambda: cache()["pattern", 2], KeyError, "layer 2 is out of range"),
    ("cache key, string layer", lambda: cache()["pattern", "1"], KeyError, "layer must be an integer, got str"),
    ("cache key, float layer", lambda: cache()["pattern", 1.0], KeyError, "layer must be an integer, got float"),
    ("cache key without model, negative layer", lambda: ActivationCache({})["pattern", -1], KeyError,
     "no model to count from the end"),
    ("cache helper without model", lambda: ActivationCache(dict(cache())).decompose_resid(), ValueError,
     "made without a model"),
    # --- patching and metrics
    ("patch_sweep(cells_per_pass=-1)", lambda: patch_sweep(m2(), toks(), _corr(), "logprob", cells_per_pass=-1),
     ValueError, "cells_per_pass must be a positive integer"),
    ("patch_sweep(cells_per_pass=0)", lambda: patch_sweep(m2(), toks(), _corr(), "logprob", cells_per_pass=0),
     ValueError, "cells_per_pass must be a positive integer"),
    ("metric returning one value per sequence",
     lambda: patch(m2(), toks(), _corr(), "z", lambda lg: lg[:, -1, 0], layer=0), ValueError,
     r"returned a tensor of shape \[4\]; expected a scalar"),
    ("patch, layer out of range", lambda: patch(m2(), toks(), _corr(), "z", "logprob", layer=-3), ValueError,
     "layer -3 is out of range"),
    ("patch, head out of range", lambda: patch(m2(), toks(), _corr(), "z", "logprob", layer=0, head=2),
     ValueError, "head 2 is out of range"),
    ("ablate_heads, head out of range", lambda: ablate_heads(m2(), toks(), [(0, -3)]), ValueError,
     "head -3 is out of range"),
    ("ablate_heads, float layer", lambda: ablate_heads(m2(), toks(), [(0.0, 1)]), ValueError,
     "layer must be an integer, got float"),
    ("term_importance, position out of range", lambda: term_importance(m2(), toks(), positions=[40]), ValueError,
     r"positions must lie in \[0, 29\]"),
    ("term_importance, float positions", lambda: term_importance(m2(), toks(), positions=[1.5]), ValueError,
     "positions must be integer logit positions"),
    ("term_importance, mask of wrong length",
     lambda: term_importance(m2(), toks(), positions=torch.ones(5, dtype=torch.bool)), ValueError,
     r"a positions mask must have shape \[30\]"),
    ("resolve_index bool", lambda: resolve_index(True, 2), ValueError, "must be an integer, got bool"),
    # --- frequency_weighted_kl
    ("frequency_weighted_kl, softmax over dim 0", lambda: _bigram().frequency_weighted_kl(_wrong_dim_softmax()),
     ValueError, r"rows must each sum to 1.*softmax taken over the wrong dim"),
    ("frequency_weighted_kl, unnormalised", lambda: _bigram().frequency_weighted_kl(torch.full((8, 8), 0.5)),
     ValueError, r"rows must each sum to 1.*softmax\(logits, dim=-1\)"),
    # --- plotting: wrong shapes, checked before drawing
    ("plot.attention_patterns 4-D", lambda: plot.attention_patterns(torch.rand(2, 2, 5, 5)), ValueError,
     r"pattern must be \[n_heads, pos, pos\]"),
    ("plot.attention_patterns labels", lambda: plot.attention_patterns(torch.rand(2, 5, 5), labels=list("abc")),
     ValueError, "3 labels for 5 positions"),
    ("plot.attention_patterns titles", lambda: plot.attention_patterns(torch.rand(2, 5, 5), titles=["x"]),
     ValueError, "1 titles for 2 heads"),
    ("plot.composition shape", lambda: plot.composition(torch.rand(2, 3), 0.2, ["a", "b"], ["c", "d"]),
     ValueError, "do not match 2 x 2 labels"),
    ("plot.eigenvalues 3-D", lambda: plot.eigenvalues(torch.rand(2, 2, 2)), ValueError, r"eigs must be \[n_heads, k\]"),
    ("plot.circuit ticks", lambda: plot.circuit(torch.rand(4, 4), ticks=list("ab")), ValueError, "2 ticks for a 4 x 4"),
    ("plot.head_scores shapes", lambda: plot.head_scores({"a": torch.rand(2, 2), "b": torch.rand(3, 2)}),
     ValueError, "arrays of one shape"),
    ("plot.training_history missing key", lambda: plot.training_history([{"step": 0, "loss_first": 1.0}]),
     ValueError, "entries lack"),
    ("plot.patching col_labels", lambda: plot.patching(torch.rand(2, 4), ["a", "b"], list("xy")), ValueError,
     "2 col_labels for 4 positions"),
    ("plot with too few axes", lambda: plot.attention_patterns(torch.rand(3, 4, 4), ax=plt.subplots(1, 2)[1]),
     ValueError, "2 axes given for 3 panels"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_sentence(case):
    plt.close("all")
    raises_a_sentence(case, [m2()])


def test_a_plotting_function_that_raises_closes_its_half_drawn_figure(monkeypatch):
    plt.close("all")
    # fail after the figure exists (inside matplotlib's colorbar), not in the up-front checks
    def boom(*a, **k):
        raise RuntimeError("colorbar failed")
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", boom)
    with pytest.raises(RuntimeError, match="colorbar failed"):
        plot.attention_patterns(torch.rand(2, 4, 4))
    assert plt.get_fignums() == []
    # a figure the caller made (passed as ax) is the caller's: it stays open
    fig, ax = plt.subplots()
    with pytest.raises(RuntimeError):
        plot.circuit(torch.rand(3, 3), ax=ax)
    assert plt.get_fignums() == [fig.number]
    plt.close("all")


def test_negative_indices_count_from_the_end_everywhere():
    m = m2()
    c = cache()
    assert torch.equal(c["pattern", -1], c["pattern", 1])
    assert torch.equal(full_ov(m, -1).AB, full_ov(m, 1).AB)
    a = ablate_heads(m, toks(), [(-1, -1)])
    b = ablate_heads(m, toks(), [(1, 1)])
    assert torch.equal(a, b)
    metric = make_metric("logprob", toks())
    assert patch(m, toks(), _corr(), "z", metric, layer=-1, head=-1) == patch(m, toks(), _corr(), "z", metric,
                                                                             layer=1, head=1)
    assert resolve_index(-2, 5) == 3


def test_uninitialised_memory_is_never_returned_by_patch_sweep():
    vals, _ = patch_sweep(m2(), toks(), _corr(), "logprob", per_position=False, cells_per_pass=1)
    assert torch.isfinite(vals).all() and vals.abs().max() < 10


def test_act_name_refuses_layers_it_cannot_resolve():
    from toylab.hooks import act_name
    with pytest.raises(KeyError, match="no model to count from the end"):
        act_name("pattern", -1)
    with pytest.raises(KeyError, match="layer must be an integer, got float"):
        act_name("pattern", 1.0)
    assert act_name("pattern", torch.tensor(1)) == "blocks.1.attn.hook_pattern"
