"""Which neurons store which planted facts, read against the table of a :class:`~toylab.data.facts.FactLanguage`.

The language plants a table ``attribute_of[f]`` (fact ``f`` = subject token ``f + 1``).
At a position holding subject ``s_f`` the model must predict ``a_f = attribute_of[f]``.
For an MLP layer (``post [batch, pos, d_mlp]`` its ``hook_post``, ``v[n] = W_out[n] W_U``
its neuron values, :func:`toylab.neurons.kv.neuron_values`) this module measures:

- **keys**, :func:`subject_activations`: ``act[f, n]``, neuron ``n``'s mean activation at
  the fact positions of subject ``s_f`` (the subjects that fire a neuron are its keys);
- **values**, :func:`neuron_attributes`: the attribute ``argmax_a v[n, a]`` a neuron raises most;
- **contributions**, :func:`fact_contributions`: the mean direct effect of neuron ``n`` on
  fact ``f``'s logit margin over the mean attribute,
  ``c[n, f] = act[f, n] (v[n, a_f] - mean_a v[n, a])`` (neuron DLA, averaged; exact for a
  model without a final LayerNorm);
- **the neurons of a fact**, :func:`fact_neurons`: the fewest neurons, largest ``c[n, f]``
  first, whose contributions reach ``coverage`` of fact ``f``'s positive total
  ``sum_n max(c[n, f], 0)``; :func:`facts_per_neuron` counts, for each neuron, the facts
  whose set it is in;
- **the check by intervention**, :func:`ablation_check`: zero-ablating the neurons of fact
  ``f`` should destroy ``f`` (its accuracy falls) and leave the other facts, while as many
  random neurons should not.

The analytic count. Every fact needs at least one neuron that writes its attribute, so
with ``N`` facts, ``k_f = |fact_neurons[f]| >= 1`` and ``d_mlp`` neurons, the counts obey
the identity ``sum_n facts_per_neuron[n] = sum_f k_f``: the mean over neurons is
``N kbar / d_mlp`` (``kbar`` the mean ``k_f``), at least ``N / d_mlp``. Once the facts
outnumber the neurons (``N > d_mlp``) a neuron must, on average, store more than one
fact (pigeonhole); if ``kbar`` stays fixed as the table grows, facts per neuron grows
linearly in ``N`` with slope ``kbar / d_mlp``.

Accuracy everywhere is the argmax over the whole vocabulary at fact positions.
"""

from __future__ import annotations

import torch

from toylab.causal.interventions import mlp_ablation_hooks
from toylab.data.facts import FactLanguage
from toylab.hooks import resolve_index
from toylab.neurons.kv import neuron_values

__all__ = ["FACT_SEED", "check_fact_model", "fact_batch", "fact_tokens", "fact_accuracy", "subject_activations",
           "neuron_attributes", "fact_contributions", "fact_neurons", "facts_per_neuron", "ablation_check"]

FACT_SEED = 2024  # the analysis batch is the same for every model and call


def check_fact_model(model, lang) -> None:
    """Refuse, with a sentence, a ``lang`` that is no FactLanguage, a model without MLPs, or a model whose
    vocabulary or context does not fit the language."""
    if not isinstance(lang, FactLanguage):
        raise TypeError(f"lang must be a FactLanguage (toylab.data.facts), got {type(lang).__name__}")
    if not getattr(model.cfg, "d_mlp", 0):
        raise ValueError("this model has no MLPs (d_mlp=0): it has no neurons to store facts in")
    if model.cfg.d_vocab != lang.d_vocab or model.cfg.n_ctx < lang.n_ctx:
        raise ValueError(f"the model (d_vocab={model.cfg.d_vocab}, n_ctx={model.cfg.n_ctx}) does not fit the "
                         f"language (d_vocab={lang.d_vocab}, n_ctx={lang.n_ctx})")


def fact_batch(lang: FactLanguage, batch: int = 1024, seed: int = FACT_SEED) -> torch.Tensor:
    """``[batch, n_ctx]`` sequences of ``lang`` from ``torch.Generator().manual_seed(seed)``.

    With the defaults of the ``facts-1l`` preset (96 subjects, ``p_fact = 0.5``, ``n_ctx = 16``)
    every fact occurs about 50 times in 1024 sequences."""
    if not isinstance(lang, FactLanguage):
        raise TypeError(f"lang must be a FactLanguage (toylab.data.facts), got {type(lang).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return lang.sample(batch, torch.Generator().manual_seed(seed))


def fact_tokens(lang: FactLanguage, tokens: torch.Tensor | None = None):
    """``(tokens [batch, n], mask [batch, n], idx [m])``: ``tokens`` (default :func:`fact_batch`), its fact
    positions and the fact index at each of them; refuses tokens in which some fact never occurs."""
    if not isinstance(lang, FactLanguage):
        raise TypeError(f"lang must be a FactLanguage (toylab.data.facts), got {type(lang).__name__}")
    tokens = fact_batch(lang) if tokens is None else lang.check_tokens(tokens)
    mask = lang.fact_positions(tokens)
    idx = lang.subject_index(tokens)[mask]  # [m] fact index of each fact position
    missing = torch.bincount(idx, minlength=lang.n_subjects) == 0
    if missing.any():
        raise ValueError(f"facts {torch.nonzero(missing).flatten().tolist()[:10]} never occur at a fact position "
                         "of these tokens: give more sequences (e.g. fact_batch(lang, batch=...))")
    return tokens, mask, idx


def _per_fact_mean(values: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """``values [m, ...]`` averaged over the rows of each fact ``idx [m]`` -> ``[n, ...]``."""
    sums = torch.zeros((n,) + values.shape[1:], dtype=values.dtype).index_add_(0, idx, values)
    counts = torch.bincount(idx, minlength=n).to(values.dtype)
    return sums / counts.view((n,) + (1,) * (values.ndim - 1))


@torch.no_grad()
def fact_accuracy(model, lang: FactLanguage, tokens: torch.Tensor | None = None, fwd_hooks=()) -> torch.Tensor:
    """``[S]`` float: for each fact, the fraction of its fact positions in ``tokens`` (default
    :func:`fact_batch`) where the model's argmax is the planted attribute, run with ``fwd_hooks``
    (``(name, fn)`` pairs, e.g. :func:`toylab.causal.interventions.mlp_ablation_hooks`)."""
    check_fact_model(model, lang)
    tokens, mask, idx = fact_tokens(lang, tokens)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    correct = (logits.argmax(-1)[mask] == lang.attribute_of[idx]).double()
    return _per_fact_mean(correct, idx, lang.n_subjects)


@torch.no_grad()
def subject_activations(model, lang: FactLanguage, tokens: torch.Tensor | None = None, layer: int = 0) -> torch.Tensor:
    """``[S, d_mlp]``: ``act[f, n]``, the mean of ``blocks.{layer}.mlp.hook_post[..., n]`` over the
    fact positions of subject ``s_f`` in ``tokens`` (default :func:`fact_batch`): the keys."""
    check_fact_model(model, lang)
    layer = resolve_index(layer, model.cfg.n_layers, "layer")
    tokens, mask, idx = fact_tokens(lang, tokens)
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    return _per_fact_mean(cache[name][mask].double(), idx, lang.n_subjects)


def _attribute_values(model, lang, layer) -> torch.Tensor:
    """``[d_mlp, A]``: the neuron values on the attribute logits, minus their mean over attributes."""
    v = neuron_values(model, layer)[:, lang.attributes].double()
    return v - v.mean(-1, keepdim=True)


def neuron_attributes(model, lang: FactLanguage, layer: int = 0) -> torch.Tensor:
    """``[d_mlp]`` LongTensor: the attribute token each neuron raises most, ``argmax_a v[n, a]``."""
    check_fact_model(model, lang)
    return lang.attributes[_attribute_values(model, lang, layer).argmax(-1)]


def fact_contributions(model, lang: FactLanguage, tokens: torch.Tensor | None = None, layer: int = 0) -> torch.Tensor:
    """``[d_mlp, S]``: ``c[n, f] = act[f, n] (v[n, a_f] - mean_a v[n, a])`` (module docstring): the mean
    direct effect of neuron ``n`` on fact ``f``'s attribute logit over the mean attribute logit."""
    act = subject_activations(model, lang, tokens, layer)  # [S, d_mlp]
    v = _attribute_values(model, lang, layer)  # [d_mlp, A]
    col = lang.attribute_of - lang.n_subjects - 1  # [S] column of each fact's attribute
    return act.T * v[:, col]


def fact_neurons(contributions: torch.Tensor, coverage: float = 0.5) -> list[torch.Tensor]:
    """For each fact ``f`` (a column of ``contributions [d_mlp, S]``), the fewest neurons whose
    contributions, largest first, reach ``coverage`` of ``sum_n max(c[n, f], 0)``: a list of ``S``
    LongTensors (an empty one for a fact with no positive contribution)."""
    if not isinstance(contributions, torch.Tensor) or contributions.ndim != 2 \
            or not contributions.dtype.is_floating_point:
        raise ValueError("contributions must be a float tensor [d_mlp, S] (from fact_contributions), got "
                         + (str(list(contributions.shape)) if isinstance(contributions, torch.Tensor)
                            else type(contributions).__name__))
    if not torch.isfinite(contributions).all():
        raise ValueError("contributions hold non-finite values")
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage <= 1:
        raise ValueError(f"coverage must be a number in (0, 1], got {coverage!r}")
    pos = contributions.clamp_min(0)
    vals, order = torch.sort(pos, dim=0, descending=True, stable=True)
    reached = vals.cumsum(0) >= coverage * pos.sum(0, keepdim=True) * (1 - 1e-12)
    k = reached.double().argmax(0) + 1  # first index where the cover is reached
    return [order[:int(k[f]), f] if pos[:, f].sum() > 0 else order[:0, f] for f in range(pos.shape[1])]


def facts_per_neuron(neuron_sets: list[torch.Tensor], d_mlp: int) -> torch.Tensor:
    """``[d_mlp]`` LongTensor: for each neuron, how many of the sets (one per fact, from
    :func:`fact_neurons`) it is in. Its sum is ``sum_f k_f`` (module docstring)."""
    if isinstance(d_mlp, bool) or not isinstance(d_mlp, int) or d_mlp < 1:
        raise ValueError(f"d_mlp must be a positive integer, got {d_mlp!r}")
    counts = torch.zeros(d_mlp, dtype=torch.long)
    for s in neuron_sets:
        if s.numel() and (int(s.min()) < 0 or int(s.max()) >= d_mlp):
            raise ValueError(f"a neuron set holds indices outside [0, {d_mlp})")
        counts[s] += 1
    return counts


@torch.no_grad()
def ablation_check(model, lang: FactLanguage, tokens: torch.Tensor | None = None, layer: int = 0,
                   coverage: float = 0.5, facts=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero-ablate, for each fact ``f`` of ``facts`` (default all), the neurons of
    ``fact_neurons(fact_contributions(...), coverage)[f]``, then as many neurons drawn at random
    (``torch.Generator().manual_seed(seed)``), and measure :func:`fact_accuracy`.

    Returns ``[len(facts)]`` tensors: ``facts``, ``k`` (neurons ablated), ``clean`` (fact ``f``'s
    accuracy unablated), ``own`` (``f``'s accuracy with its neurons ablated), ``others`` (the
    mean accuracy of the other facts then), ``random_own`` and ``random_others`` (the same with
    random neurons).
    """
    check_fact_model(model, lang)
    layer = resolve_index(layer, model.cfg.n_layers, "layer")
    tokens, _, _ = fact_tokens(lang, tokens)
    S, d_mlp = lang.n_subjects, model.cfg.d_mlp
    facts = torch.arange(S) if facts is None else torch.as_tensor(facts, dtype=torch.long).reshape(-1)
    if facts.numel() == 0 or int(facts.min()) < 0 or int(facts.max()) >= S:
        raise ValueError(f"facts must be indices in [0, {S}), got {facts.tolist()}")
    sets = fact_neurons(fact_contributions(model, lang, tokens, layer), coverage)
    clean = fact_accuracy(model, lang, tokens)
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.zeros(len(facts), dtype=torch.float64) for k in ("own", "others", "random_own", "random_others")}
    ks = torch.zeros(len(facts), dtype=torch.long)
    others = torch.ones(S, dtype=torch.bool)
    for i, f in enumerate(facts.tolist()):
        neurons = sets[f]
        ks[i] = len(neurons)
        others[:] = True
        others[f] = False
        rand = torch.randperm(d_mlp, generator=g)[:len(neurons)]
        for prefix, chosen in (("", neurons), ("random_", rand)):
            if len(chosen) == 0:
                acc = clean
            else:
                hooks = mlp_ablation_hooks(model, tokens, neurons=[(layer, chosen)])
                acc = fact_accuracy(model, lang, tokens, hooks)
            out[prefix + "own"][i] = acc[f]
            out[prefix + "others"][i] = acc[others].mean()
    return {"facts": facts, "k": ks, "clean": clean[facts], **out}
