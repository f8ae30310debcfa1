"""Testing circuits causally (Part II of the book, chapter 5): attribution, ablation, patching.

=====================  =============================================================
``attribution``        residual decomposition, direct logit attribution, logit lens
``interventions``      zero, mean and resample ablations; term importance
``patching``           activation patching and path patching
``evaluation``         off-probe evaluations of the induction models (recorded in
                       every training history)
=====================  =============================================================

Import the modules themselves, e.g. ``from toylab.causal.patching import patch``.
"""
