"""Training: seeded runs on the lab's own data, checkpoints, and the canonical presets.

=====================  =============================================================
``train``              ``TrainConfig``, ``train``: seeded, deterministic training runs
``full_batch``         full-batch training (modular addition), progress measures
``head_dropout``       one last-layer head zeroed per sequence: heads that can each do the job
``optim``              torch's Adam/AdamW/LBFGS without the one-off compiler import
``allocator``          ``reuse_freed_memory``: keep glibc from faulting in fresh pages every step
``checkpoint``         self-checking checkpoints, loaded with ``weights_only=True``
``presets``            the canonical models, their recipes, ``load_model`` for the shipped ones
``progress``           the one-line progress bar of every long command
=====================  =============================================================

Chapter 0 teaches this Part. It sits above the analysis Parts in the import order,
because every run records the off-probe evaluations of :mod:`toylab.causal.evaluation`.
Import the modules themselves, e.g. ``from toylab.training.presets import load_model``.
"""
