"""Features: superposition toy models, sparse autoencoders, probes and steering.

=====================  =============================================================
``tms``                Toy Models of Superposition; planted-feature synthetic data
``sae``                the SAE's maps, the ReLU + L1 SAE, resampling dead latents
``topk``               the TopK SAE with the AuxK dead-latent loss
``train_sae``          gather activations at a hook, train, save and load SAEs
``metrics``            L0, variance explained, CE loss recovered, dead/dense, MMCS, MCC
``ground_truth``       the known feature directions inside the lab's models
``fact_features``      planted fact directions in neuron space (a FactLanguage model), the
                       MCC of single neurons and of an SAE against them, the facts-per-neuron
                       sweep and the key-value memory task's report
``probes``             linear (softmax) probes, control tasks and selectivity
``steering``           activation addition and its exact logit effect
``checks``             the argument checks the modules above share (one sentence per mistake)
=====================  =============================================================

Import the modules themselves, e.g. ``from toylab.features import sae, metrics``.

Bad input (DESIGN.md): every public function here checks its arguments with
``checks`` and refuses NaN and inf where they enter (activations, latents, weights
read from a file, steering vectors and coefficients, hyperparameters); no function of
this package lets a non-finite value propagate into its result. Training that
diverges (a non-finite loss) stops with an error at the step where it happens.
"""
