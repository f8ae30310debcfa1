"""Chapter 11 — MLPs and neurons: key-value memories. Reference answers.

An MLP layer is a sum over neurons: each neuron's input weights are a key
matched against the residual stream, its output weights a value written back
in proportion to the match. These exercises read keys, values and neuron DLA
off a model that stores a planted fact table, find the neurons of a fact,
count facts per neuron, and ask you to decide when single neurons are the
right unit of analysis.
Grade your own answers in ``exercises/ch11_mlps_and_neurons.py`` with
``toylab grade --chapter 11``.
"""

from __future__ import annotations

import torch

from toylab.features.metrics import mcc


def mlp_as_memory(x: torch.Tensor, W_in: torch.Tensor, b_in: torch.Tensor, W_out: torch.Tensor,
                  b_out: torch.Tensor) -> torch.Tensor:
    """A ReLU MLP layer written as a key-value memory.  ★  (about 10 min)

    Args:
        x: ``[batch, d_model]`` the MLP's inputs (row vectors); not modified.
        W_in: ``[d_model, d_mlp]`` (column ``n`` is neuron ``n``'s key);
        b_in: ``[d_mlp]``;
        W_out: ``[d_mlp, d_model]`` (row ``n`` is neuron ``n``'s value);
        b_out: ``[d_model]``.

    Returns:
        ``[batch, d_model]``: ``sum_n ReLU(x . W_in[:, n] + b_in[n]) W_out[n] + b_out``.

    Hint: the sum over neurons of activation times value is one matrix product.
    """
    return torch.relu(x @ W_in + b_in) @ W_out + b_out


def neuron_top_attribute(W_out: torch.Tensor, W_U: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """The attribute each neuron's value raises most.  ★  (about 10 min)

    Args:
        W_out: ``[d_mlp, d_model]`` the output weights (the values); not modified.
        W_U: ``[d_model, d_vocab]`` the unembedding; not modified.
        attributes: ``[A]`` LongTensor, the attribute token ids.

    Returns:
        ``[d_mlp]`` LongTensor: for each neuron ``n``, the attribute *token id*
        ``a`` in ``attributes`` with the largest ``(W_out[n] @ W_U)[a]`` (ties:
        the first in ``attributes``). Only attribute tokens compete.

    Hint: the value in token space is ``W_out @ W_U`` ``[d_mlp, d_vocab]``;
    keep its attribute columns, then map the argmax back to token ids.
    """
    return attributes[(W_out @ W_U)[:, attributes].argmax(-1)]


def mean_neuron_dla(post: torch.Tensor, W_out: torch.Tensor, W_U: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Neuron DLA on the target logit, averaged over positions.  ★★  (about 15 min)

    Args:
        post: ``[m, d_mlp]`` the neurons' activations (``hook_post``) at ``m``
            positions; not modified.
        W_out: ``[d_mlp, d_model]``; W_U: ``[d_model, d_vocab]``; not modified.
        targets: ``[m]`` LongTensor, the token to be predicted at each position.

    Returns:
        ``[d_mlp]`` float: ``dla[n] = (1 / m) sum_i post[i, n] (W_out[n] . W_U[:, targets[i]])``,
        each neuron's mean direct effect on the logit of the right next token
        (exact for a model without a final LayerNorm).

    Hint: ``W_out @ W_U[:, targets]`` is ``[d_mlp, m]``: the value of every
    neuron on every position's target.
    """
    return (post.T * (W_out @ W_U[:, targets])).mean(-1)


def fact_neuron_set(contributions: torch.Tensor, coverage: float) -> torch.Tensor:
    """The neurons of one fact: the fewest that cover a share of its contribution.  ★★  (about 15 min)

    Args:
        contributions: ``[d_mlp]`` float, each neuron's contribution ``c[n]`` to
            one fact (e.g. its mean DLA on the fact's logit margin); not modified.
        coverage: a share in ``(0, 1]``.

    Returns:
        ``[k]`` LongTensor of neuron indices, largest contribution first (equal
        contributions: the lower index first): the shortest such list whose
        contributions sum to at least ``coverage * sum_n max(c[n], 0)``. Negative
        contributions count as 0 in that total. If no neuron contributes
        positively, an empty LongTensor.

    Hint: sort (stably), take a cumulative sum, and find the first place where it
    reaches the target. "At least" includes equality.
    """
    pos = contributions.clamp_min(0)
    total = float(pos.sum())
    if total <= 0:
        return torch.zeros(0, dtype=torch.long)
    vals, order = torch.sort(pos, descending=True, stable=True)
    k = int((vals.cumsum(0) < coverage * total * (1 - 1e-12)).sum()) + 1
    return order[:min(k, len(order))]


def count_facts_per_neuron(neuron_sets: list[torch.Tensor], d_mlp: int) -> torch.Tensor:
    """Facts per neuron.  ★  (about 5 min)

    Args:
        neuron_sets: one LongTensor of neuron indices per fact (the neurons of
            that fact, no index twice in a set); not modified.
        d_mlp: the number of neurons.

    Returns:
        ``[d_mlp]`` LongTensor: for each neuron, the number of sets it is in.
        Neurons in no set count 0.

    Hint: start from zeros and add one for every index of every set.
    """
    counts = torch.zeros(d_mlp, dtype=torch.long)
    for s in neuron_sets:
        counts[s] += 1
    return counts


def predict_facts_per_neuron(fpn: torch.Tensor, n_facts: int, n_new: int) -> tuple[float, float]:
    """The counting law: facts per neuron at a larger table.  ★★  (about 10 min)

    Every (neuron, fact) pair is counted once on each side of
    ``sum_n fpn[n] = sum_f k_f`` (``k_f`` the neurons of fact ``f``).

    Args:
        fpn: ``[d_mlp]`` the facts per neuron measured with a table of ``n_facts``
            facts (zeros included for unused neurons); not modified.
        n_facts: the number of facts ``N`` of that table.
        n_new: a new table size ``N'``.

    Returns:
        ``(kbar, predicted)``: ``kbar`` the mean number of neurons per fact
        implied by the counts, and ``predicted`` the mean facts per neuron (over
        all ``d_mlp`` neurons) at ``N'`` facts if ``kbar`` stays the same:
        ``N' kbar / d_mlp``.

    Hint: the sum of ``fpn`` counts every (neuron, fact) pair; divide by the
    facts for ``kbar``, and average over all the neurons, used or not.
    """
    kbar = float(fpn.double().sum()) / n_facts
    return kbar, n_new * kbar / fpn.numel()


def ablating_neuron_breaks(contributions: torch.Tensor, margins: torch.Tensor,
                           neuron: int) -> tuple[torch.Tensor, bool, float]:
    """Judgement: which facts does a neuron serve, and does zeroing it alone break one?  ★★★  (about 20 min)

    Judge by the direct effect: zeroing neuron ``n`` removes ``c[n, f]`` from fact
    ``f``'s logit margin, and the fact breaks if its margin no longer stays
    positive.

    Args:
        contributions: ``[d_mlp, S]``: ``c[n, f]``, neuron ``n``'s contribution
            to fact ``f``'s logit margin; not modified.
        margins: ``[S]``: each fact's clean logit margin (its attribute's logit
            minus the best other logit); a fact with margin ``<= 0`` is already
            wrong and cannot break; not modified.
        neuron: the neuron ``n``.

    Returns:
        ``(served, breaks, ratio)``:

        * ``served``: LongTensor of the facts with ``c[n, f] > 0``, largest
          contribution first (ties: lower index first);
        * ``ratio``: the largest ``c[n, f] / margins[f]`` over the facts with
          ``margins[f] > 0`` (``0.0`` if ``n`` serves none of them);
        * ``breaks``: ``ratio >= 1`` (the margin would drop to zero or below).

    Hint: the neuron's largest contribution does not decide it: a fact it helps
    a lot may have margin to spare, one it helps a little may not.
    """
    c = contributions[neuron].double()
    m = margins.double()
    vals, order = torch.sort(c, descending=True, stable=True)
    served = order[vals > 0]
    ok = (m > 0) & (c > 0)
    ratio = float((c[ok] / m[ok]).max()) if ok.any() else 0.0
    return served, ratio >= 1.0, ratio


def better_unit(planted: torch.Tensor, W_dec: torch.Tensor) -> tuple[str, float, float]:
    """Judgement: single neurons or SAE latents, which read the facts better?  ★★  (about 15 min)

    Args:
        planted: ``[S, d_mlp]`` the facts' planted directions in neuron space
            (``S <= d_mlp``); not modified.
        W_dec: ``[d_sae, d_mlp]`` an SAE's decoder rows (``d_sae >= S``); not modified.

    Returns:
        ``(choice, neuron_mcc, sae_mcc)``: the MCC
        (:func:`toylab.features.metrics.mcc`, signed cosines, one-to-one
        matching) of the neuron basis (the identity ``[d_mlp, d_mlp]``) and of
        ``W_dec`` against ``planted``; ``choice`` is ``"sae"`` if the SAE's MCC is
        higher, else ``"neurons"`` (a tie goes to the simpler unit, the neurons).

    Hint: an SAE is not better by construction: when the model's facts are
    aligned with its neurons (a privileged basis), neurons win.
    """
    eye = torch.eye(planted.shape[1], dtype=planted.dtype)
    n, s = mcc(eye, planted), mcc(W_dec.to(planted.dtype), planted)
    return ("sae" if s > n else "neurons"), n, s
