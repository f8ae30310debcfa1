"""Fact features in neuron space: planted directions, an SAE's MCC against them, and the sweeps.

A model trained on a :class:`~toylab.data.facts.FactLanguage` recalls fact ``f`` at the
positions holding subject ``s_f``. Its **planted direction** in neuron space is the mean
``hook_post`` there minus the mean ``hook_post`` at the positions that hold no subject
(filler and attributes, BOS left out), where no fact is recalled::

    d_f = act[f] - mean_{x_p not a subject, p >= 1} post[p]     [d_mlp]
                                                  (act from toylab.neurons.facts.subject_activations)

(Subtracting the mean over subjects instead, ``act[f] - mean_g act[g]``, keeps only what
tells the facts apart; on the shipped model it gives neuron MCC 0.25 and SAE MCC 0.66.)

A dictionary recovers the facts if its directions match these one to one: the score is
:func:`toylab.features.metrics.mcc` (Hungarian-matched mean cosine) of the dictionary
against ``D = [d_f] [S, d_mlp]``. Single neurons are the dictionary ``I [d_mlp, d_mlp]``
(needs ``d_mlp >= S``); an SAE's is its decoder ``W_dec [d_sae, d_mlp]``
(:func:`sae_fact_mcc`, trained on ``hook_post`` at every position but BOS).

:func:`fact_report` gives every number of the key-value memory task for one seed of the
``facts-1l`` preset (seed 0 is the shipped model, other seeds are retrained, ~25 s each on
one thread); :func:`facts_sweep` trains small models at growing table sizes and counts
facts per neuron against the analytic count of :mod:`toylab.neurons.facts`.
"""

from __future__ import annotations

import dataclasses

import torch

from toylab.causal.interventions import mlp_ablation_hooks
from toylab.data import make_dataset
from toylab.data.facts import FactLanguage
from toylab.features.metrics import fraction_variance_explained, mcc, mmcs
from toylab.features.sae import ReluSAE
from toylab.features.train_sae import train_sae
from toylab.model import ModelConfig
from toylab.neurons.facts import (ablation_check, check_fact_model, fact_accuracy, fact_batch, fact_contributions,
                                  fact_neurons, fact_tokens, facts_per_neuron,
                                  subject_activations)
from toylab.training.presets import PRESETS, load_shipped
from toylab.training.train import TrainConfig, train

__all__ = ["planted_fact_directions", "neuron_rows", "neuron_fact_mcc", "sae_fact_mcc", "fact_report",
           "facts_sweep"]


def planted_fact_directions(model, lang: FactLanguage, tokens: torch.Tensor | None = None,
                            layer: int = 0) -> torch.Tensor:
    """``[S, d_mlp]`` float64: ``d_f = act[f] - mean post at positions >= 1 holding no subject`` (module docstring)."""
    tokens, _, _ = fact_tokens(lang, tokens)
    act = subject_activations(model, lang, tokens, layer)
    rows = neuron_rows(model, lang, tokens, layer).double()
    no_subject = ~lang.is_subject(tokens[:, 1:]).reshape(-1)
    return act - rows[no_subject].mean(0, keepdim=True)


@torch.no_grad()
def neuron_rows(model, lang: FactLanguage, tokens: torch.Tensor | None = None, layer: int = 0) -> torch.Tensor:
    """``[batch * (n_ctx - 1), d_mlp]`` float32: ``blocks.{layer}.mlp.hook_post`` at every position but BOS."""
    check_fact_model(model, lang)
    tokens, _, _ = fact_tokens(lang, tokens)
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name][:, 1:].reshape(-1, model.cfg.d_mlp).float()


def neuron_fact_mcc(planted: torch.Tensor) -> dict[str, float]:
    """``{"mcc", "mmcs"}`` of the neuron basis ``I [d_mlp, d_mlp]`` against ``planted [S, d_mlp]``:
    how well single neurons, one per fact, read the facts. ``mcc`` needs ``d_mlp >= S``."""
    eye = torch.eye(planted.shape[1], dtype=torch.float64)
    return {"mcc": mcc(eye, planted), "mmcs": mmcs(eye, planted)}


def sae_fact_mcc(model, lang: FactLanguage, tokens: torch.Tensor | None = None, layer: int = 0, *,
                 d_sae: int | None = None, l1_coefficient: float = 0.1, steps: int = 1500, seed: int = 0,
                 progress: bool = False) -> dict[str, float]:
    """Train a :class:`~toylab.features.sae.ReluSAE` (``d_sae`` default ``2 S``, L1 ``l1_coefficient``,
    dead latents resampled every 250 steps, ``batch 512``, ``lr 3e-3``) on :func:`neuron_rows` and score
    its decoder against :func:`planted_fact_directions`.

    Returns ``sae_mcc``, ``sae_mmcs``, ``fve`` (the SAE's fraction of variance explained) and
    ``neuron_mcc``, ``neuron_mmcs`` (:func:`neuron_fact_mcc`, on the same directions)."""
    tokens, _, _ = fact_tokens(lang, tokens)
    planted = planted_fact_directions(model, lang, tokens, layer)
    rows = neuron_rows(model, lang, tokens, layer)
    sae = ReluSAE(model.cfg.d_mlp, 2 * lang.n_subjects if d_sae is None else d_sae, l1_coefficient=l1_coefficient,
                  seed=seed)
    train_sae(sae, rows, steps=steps, batch_size=512, lr=3e-3, seed=seed, resample_every=250, progress=progress)
    D = sae.W_dec.detach()
    neurons = neuron_fact_mcc(planted)
    return {"sae_mcc": mcc(D, planted), "sae_mmcs": mmcs(D, planted),
            "fve": fraction_variance_explained(sae, rows),
            "neuron_mcc": neurons["mcc"], "neuron_mmcs": neurons["mmcs"]}


def _trained(seed: int, preset: str = "facts-1l"):
    p = PRESETS[preset]
    if seed == p.seed:
        ckpt = load_shipped(preset)
        return ckpt.model, make_dataset(ckpt.data_spec)
    once = dataclasses.replace(p.train, eval_every=p.train.steps)
    model = train(p.model, p.data, once, seed=seed, progress=False, off_probe=False).model
    return model, make_dataset(p.data)


def _summary(model, lang, tokens, coverage: float) -> dict[str, float]:
    acc = fact_accuracy(model, lang, tokens)
    no_mlp = fact_accuracy(model, lang, tokens, mlp_ablation_hooks(model, tokens, layers=[0]))
    sets = fact_neurons(fact_contributions(model, lang, tokens), coverage)
    learned = [s for s, a in zip(sets, acc.tolist()) if a >= 0.5]
    fpn = facts_per_neuron(learned, model.cfg.d_mlp).double()
    k = torch.tensor([len(s) for s in learned], dtype=torch.float64)
    return {"accuracy": float(acc.mean()), "accuracy_mlp_ablated": float(no_mlp.mean()),
            "learned": len(learned), "neurons_per_fact": float(k.mean()) if len(k) else 0.0,
            "facts_per_neuron": float(fpn.mean()), "facts_per_used_neuron":
                float(fpn[fpn > 0].mean()) if (fpn > 0).any() else 0.0,
            "max_facts_per_neuron": float(fpn.max()), "unused_neurons": int((fpn == 0).sum()),
            "monosemantic_neurons": int((fpn == 1).sum())}


def fact_report(seed: int = 0, coverage: float = 0.8, sae_seed: int = 0, sae_steps: int = 1500) -> dict[str, float]:
    """Every number of the key-value memory task for the ``facts-1l`` recipe at ``seed``
    (seed 0: the shipped checkpoint), on :func:`~toylab.neurons.facts.fact_batch`:

    ``accuracy`` and ``accuracy_mlp_ablated`` (mean over facts); with the neurons of each fact
    at ``coverage``: ``neurons_per_fact``, ``facts_per_neuron`` (mean over all neurons),
    ``facts_per_used_neuron``, ``max_facts_per_neuron``, ``unused_neurons``, ``monosemantic_neurons``;
    the ablation check's means ``ablate_own``, ``ablate_others``, ``random_own``, ``random_others``;
    and :func:`sae_fact_mcc`'s numbers.
    """
    model, lang = _trained(seed)
    tokens = fact_batch(lang)
    out = _summary(model, lang, tokens, coverage)
    r = ablation_check(model, lang, tokens, coverage=coverage)
    out.update({"ablate_own": float(r["own"].mean()), "ablate_others": float(r["others"].mean()),
                "random_own": float(r["random_own"].mean()), "random_others": float(r["random_others"].mean())})
    out.update(sae_fact_mcc(model, lang, tokens, seed=sae_seed, steps=sae_steps))
    return {"seed": seed, **out}


def facts_sweep(table_sizes=(16, 32, 64, 128), d_mlp: int = 32, seeds=(0, 1, 2), *, d_model: int = 4,
                n_attributes: int = 8, steps: int = 600, coverage: float = 0.8) -> list[dict]:
    """Facts per neuron as the table outgrows the MLP: for each table size ``N`` and seed, train a
    1-layer model (``d_model``, ``d_mlp`` ReLU neurons, one head, ``steps`` steps of the facts-1l
    optimiser settings) on ``FactLanguage(n_subjects=N, n_attributes, n_filler=7, n_ctx=16, seed)``
    and count, over the facts it learned (accuracy >= 0.5), the facts per neuron at ``coverage``.

    One dict per run: ``n_facts``, ``seed``, :func:`fact_report`'s ``accuracy``..``monosemantic_neurons``,
    and ``pigeonhole = N / d_mlp`` and ``analytic = N_learned * neurons_per_fact / d_mlp`` (the counts of
    :mod:`toylab.neurons.facts`: the second equals ``facts_per_neuron`` by the counting identity, the
    first bounds it from below once every fact has a neuron).

    ``d_model = 4`` by default so that the facts must live in the MLP: at ``d_model = 16`` (8
    attributes) the direct path ``W_E W_U`` alone kept 76-85% of the facts with the MLP ablated,
    at ``d_model = 4`` 10-28% (seeds 0-2, N = 16..128)."""
    base = PRESETS["facts-1l"].train
    tcfg = dataclasses.replace(base, steps=steps, eval_every=steps)
    rows = []
    for n in table_sizes:
        for seed in seeds:
            spec = FactLanguage(n_subjects=n, n_attributes=min(n_attributes, n), n_filler=7, n_ctx=16, seed=seed).spec
            lang = make_dataset(spec)
            cfg = ModelConfig(d_vocab=lang.d_vocab, n_ctx=16, d_model=d_model, n_layers=1, n_heads=1,
                              positional="shortformer", d_mlp=d_mlp)
            model = train(cfg, spec, tcfg, seed=seed, progress=False, off_probe=False).model
            s = _summary(model, lang, fact_batch(lang, batch=max(1024, 12 * n)), coverage)
            s.update(n_facts=n, seed=seed, pigeonhole=n / d_mlp,
                     analytic=s["learned"] * s["neurons_per_fact"] / d_mlp)
            rows.append(s)
    return rows
