"""Full-batch training on a finite task: the loss, the evaluation and the progress measures.

Modular addition (:class:`toylab.data.modular.ModularAddition`) has a finite set of
examples, so :func:`toylab.training.train.train` trains on all of its training pairs at
every step instead of sampling sequences: the data kinds in :data:`FULL_BATCH_KINDS`
are trained this way, every other kind exactly as before. What differs:

- the loss is read at the ``=`` position only, over the ``p`` answer logits
  (the ``=`` token itself is never an answer):
  ``loss = mean_i -log softmax(logits[i, -1, :p])[c_i]`` over the training pairs;
- each evaluation (:func:`evaluate_full_batch`) records the loss and accuracy on the
  training pairs, on the held-out test pairs and on the fresh test pairs (those whose
  swap is held out too, see ``ModularAddition.fresh_test_idx``), so the history holds
  the curves of memorisation and generalisation;
- :func:`add_progress_measures` adds Nanda et al.'s progress measures to the history
  once training is over: the key frequencies are those of the final embedding, and each
  evaluation's weights (kept while training) give the restricted loss, the excluded loss
  and the Gini coefficient of the embedding's frequency norms at that step.
"""

from __future__ import annotations

import torch

from toylab.model import AttnOnlyTransformer
from toylab.neurons.fourier import embedding_spectrum, excluded_loss, gini, key_frequencies, restricted_loss

FULL_BATCH_KINDS = ("modular_addition",)


def is_full_batch(dataset) -> bool:
    """Whether ``dataset`` is trained full-batch (its ``kind`` is in :data:`FULL_BATCH_KINDS`)."""
    return getattr(dataset, "kind", None) in FULL_BATCH_KINDS


def answer_logits(model: AttnOnlyTransformer, tokens: torch.Tensor, p: int) -> torch.Tensor:
    """``[batch, p]``: the logits of the answers ``0 .. p-1`` at the last (``=``) position
    of ``tokens [batch, 3]``."""
    return model(tokens)[:, -1, :p]


def answer_loss(model: AttnOnlyTransformer, tokens: torch.Tensor, answers: torch.Tensor, p: int) -> torch.Tensor:
    """Mean cross-entropy (nats, a scalar) of ``answers [batch]`` under :func:`answer_logits`."""
    return torch.nn.functional.cross_entropy(answer_logits(model, tokens, p).float(), answers)


def training_loss(model: AttnOnlyTransformer, dataset):
    """A closure ``() -> loss`` over all the training pairs of ``dataset`` (for ``optimizer_step``)."""
    tokens, answers = dataset.split("train")
    return lambda: answer_loss(model, tokens, answers, dataset.p)


@torch.no_grad()
def evaluate_full_batch(model: AttnOnlyTransformer, dataset, step: int) -> dict:
    """The history entry of ``step``: ``train_loss``/``train_acc``, ``test_loss``/``test_acc`` and
    ``fresh_loss``/``fresh_acc`` (loss in nats, accuracy = share of pairs whose largest answer
    logit is the right one), on the training, test and fresh test pairs; ``val_loss`` is
    ``test_loss`` (the field every checkpoint lists)."""
    was_training = model.training
    model.eval()
    logits = answer_logits(model, dataset.tokens, dataset.p).float()        # [p^2, p], grid order
    entry = {"step": step}
    for name, idx in (("train", dataset.train_idx), ("test", dataset.test_idx), ("fresh", dataset.fresh_test_idx)):
        entry[f"{name}_loss"] = torch.nn.functional.cross_entropy(logits[idx], dataset.answers[idx]).item()
        entry[f"{name}_acc"] = (logits[idx].argmax(-1) == dataset.answers[idx]).double().mean().item()
    entry["val_loss"] = entry["test_loss"]
    model.train(was_training)
    return entry


@torch.no_grad()
def add_progress_measures(model: AttnOnlyTransformer, dataset, history: list[dict],
                          states: list[dict[str, torch.Tensor]]) -> list[int]:
    """Add the progress measures to ``history`` (in place: the trainer's own list) and return
    the key frequencies.

    ``states[i]`` are the weights at ``history[i]["step"]``; ``model`` holds the final ones,
    whose embedding gives the key frequencies ``keys``
    (:func:`toylab.neurons.fourier.key_frequencies`). Each entry gains
    ``restricted_loss`` (the logits kept to the key waves, over every pair),
    ``excluded_loss`` (the key waves removed, over the training pairs) and
    ``embed_gini`` (Gini of the embedding's frequency norms, ``spectrum[1:]``); the last
    entry also gains ``key_frequencies``. ``model`` ends with its final weights again.
    """
    if len(states) != len(history):
        raise ValueError(f"states must hold one state per history entry, got {len(states)} for {len(history)}")
    p = dataset.p
    final = {k: v.clone() for k, v in model.state_dict().items()}
    keys = key_frequencies(embedding_spectrum(final["W_E"], p))
    was_training = model.training
    model.eval()
    try:
        for entry, state in zip(history, states):
            model.load_state_dict(state)
            logits = answer_logits(model, dataset.tokens, p)
            entry["restricted_loss"] = restricted_loss(logits, p, keys) if keys else None
            entry["excluded_loss"] = excluded_loss(logits, p, keys, dataset.train_idx) if keys else None
            entry["embed_gini"] = gini(embedding_spectrum(state["W_E"], p)[1:])
    finally:
        model.load_state_dict(final)
        model.train(was_training)
    if history:
        history[-1]["key_frequencies"] = keys
    return keys


def first_step(history: list[dict], key: str, threshold: float, after: int = 0) -> int | None:
    """The first recorded step ``>= after`` whose ``history`` value ``key`` is at least ``threshold``.

    Rule: the smallest ``entry["step"]`` with ``entry["step"] >= after`` and
    ``entry[key] >= threshold`` (equality counts), or ``None`` if no entry gets there.
    Entries whose value is ``None`` (a progress measure with no key frequency) never count.
    E.g. ``first_step(history, "fresh_acc", 0.99)`` is the step a run grokked at.
    """
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError("history must be a list of dicts (a checkpoint's or a TrainResult's history)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    for entry in history:
        if "step" not in entry or key not in entry:
            raise ValueError(f"every history entry needs 'step' and {key!r}; got keys {sorted(entry)}")
        value = entry[key]
        if entry["step"] >= after and value is not None and value >= threshold:
            return int(entry["step"])
    return None
