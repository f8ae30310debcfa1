"""Reading the weights (Part I of the book, chapters 1-4): circuits, composition, copying, head scores.

=====================  =============================================================
``weights``            OV and QK circuits, full circuits, Q/K/V-composition circuits,
                       virtual weights and the path expansion, skip-trigram triples
``composition``        Q/K/V composition scores with random baselines
``copying``            eigenvalue copying scores, ICL score
``scores``             head detector scores from attention patterns (previous-token,
                       duplicate-token, induction)
``report``             ``head_report``: every head classified by its scores
``viewer``             the offline interactive attention viewer
``folding``            ``fold_layer_norm``, ``center_writing_weights``, ``center_unembed``:
                       what LayerNorm changes, folded into the weights (exactly)
=====================  =============================================================

Import the modules themselves, e.g. ``from toylab.circuits.weights import OV, QK``.
"""
