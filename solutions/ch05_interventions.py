"""Chapter 5 — interventions: testing circuits causally. Reference answers.

Reading weights tells us what a head *could* do; an intervention tells us what
it *does*: replace an activation (by zero, a mean, or its value on another
prompt), run the model on, and measure how a metric moves. Grade your own
answers in ``exercises/ch05_interventions.py`` with ``toylab grade --chapter 5``.
"""

from __future__ import annotations

import torch


def zero_ablation_hook(head: int):
    """A hook that zero-ablates one head of a layer.  ★  (about 5 min)

    Attach it to ``blocks.{l}.attn.hook_z``, whose activation is
    ``z [batch, pos, n_heads, d_head]`` (each head's mixed values, before
    ``W_O``)::

        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_ablation_hook(0))])

    Args:
        head: the head ``h`` to ablate.

    Returns:
        A function ``fn(z, hook) -> z'`` with ``z'[:, :, h] = 0`` and every
        other head unchanged. Do not modify ``z`` in place: return a new tensor.

    Hint: ``z.clone()``, then assign to the slice of head ``h``. Zeroing
    ``z[:, :, h]`` removes the head's output ``z_h W_O^h`` from the residual
    stream, exactly as if ``W_O^h`` were zero.
    """
    def fn(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0.0
        return z
    return fn


def mean_ablation_hook(reference_z: torch.Tensor, head: int):
    """A hook that mean-ablates one head: its output becomes its average on a reference batch.  ★★  (about 10 min)

    Zero is an odd value for a head that never outputs zero; the mean output
    over a reference batch keeps the "typical" part of the signal (e.g. what
    the head writes at every position regardless of the tokens) and removes
    only what depends on the particular sequence.

    Args:
        reference_z: ``[batch_ref, pos, n_heads, d_head]``, the layer's ``z``
            cached on a reference batch of the same length as the ablated run.
        head: the head ``h`` to ablate.

    Returns:
        A hook ``fn(z, hook) -> z'`` for ``hook_z`` with, for every sequence ``b``::

            z'[b, p, h] = mean_{b'} reference_z[b', p, h]     (a separate mean per position p)

        and every other head unchanged; ``z`` itself is not modified.

    Hint: take the mean over dim 0 once, outside the hook; inside, broadcast it
    over the batch of ``z`` (which may have a different batch size).
    """
    mean = reference_z[:, :, head].mean(0)  # [pos, d_head]

    def fn(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = mean
        return z
    return fn


def normalised_effect(m_patched: float, m_clean: float, m_corrupted: float) -> float:
    """Put a patched run's metric on the scale "0 = corrupted run, 1 = clean run".  ★  (about 5 min)

    Args:
        m_patched, m_clean, m_corrupted: the metric (a float) on the patched,
            clean and corrupted runs.

    Returns:
        A Python float::

            (m_patched - m_corrupted) / (m_clean - m_corrupted)

        It works for metrics where smaller is better (a loss, a rank) as well.
        Raise ``ValueError`` if ``m_clean == m_corrupted`` (there is nothing to
        normalise by).

    Hint: one line, plus the check.
    """
    m_patched, m_clean, m_corrupted = float(m_patched), float(m_clean), float(m_corrupted)
    if m_clean == m_corrupted:
        raise ValueError("clean and corrupted runs score the same; the normalised effect is undefined")
    return (m_patched - m_corrupted) / (m_clean - m_corrupted)


def logit_difference(logits: torch.Tensor, tokens: torch.Tensor, incorrect_tokens: torch.Tensor,
                     positions) -> float:
    """The mean logit difference between the right and a wrong next token.  ★★  (about 10 min)

    Args:
        logits: ``[batch, pos, d_vocab]``; the logits at position ``p`` predict
            the token at ``p + 1``.
        tokens: ``[batch, pos]`` the sequence whose next tokens are correct.
        incorrect_tokens: ``[batch, pos]`` a sequence whose next tokens are the
            wrong answers (e.g. the corrupted prompt).
        positions: a list of logit positions ``p`` (each in ``0 .. pos - 2``) to average over.

    Returns:
        A Python float::

            mean_{b, p in positions} ( logits[b, p, tokens[b, p + 1]] - logits[b, p, incorrect_tokens[b, p + 1]] )

    Hint: ``logits.gather(-1, index[..., None])`` picks one logit per
    ``(b, p)``; remember the shift by one between a logit and its target.
    """
    pos = torch.as_tensor(positions, dtype=torch.long)
    lg = logits[:, pos]  # [batch, n, d_vocab]
    right = lg.gather(-1, tokens[:, pos + 1][..., None].long())
    wrong = lg.gather(-1, incorrect_tokens[:, pos + 1][..., None].long())
    return float((right - wrong).mean())


def denoise_one_cell(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, layer: int, head: int,
                     position: int, metric) -> float:
    """Activation patching, one cell: paste one head's clean ``z`` at one position into the corrupted run.  ★★  (about 15 min)

    Args:
        model: an ``AttnOnlyTransformer``.
        clean_tokens, corrupted_tokens: ``[batch, pos]``, same shape.
        layer, head, position: the cell ``z[:, position, head]`` of ``blocks.{layer}.attn.hook_z``.
        metric: a function ``logits [batch, pos, d_vocab] -> scalar``.

    Returns:
        ``float(metric(patched_logits))``, the raw (not normalised) metric of
        the run on ``corrupted_tokens`` in which that one cell is replaced by
        its value on the clean run (the same sequence ``b`` of the clean batch)::

            z_patched[b, position, head] = z_clean[b, position, head]

        Everything downstream of the cell is recomputed from the patched value.

    Hint: ``model.run_with_cache(clean_tokens, names_filter=name)`` for the
    clean value, then ``model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, fn)])``.
    """
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(clean_tokens, names_filter=name)
    clean_z = cache[name]

    def fn(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, position, head] = clean_z[:, position, head]
        return z
    return float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, fn)])))


def head_dla(model, cache, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Direct logit attribution of one head: its contribution to the logit of the correct next token.  ★★  (about 10 min)

    Without MLPs or a final LayerNorm the logits are a sum, one term per
    component: ``logits = (embed + sum_{l,h} result_{l,h}) W_U``. So head
    ``(l, h)`` adds ``result_{l,h}[b, p] . W_U[:, t]`` to the logit of token ``t``.

    Args:
        model: an ``AttnOnlyTransformer`` without LayerNorm.
        cache: an ``ActivationCache`` of ``model`` on ``tokens`` holding
            ``cache["z", layer]`` ``[batch, pos, n_heads, d_head]``.
        tokens: ``[batch, pos]``.
        layer, head: the head.

    Returns:
        ``[batch, pos - 1]``::

            dla[b, p] = (z[b, p, h] @ W_O^h) . W_U[:, tokens[b, p + 1]]

        with ``W_O^h = model.blocks[layer].attn.W_O[head]`` ``[d_head, d_model]``
        and ``W_U = model.W_U`` ``[d_model, d_vocab]``. Summed over every head
        and the embedding term, these give back the logit of the correct token.

    Hint: ``W_U[:, tokens[:, 1:]]`` has shape ``[d_model, batch, pos - 1]``;
    or pick rows of ``W_U.T``. Drop the last position of the result.
    """
    result = cache["z", layer][:, :, head] @ model.blocks[layer].attn.W_O[head]  # [batch, pos, d_model]
    directions = model.W_U.T[tokens[:, 1:]]  # [batch, pos - 1, d_model]
    return (result[:, :-1] * directions).sum(-1)


def logit_lens_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    """The logit lens: the probability of the correct next token read off the stream after each layer.  ★★  (about 10 min)

    Decode the residual stream as if the model stopped there: ``softmax(x W_U)``.

    Args:
        model: an ``AttnOnlyTransformer`` without LayerNorm.
        tokens: ``[batch, pos]``.

    Returns:
        ``[n_layers + 1, batch, pos - 1]``: entry ``[i, b, p]`` is
        ``softmax(x_i[b, p] W_U)[tokens[b, p + 1]]``, where ``x_0`` is the
        stream before the first layer (``blocks.0.hook_resid_pre``: the token
        embedding, plus ``W_pos`` if positions are learned) and ``x_{l+1}`` the
        stream after layer ``l`` (``blocks.{l}.hook_resid_post``). The last
        entry is the model's own output distribution.

    Hint: ``model.run_with_cache`` gives every stream at once; stack them,
    multiply by ``W_U``, softmax, and ``gather`` the next tokens.
    """
    L = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    x = torch.stack([cache[n] for n in names])[:, :, :-1]  # [L + 1, batch, pos - 1, d_model]
    probs = torch.softmax(x @ model.W_U, dim=-1)
    target = tokens[:, 1:].long().expand(L + 1, -1, -1)
    return probs.gather(-1, target[..., None])[..., 0]


def path_patched_keys(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                      sender: tuple[int, int], receiver: tuple[int, int]) -> torch.Tensor:
    """Path patching: the keys a receiver head computes when only the sender's path into them is corrupted.  ★★★  (about 20 min)

    The receiver's key input is the clean residual stream before its layer,
    with the sender's clean output swapped for the sender's output on the
    corrupted prompt (every other path stays clean)::

        x'  = resid_pre[l_r]_clean - result_s_clean + result_s_corrupted,    result_s = z_s W_O^s
        k'  = (x' + W_pos) W_K^r      (shortformer: W_pos is added to the query/key input of every layer)

    Args:
        model: an ``AttnOnlyTransformer`` without LayerNorm.
        clean_tokens, corrupted_tokens: ``[batch, pos]``, same shape.
        sender: ``(l_s, h_s)``; receiver: ``(l_r, h_r)`` with ``l_r > l_s``.

    Returns:
        ``[batch, pos, d_head]``: the receiver's patched keys ``k'``. Add
        ``W_pos[:pos]`` only when ``model.cfg.positional == "shortformer"``
        (with ``"learned"`` it is already in the stream; with ``"none"`` there is none).

    Hint: cache ``blocks.{l_s}.attn.hook_z`` on both runs and
    ``blocks.{l_r}.hook_resid_pre`` on the clean run; ``W_K^r =
    model.blocks[l_r].attn.W_K[h_r]`` ``[d_model, d_head]``.
    """
    (ls, hs), (lr, hr) = sender, receiver
    z_name, r_name = f"blocks.{ls}.attn.hook_z", f"blocks.{lr}.hook_resid_pre"
    _, clean = model.run_with_cache(clean_tokens, names_filter=[z_name, r_name])
    _, corr = model.run_with_cache(corrupted_tokens, names_filter=[z_name])
    W_O = model.blocks[ls].attn.W_O[hs]
    x = clean[r_name] + (corr[z_name][:, :, hs] - clean[z_name][:, :, hs]) @ W_O
    if model.cfg.positional == "shortformer":
        x = x + model.W_pos[: clean_tokens.shape[1]]
    return x @ model.blocks[lr].attn.W_K[hr]


def corrupt_for_induction(tokens: torch.Tensor, half_len: int, d_vocab: int,
                          generator: torch.Generator) -> torch.Tensor:
    """Design the corrupted prompt for an induction experiment.  ★★  (about 15 min)

    An experiment design, graded by what the model does with it. You want to
    patch activations from a clean probe ``[BOS, r, r]`` into a corrupted one,
    and measure the logit difference on the second copy. A good corrupted
    prompt

    * breaks what you study: induction must no longer predict the second copy
      (on the grader's model the repeated-half loss must rise by at least
      2 nats);
    * changes nothing else the metric compares: the tokens of the second copy
      (the destinations, whose logits the metric reads) and BOS stay exactly
      as they are, so clean and corrupted logits are compared on the same
      targets;
    * is reproducible: all randomness comes from ``generator``.

    Args:
        tokens: ``[batch, 1 + 2 * half_len]`` probes ``[BOS, r, r]`` (not modified).
        half_len: the half length.
        d_vocab: the vocabulary size (ordinary tokens are ``1 .. d_vocab - 1``).
        generator: the only source of randomness.

    Returns:
        ``[batch, 1 + 2 * half_len]`` LongTensor, the corrupted prompts.

    Hint: which positions does induction read from, and which does the metric
    read? Change only the first kind.
    """
    out = tokens.clone()
    b = tokens.shape[0]
    out[:, 1:1 + half_len] = torch.randint(1, d_vocab, (b, half_len), generator=generator)
    return out


def pattern_preserving_ablation(model, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Zero-ablate one head while every attention pattern stays at its clean value.  ★★  (about 15 min)

    A head reaches later layers in two ways: through the values it writes
    (read by later OV circuits) and through later heads' attention patterns
    (read by their queries and keys). The pattern-preserving ablation of
    Olsson et al. keeps the second way shut: every attention pattern of the
    ablated run is overwritten by its value on the clean run, so the ablated
    head can change the output only through values.

    Args:
        model: an ``AttnOnlyTransformer`` (any number of layers and heads).
        tokens: ``[batch, pos]`` token ids. Not modified.
        layer, head: the head to zero-ablate (``z[:, :, head] = 0`` on
            ``blocks.{layer}.attn.hook_z``).

    Returns:
        ``[batch, pos, d_vocab]`` the logits of the run in which the head is
        zero-ablated and *every* layer's ``hook_pattern`` is replaced by its
        value on the clean run of ``tokens``. Leave the model as you found it
        (no hooks left attached, weights unchanged).

    Hint: two runs. Which patterns could the ablation change at all, and where
    must their clean values come from?
    """
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)      # the clean patterns

    def freeze(name):
        return lambda pattern, hook: cache[name]

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z
    hooks = [(n, freeze(n)) for n in names] + [(f"blocks.{layer}.attn.hook_z", ablate)]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def heads_acting_through_attention(model, tokens: torch.Tensor, half_len: int) -> set[tuple[int, int]]:
    """Which heads matter only through the attention patterns of later heads?  ★★  (about 15 min)

    A judgement exercise: design the experiment and choose the thresholds.
    Some heads matter for the output through what they *write into values*
    (an induction head's copied token); others only by steering where later
    heads look (a previous-token head feeding the keys of induction heads,
    K-composition). Decide, for every head of ``model``, whether it is one of
    the second kind on repeated-token probes: knocking it out must clearly
    hurt the prediction of the second copy, and nearly all of that harm must
    disappear when the attention patterns are kept at their clean values.
    How large a harm counts as "clearly", and how much of it must vanish, is
    your call; the grader uses models whose answer is clear-cut (and its own
    thresholds far from the borderline), on probes of several half lengths.

    Args:
        model: a two-layer ``AttnOnlyTransformer`` trained on repeated tokens
            (the shipped ``induction-2l`` or a variant of it). Not modified.
        tokens: ``[batch, 1 + 2 * half_len]`` probes ``[BOS, r, r]``. Not modified.
        half_len: the half length.

    Returns:
        A set of ``(layer, head)`` pairs of Python ints (possibly empty).

    Hint: measure the mean loss on the second copy (the logits at positions
    ``half_len + 1 .. 2 * half_len - 1``), clean and after ablating each head
    twice: normally and with the patterns frozen. ``toylab.causal.interventions``
    may do the runs for you, or your ``pattern_preserving_ablation``.
    """
    from toylab.causal.interventions import ablate_heads, make_metric

    loss = make_metric("loss", tokens, list(range(half_len + 1, 2 * half_len)))
    clean = float(loss(model(tokens)))
    found = set()
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            normal = float(ablate_heads(model, tokens, [(l, h)], metric=loss)) - clean
            frozen = float(ablate_heads(model, tokens, [(l, h)], freeze_patterns=True, metric=loss)) - clean
            if normal > 0.5 and frozen < 0.2 * normal:   # clearly matters; 80 % of that goes with the patterns
                found.add((l, h))
    return found


def resample_ablate_head(model, tokens: torch.Tensor, layer: int, head: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ablation: give one head the output it had on *another* sequence of the batch.  ★★  (about 15 min)

    Zero and mean ablation replace a head's output by something it never
    outputs on a real prompt. Resample ablation keeps the output realistic,
    but carrying the wrong information: sequence ``b`` receives the head's
    ``z`` from sequence ``source[b]`` of the same batch, at the same
    positions, and no sequence may get its own ``z`` back.

    Args:
        model: an ``AttnOnlyTransformer``.
        tokens: ``[batch, pos]`` token ids, ``batch >= 2``. Not modified.
        layer, head: the head; its activation is ``blocks.{layer}.attn.hook_z``
            ``[batch, pos, n_heads, d_head]``.
        generator: the only source of randomness (the same seed must give the
            same result).

    Returns:
        ``(logits, source)``: ``logits [batch, pos, d_vocab]`` of the run with::

            z'[b, :, head] = z_clean[source[b], :, head]       (every other head unchanged)

        and ``source [batch]`` (LongTensor), a random permutation of
        ``0 .. batch - 1`` with ``source[b] != b`` for every ``b``.

    Hint: a permutation with no fixed point can be drawn by trying again
    until ``torch.randperm`` gives one (about a third of the draws succeed),
    or built from one draw. Cache ``z`` on a clean run first.
    """
    B = tokens.shape[0]
    if B < 2:
        raise ValueError("resample ablation needs a batch of at least 2 sequences")
    while True:                                   # a random derangement, by rejection
        source = torch.randperm(B, generator=generator)
        if not bool((source == torch.arange(B)).any()):
            break
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    z_other = cache[name][source]

    def fn(z, hook):
        z = z.clone()
        z[:, :, head] = z_other[:, :, head]
        return z
    return model.run_with_hooks(tokens, fwd_hooks=[(name, fn)]), source


def resampled_induction_prediction(tokens: torch.Tensor, source: torch.Tensor, half_len: int) -> torch.Tensor:
    """Predict what a model says when its induction heads are resample-ablated.  ★★  (about 10 min)

    A prediction, graded by running the model. In chapter 5, resampling both
    induction heads of ``induction-2l`` drove the repeated-half loss far above
    chance, while zero and mean ablation left it near chance. Explain that by
    predicting, without running anything, the token the model ranks *first*
    on the second copy when both induction heads (``L1H0`` and ``L1H1``)
    receive their ``z`` from another sequence: sequence ``b`` gets the two
    heads' ``z`` from sequence ``source[b]`` (same positions); everything else
    in the model still sees sequence ``b``.

    Args:
        tokens: ``[batch, 1 + 2 * half_len]`` probes ``[BOS, r, r]``. Not modified.
        source: ``[batch]`` LongTensor, the sequence each row's induction-head
            output comes from (``source[b] != b``). Not modified.
        half_len: the half length.

    Returns:
        ``[batch, half_len - 1]`` LongTensor: entry ``[b, i]`` is your predicted
        top-ranked token at logit position ``p = half_len + 1 + i`` (the
        positions whose next token the clean model can predict). The grader
        requires agreement with the model's actual top token on at least 85 %
        of the entries, on several batches and half lengths.

    Hint: what does an induction head's output at position ``p`` of sequence
    ``s`` encode? Does anything in that vector know which sequence it is
    added to?
    """
    p = torch.arange(half_len + 1, 2 * half_len)            # logit positions on the second copy
    return tokens[source][:, p + 1].clone()                   # the other sequence's next token


def virtual_terms_loss(model, tokens: torch.Tensor) -> float:
    """Term importance: how much loss the virtual-head terms explain.  ★★★  (about 25 min)

    With every attention pattern frozen at its clean value, an attention-only
    model without LayerNorm is linear in its values, and the path expansion
    writes its logits as the direct path, one term per head, and one term per
    *virtual head* (a chain of heads in different layers). Removing a group of
    terms and measuring the loss tells how much that group matters. The
    virtual-head terms are exactly those in which some head's value input
    contains an earlier head's output; they vanish when every layer's values
    read the embeddings only.

    Args:
        model: an ``AttnOnlyTransformer`` without LayerNorm, any number of layers
            (positions ``learned`` or ``shortformer``). Not modified.
        tokens: ``[batch, pos]`` token ids. Not modified.

    Returns:
        The float ``L_no_virtual - L_full`` in nats, where ``L`` is the mean
        next-token loss over every position of every sequence and

        - ``L_full``: the model as it is (patterns frozen or not: the same run);
        - ``L_no_virtual``: every ``hook_pattern`` fixed to its clean value
          and every layer's values computed from the embeddings alone,
          ``v = e W_V`` per head, with ``e`` what enters the residual stream
          before layer 0 (the token embedding, plus ``W_pos`` when the model
          has ``learned`` positions; with ``shortformer`` positions only the
          token embedding).

    Hint: two hooked runs. Cache the clean patterns and the residual stream
    before layer 0 first; which hook lets you replace a layer's values, and
    what shape must its output have?
    """
    import torch.nn.functional as F

    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)] + ["blocks.0.hook_resid_pre"]
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    e = cache["blocks.0.hook_resid_pre"]                          # [batch, pos, d_model]

    def loss(lg):
        return float(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1)))

    hooks = []
    for l in range(L):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        v_embed = torch.einsum("bpd,hde->bphe", e, model.blocks[l].attn.W_V)
        hooks.append((f"blocks.{l}.attn.hook_pattern", (lambda p: lambda act, hook: p)(pattern)))
        hooks.append((f"blocks.{l}.attn.hook_v", (lambda v: lambda act, hook: v)(v_embed)))
    return loss(model.run_with_hooks(tokens, fwd_hooks=hooks)) - loss(logits)
