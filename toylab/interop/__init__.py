"""Crossing over: the lab's models and SAEs in the formats of TransformerLens and SAELens.

TransformerLens is an optional extra (``pip install -e '.[transformer-lens]'``, or the
``.venv-tl`` environment that ``make test-peer`` builds): it is imported only when a
conversion needs it, never when this package is imported. SAELens is not needed at all:
its files are written and read here.

Modules:

- :mod:`toylab.interop.transformer_lens`: ``to_transformer_lens(model)`` (a lab model as a
  ``HookedTransformer`` with the same logits) and ``from_transformer_lens(tl_model)``
  (back, refusing what the lab cannot represent).
- :mod:`toylab.interop.saelens`: ``save_saelens(sae, folder)`` and ``load_saelens(folder)``,
  a ReLU or TopK SAE as SAELens's ``cfg.json`` and ``sae_weights.safetensors`` (with a
  small safetensors writer and reader of its own).
"""
