"""Circuit discovery on the edge graph: exact edge patching, attribution patching, ACDC, causal scrubbing.

- :mod:`~toylab.discovery.graph`: nodes (embeddings, heads, MLPs), receiver slots, edges, circuits;
- :mod:`~toylab.discovery.metrics`: KL to the clean run, logit difference, loss on chosen positions;
- :mod:`~toylab.discovery.edge_patching`: run with edges patched, the exact effect of every edge;
- :mod:`~toylab.discovery.attribution_patching`: AtP (both linearisations), the AtP* QK fix, EAP, EAP-IG;
- :mod:`~toylab.discovery.acdc`: ACDC at a threshold, and threshold sweeps;
- :mod:`~toylab.discovery.subnetwork_probing`: learned hard-concrete edge masks (an ACDC baseline);
- :mod:`~toylab.discovery.roc`: TPR/FPR, ROC curves and AUC against a reference circuit, Spearman and top-k recall;
- :mod:`~toylab.discovery.figures`: drawings of the edge graph and of ROC curves;
- :mod:`~toylab.discovery.reference`: reference circuits derived from a model's detectors and weights;
- :mod:`~toylab.discovery.scrubbing`: causal scrubbing of hypotheses by treeified resampling.
"""
