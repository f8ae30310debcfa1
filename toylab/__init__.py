"""toylab: a from-scratch lab for the mechanistic interpretability of attention-only transformers."""

__version__ = "0.1.0"
