"""Neurons (the MLP Part of the book): what single MLP neurons read, write and compute.

=====================  =============================================================
``kv``                 the key-value view of an MLP layer: input weights as keys
                       (which tokens and positions fire a neuron, its top activating
                       inputs over a dataset), output weights as values (which logits
                       it raises, ``W_out[n] @ W_U``)
``fourier``            the Fourier analysis of modular addition: the basis of Z_p, the
                       embedding's spectrum and key frequencies, neurons clustered by
                       frequency, logits explained by cos(w(a + b - c)), the
                       progress measures (restricted and excluded loss, sparsity),
                       and the key waves taken out of an embedding (an ablation)
``facts``              which neurons store which facts of a planted fact table
                       (:class:`toylab.data.facts.FactLanguage`): keys, values,
                       per-fact contributions, facts per neuron, the ablation check
=====================  =============================================================

Neuron DLA (a neuron's activation times its output weights times ``W_U``) is
:func:`toylab.causal.attribution.neuron_dla`; ablating and patching neurons are
:func:`toylab.causal.interventions.ablate_mlps` and :func:`toylab.causal.patching.patch`
(``"post"`` with ``neuron=``). Import the modules themselves, e.g.
``from toylab.neurons.kv import neuron_values``.
"""
