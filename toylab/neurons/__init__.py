"""The MLP Part: what single neurons compute, read from their weights and activations.

=========================  ================================================================
``fourier``                the Fourier analysis of modular addition: the basis of Z_p, the
                           embedding's spectrum and key frequencies, neurons clustered by
                           frequency, logits explained by cos(w(a + b - c)), and the
                           progress measures (restricted and excluded loss, sparsity)
=========================  ================================================================
"""
