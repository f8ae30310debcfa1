"""Datasets with known rules, for checking what trained models learned against ground truth.

Every dataset has ``d_vocab``, ``n_ctx``, ``sample(batch_size, generator) -> [batch, n_ctx]``
(token 0 = BOS, at position 0 only; ``InductionData`` with ``p_bos < 1`` starts some
sequences with an ordinary token instead; ``ModularAddition``'s ``[a, b, =]`` has no BOS)
and a JSON-able ``spec`` that :func:`make_dataset` turns back into an identical dataset.

=================================  ================================================================
``BigramLanguage``                sparse random Markov chain (``kind = "bigram"``)
``SkipTrigramLanguage``           bigram background + planted rules ``A ... B -> C`` (``"skip_trigram"``)
``InductionData``                 random tokens that repeat, with or without BOS (``"induction"``)
``TextData``                      character windows of stdlib docstrings (``"text"``)
``TextWithRepeatsData``           text windows with a copied segment (``"text_repeats"``)
``ModularAddition``               every pair ``[a, b, =]`` -> ``(a + b) mod p``, no BOS (``"modular_addition"``)
``FactLanguage``                  filler with planted fact pairs ``subject -> attribute`` (``"facts"``)
``TopicInductionData``            induction under a topic token that biases the noise (``"topic_induction"``)
``InductionSkipTrigramMixture``   induction rows and skip-trigram rows mixed (``"induction_skiptrigram"``)
``MajorityData``                  each sequence favours one token; only all counts tell which (``"majority"``)
=================================  ================================================================
"""

from __future__ import annotations

from typing import Any, Union

from toylab.data.bigram import BOS, BigramLanguage
from toylab.data.facts import FactLanguage
from toylab.data.majority import MajorityData
from toylab.data.mixture import InductionSkipTrigramMixture
from toylab.data.induction import (InductionBatch, InductionData, induction_targets, probe_half_len,
                                   repeated_tokens, repeated_tokens_with_gap)
from toylab.data.modular import ModularAddition
from toylab.data.skip_trigram import SkipTrigramLanguage
from toylab.data.text import CharTokenizer, TextData, corpus_fingerprint, load_corpus
from toylab.data.text_repeats import TextWithRepeatsData
from toylab.data.topic_induction import TopicInductionData

Dataset = Union[BigramLanguage, SkipTrigramLanguage, InductionData, TextData,
                TextWithRepeatsData, ModularAddition,
                FactLanguage, TopicInductionData, InductionSkipTrigramMixture, MajorityData]

#: ``spec["kind"]`` -> dataset class.
DATASETS: dict[str, type] = {
    cls.kind: cls for cls in (BigramLanguage, SkipTrigramLanguage, InductionData, TextData,
                              TextWithRepeatsData, ModularAddition,
                              FactLanguage, TopicInductionData, InductionSkipTrigramMixture, MajorityData)
}


def make_dataset(spec: dict[str, Any]) -> Dataset:
    """Rebuild a dataset from its ``.spec``: same rules, bit-identical samples.

    Raises:
        ValueError: if ``spec`` is not a dict, its ``"kind"`` is unknown (the known
            kinds are listed), or a field is missing, unexpected or invalid.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"make_dataset needs a spec dict with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {sorted(DATASETS)}")
    return DATASETS[kind].from_spec(spec)


__all__ = [
    "BOS", "BigramLanguage", "CharTokenizer", "DATASETS", "Dataset", "FactLanguage", "InductionBatch",
    "InductionData", "ModularAddition", "SkipTrigramLanguage", "TextData", "TextWithRepeatsData", "corpus_fingerprint",
    "induction_targets", "load_corpus", "make_dataset", "probe_half_len", "repeated_tokens",
    "repeated_tokens_with_gap",
]
