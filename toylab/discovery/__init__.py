"""Circuit discovery on the edge graph: exact edge patching, attribution patching, ACDC, causal scrubbing.

- :mod:`~toylab.discovery.graph`: nodes, receiver slots, edges, circuits;
- :mod:`~toylab.discovery.metrics`: KL to the clean run, logit difference, loss on chosen positions;
- :mod:`~toylab.discovery.edge_patching`: run with edges patched, the exact effect of every edge;
"""
