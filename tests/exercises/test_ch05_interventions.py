"""Graded tests of chapter 5, "Interventions: testing circuits causally".

Ground truth: the shipped ``induction-2l`` model itself — an ablated head is
checked against a copy of the model whose ``W_O`` for that head is zero, the
direct logit attributions must add up to the model's own logits, the last
logit-lens layer must equal the model's output distribution, path-patched keys
must equal the keys of a run in which the sender really saw the corrupted
prompt, the model's own top tokens with its induction heads resampled — and the
library's independent implementations in ``toylab.causal.interventions``,
``toylab.causal.patching`` and ``toylab.causal.attribution``, also on random 3-layer models
and on variants of ``induction-2l`` (heads renumbered, layer-1 keys zeroed).
"""

import copy

import pytest
import torch

from toylab.causal.attribution import direct_logit_attribution, logit_lens
from toylab.data import repeated_tokens
from toylab.course.answers import expect_number, expect_tensor, load_answers
from toylab.causal.interventions import ablate_heads, make_metric
from toylab.causal.patching import patch

CH = "ch05_interventions"
HALF = 10


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def pair(induction_model):
    """``(clean, corrupted)`` probes ``[BOS, r, r]`` and ``[BOS, r', r']`` with independent r, r': ``[16, 21]``."""
    V = induction_model.cfg.d_vocab
    clean = repeated_tokens(V, HALF, 16, torch.Generator().manual_seed(11))
    corrupted = repeated_tokens(V, HALF, 16, torch.Generator().manual_seed(12))
    return clean, corrupted


REPEAT = list(range(HALF + 1, 2 * HALF))  # logit positions that predict the (predictable) second copy


@pytest.mark.exercise("zero_ablation_hook")
@pytest.mark.points(1)
def test_zero_ablation_hook(induction_model, pair):
    model, (clean, _) = induction_model, pair
    for layer, head in ((0, 0), (1, 1)):
        fn = answers().zero_ablation_hook(head)
        z = model.run_with_cache(clean, names_filter=f"blocks.{layer}.attn.hook_z")[1]["z", layer]
        z_before = z.clone()
        out = fn(z, None)
        assert out is not None, ("your hook returned None: a hook that edits z in place and returns nothing changes "
                                 "the caller's tensor; clone z, edit the copy and return it")
        assert torch.equal(z_before, z), "your hook changed z in place: clone it and return the copy"
        got_z = out
        # the truth: the same model with that head's W_O set to zero
        ablated = copy.deepcopy(model)
        ablated.blocks[layer].attn.W_O.data[head] = 0.0
        want = ablated(clean)
        got = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", answers().zero_ablation_hook(head))])
        other = 1 - head
        wrong = z.clone()
        wrong[:, :, other] = 0
        wrong_pos = z.clone()
        wrong_pos[:, head] = 0
        expect_tensor(got_z, torch.where(torch.arange(model.cfg.n_heads)[None, None, :, None] == head, 0.0, z_before),
                      f"z after zero_ablation_hook({head})", "batch, pos, n_heads, d_head",
                      hints=[(wrong, f"you zeroed head {other}; the head axis of z is dim 2"),
                             (wrong_pos, f"you zeroed position {head} (dim 1) instead of head {head}: z is "
                                         "[batch, pos, n_heads, d_head], the head axis is dim 2"),
                             (torch.zeros_like(z), "you zeroed every head; only head `head` goes")])
        expect_tensor(got, want, f"logits with head L{layer}H{head} zero-ablated", "batch, pos, d_vocab", atol=1e-4)


@pytest.mark.exercise("mean_ablation_hook")
@pytest.mark.points(2)
def test_mean_ablation_hook(induction_model, pair):
    model, (clean, corrupted) = induction_model, pair
    ref = torch.cat([corrupted, clean])  # a reference batch of another size (32)
    name = "blocks.0.attn.hook_z"
    ref_z = model.run_with_cache(ref, names_filter=name)[1][name]
    ref_before = ref_z.clone()
    fn = answers().mean_ablation_hook(ref_z, 0)
    got = model.run_with_hooks(clean, fwd_hooks=[(name, fn)])
    assert torch.equal(ref_z, ref_before), "your hook changed reference_z; never modify the inputs"
    z_in = ref_z[:4].clone()
    z_copy = z_in.clone()
    fn(z_in, None)
    assert torch.equal(z_in, z_copy), ("your hook edited the activation z in place (it changed the tensor it was "
                                       "given): clone z first and return the copy")
    want = ablate_heads(model, clean, [(0, 0)], kind="mean", reference=ref)
    # a typical mistake: one mean over the batch *and* the positions
    flat = ref_z[:, :, 0].mean((0, 1))

    def wrong_fn(z, hook):
        z = z.clone()
        z[:, :, 0] = flat
        return z
    wrong = model.run_with_hooks(clean, fwd_hooks=[(name, wrong_fn)])
    expect_tensor(got, want, "logits with head L0H0 mean-ablated", "batch, pos, d_vocab", atol=1e-4,
                  hints=[(wrong, "take a separate mean for every position: average over dim 0 (the batch) only"),
                         (model(clean), "the logits did not change: did your hook return the new z?")])


@pytest.mark.exercise("normalised_effect")
@pytest.mark.points(1)
def test_normalised_effect():
    f = answers().normalised_effect
    expect_number(f(-0.5, -0.5, -9.0), 1.0, "normalised_effect(clean value)", tol=1e-9,
                  hint="a patched run that scores like the clean run has effect 1")
    expect_number(f(-9.0, -0.5, -9.0), 0.0, "normalised_effect(corrupted value)", tol=1e-9,
                  hint="a patched run that scores like the corrupted run has effect 0")
    expect_number(f(-4.75, -0.5, -9.0), 0.5, "normalised_effect(halfway)", tol=1e-9,
                  hint="(m_patched - m_corrupted) / (m_clean - m_corrupted)")
    # a rank or a loss: smaller is better, the scale still runs from corrupted (0) to clean (1)
    expect_number(f(15.0, 0.0, 60.0), 0.75, "normalised_effect for a rank (clean 0, corrupted 60, patched 15)",
                  tol=1e-9, hint="do not take absolute values: divide by (m_clean - m_corrupted) with its sign")
    expect_number(f(70.0, 0.0, 60.0), -1 / 6, "normalised_effect for a patch worse than corrupted (rank: clean 0, "
                  "corrupted 60, patched 70)", tol=1e-9,
                  hint="a patch that makes things worse than the corrupted run is negative; keep the signs")
    try:
        f(1.0, 2.0, 2.0)
    except ValueError:
        pass
    except ZeroDivisionError:
        raise AssertionError("normalised_effect(1, 2, 2) raised ZeroDivisionError; when m_clean == m_corrupted the "
                             "docstring asks for a ValueError that says why (check before dividing)") from None
    else:
        raise AssertionError("normalised_effect(1, 2, 2) returned a value; when m_clean == m_corrupted the effect "
                             "is undefined and the docstring asks for a ValueError")


@pytest.mark.exercise("logit_difference")
@pytest.mark.points(2)
def test_logit_difference(induction_model, pair):
    model, (clean, corrupted) = induction_model, pair
    logits = model(clean)
    f = answers().logit_difference
    want = float(make_metric("logit_diff", clean, REPEAT, incorrect_tokens=corrupted)(logits))
    unshifted = float((logits[:, REPEAT].gather(-1, clean[:, REPEAT][..., None])
                       - logits[:, REPEAT].gather(-1, corrupted[:, REPEAT][..., None])).mean())
    got = f(logits, clean, corrupted, REPEAT)
    if abs(float(got) - unshifted) < 1e-4 and abs(want - unshifted) > 1e-3:
        raise AssertionError("the logits at position p predict the token at p + 1: "
                             "compare with tokens[:, p + 1], not tokens[:, p]")
    expect_number(got, want, "the logit difference on the repeated half", tol=1e-4,
                  hint="mean over batch and positions of logit[correct] - logit[incorrect]")
    expect_number(f(logits, clean, clean, REPEAT), 0.0, "the logit difference of a token with itself", tol=1e-6)
    # linearity: the logit difference of a sum of logits is the sum of the logit differences
    other = model(corrupted)
    expect_number(f(logits + other, clean, corrupted, [0, 3, 7]),
                  f(logits, clean, corrupted, [0, 3, 7]) + f(other, clean, corrupted, [0, 3, 7]),
                  "logit_difference(logits_a + logits_b) (it is linear)", tol=1e-3)


@pytest.mark.exercise("denoise_one_cell")
@pytest.mark.points(2)
def test_denoise_one_cell(induction_model, pair):
    model, (clean, corrupted) = induction_model, pair
    metric = make_metric("logprob", clean, REPEAT)
    f = answers().denoise_one_cell
    for layer, head, pos in ((1, 1, 14), (0, 0, 5)):
        want = patch(model, clean, corrupted, "z", metric, layer=layer, head=head, position=pos, normalise=False)
        noised = patch(model, clean, corrupted, "z", metric, layer=layer, head=head, position=pos,
                       direction="noise", normalise=False)
        all_pos = patch(model, clean, corrupted, "z", metric, layer=layer, head=head, normalise=False)
        got = f(model, clean, corrupted, layer, head, pos, metric)
        for cand, msg in ((noised, "that is noising: run the CORRUPTED tokens and paste in the CLEAN z"),
                          (all_pos, "you patched every position; patch only z[:, position, head]"),
                          (float(metric(model(corrupted))), "nothing changed: did your hook return the patched z?"),
                          (float(metric(model(clean))), "that is the clean run's metric: run the corrupted tokens "
                                                        "and paste the clean z into them")):
            if abs(float(got) - cand) < 1e-5 and abs(want - cand) > 1e-4:
                raise AssertionError(f"denoise_one_cell(layer={layer}, head={head}, position={pos}): {msg}")
        expect_number(got, want, f"the metric with z[:, {pos}, {head}] of layer {layer} denoised", tol=1e-4)


@pytest.mark.exercise("head_dla")
@pytest.mark.points(2)
def test_head_dla(induction_model, pair):
    model, (clean, _) = induction_model, pair
    logits, cache = model.run_with_cache(clean)
    f = answers().head_dla
    H = model.cfg.n_heads
    dla = direct_logit_attribution(model, clean)
    got = {(l, h): f(model, cache, clean, l, h) for l in range(model.cfg.n_layers) for h in range(H)}
    same_pos = (cache["z", 1][:, :, 1] @ model.blocks[1].attn.W_O[1])[:, :-1]
    same_pos = (same_pos * model.W_U.T[clean[:, :-1]]).sum(-1)
    expect_tensor(got[(1, 1)], dla.attrs[1 * H + 1], "head_dla for head L1H1", "batch, pos - 1", atol=1e-3,
                  hints=[(same_pos, "the logits at p predict tokens[:, p + 1]: read W_U at the NEXT token")])
    # the truth: the embedding's term plus every head's term is the model's logit of the correct token
    target = clean[:, 1:]
    direct = (cache["embed"][:, :-1] * model.W_U.T[target]).sum(-1)
    total = direct + sum(got.values())
    want = logits[:, :-1].gather(-1, target[..., None])[..., 0]
    expect_tensor(total, want, "embedding term + sum of head_dla over all heads", "batch, pos - 1", atol=1e-3)


@pytest.mark.exercise("logit_lens_probs")
@pytest.mark.points(2)
def test_logit_lens_probs(induction_model, pair):
    model, (clean, _) = induction_model, pair
    got = answers().logit_lens_probs(model, clean)
    L, T = model.cfg.n_layers, clean.shape[1]
    target = clean[:, 1:]
    final = torch.softmax(model(clean)[:, :-1], -1).gather(-1, target[..., None])[..., 0]
    embed_only = torch.softmax(model.W_E @ model.W_U, -1)[clean[:, :-1], target]  # shortformer: no W_pos in the stream
    padded = torch.cat([target, target[:, :1]], 1)
    want = logit_lens(model, clean, target=padded).target_probs[:, :, :-1]
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (L + 1, clean.shape[0], T - 1), \
        f"expected shape [n_layers + 1, batch, pos - 1] = {[L + 1, clean.shape[0], T - 1]}, " \
        f"got {list(getattr(got, 'shape', [])) or type(got).__name__}"
    with_pos = torch.softmax((model.W_E[clean[:, :-1]] + model.W_pos[: T - 1]) @ model.W_U, -1)
    with_pos = with_pos.gather(-1, target[..., None])[..., 0]
    expect_tensor(got[0], embed_only, "logit_lens_probs[0] (the embeddings alone)", "batch, pos - 1", atol=1e-4,
                  hints=[(with_pos, "this model is a shortformer: W_pos is added to queries and keys only, "
                                    "not to the residual stream"),
                         (embed_only.log(), "those are log-probabilities; the exercise asks for probabilities"),
                         (torch.softmax(model.W_E @ model.W_U, -1)[clean[:, :-1], clean[:, :-1]],
                          "you read the probability of the CURRENT token: position p predicts tokens[:, p + 1]")])
    current = torch.softmax(model(clean)[:, :-1], -1).gather(-1, clean[:, :-1, None])[..., 0]
    expect_tensor(got[-1], final, "logit_lens_probs[-1] (after the last layer)", "batch, pos - 1", atol=1e-4,
                  hints=[(final.log(), "those are log-probabilities; the exercise asks for probabilities"),
                         (current, "you read the probability of the CURRENT token: the logits at position p "
                                   "predict tokens[:, p + 1]")])
    expect_tensor(got, want, "logit_lens_probs", "n_layers + 1, batch, pos - 1", atol=1e-4)


@pytest.mark.exercise("path_patched_keys")
@pytest.mark.points(3)
def test_path_patched_keys(induction_model, pair):
    model, (clean, corrupted) = induction_model, pair
    f = answers().path_patched_keys
    T = clean.shape[1]
    _, corr_cache = model.run_with_cache(corrupted, names_filter="blocks.0.attn.hook_z")
    _, clean_cache = model.run_with_cache(clean, names_filter=["blocks.1.attn.hook_k", "blocks.1.hook_resid_pre"])
    for sender, receiver in (((0, 0), (1, 1)), ((0, 1), (1, 0))):
        hs, hr = sender[1], receiver[1]

        def swap(z, hook):  # the sender really sees the corrupted prompt; nothing else does
            z = z.clone()
            z[:, :, hs] = corr_cache["z", 0][:, :, hs]
            return z
        with model.hooks([("blocks.0.attn.hook_z", swap)]):
            _, run = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_k")
        want = run["k", 1][:, :, hr]
        no_pos = want - model.W_pos[:T] @ model.blocks[1].attn.W_K[hr]
        got = f(model, clean, corrupted, sender, receiver)
        expect_tensor(got, want, f"path_patched_keys(sender={sender}, receiver={receiver})", "batch, pos, d_head",
                      atol=1e-3,
                      hints=[(clean_cache["k", 1][:, :, hr], "these are the clean keys: add the sender's "
                              "corrupted output and subtract its clean output"),
                             (no_pos, "a shortformer adds W_pos to the key input of every layer: add W_pos[:pos]")])
    # other shapes and layers: a random 3-layer, 3-head model with learned positions (an answer that
    # hard-codes layers 0 -> 1, or adds W_pos whatever the model, fails here)
    from toylab.model import AttnOnlyTransformer, ModelConfig

    deep = AttnOnlyTransformer(ModelConfig(d_vocab=30, n_ctx=14, d_model=24, n_layers=3, n_heads=3, d_head=8,
                                           positional="learned"), seed=7)
    g = torch.Generator().manual_seed(3)
    c2, x2 = torch.randint(0, 30, (4, 14), generator=g), torch.randint(0, 30, (4, 14), generator=g)
    for sender, receiver in (((1, 2), (2, 0)), ((0, 1), (2, 2))):
        (ls, hs), (lr, hr) = sender, receiver
        rname = f"blocks.{ls}.attn.hook_result"
        res_c = deep.run_with_cache(c2, names_filter=rname)[1][rname][:, :, hs]
        res_x = deep.run_with_cache(x2, names_filter=rname)[1][rname][:, :, hs]

        def add(resid, hook):  # only the receiver layer's input sees the swapped sender output
            return resid + (res_x - res_c)
        with deep.hooks([(f"blocks.{lr}.hook_resid_pre", add)]):
            _, run = deep.run_with_cache(c2, names_filter=f"blocks.{lr}.attn.hook_k")
        want = run["k", lr][:, :, hr]
        got = f(deep, c2, x2, sender, receiver)
        with_pos = want + deep.W_pos[:14] @ deep.blocks[lr].attn.W_K[hr]
        expect_tensor(got, want, f"path_patched_keys on a random 3-layer learned-position model (sender={sender}, "
                      f"receiver={receiver})", "batch, pos, d_head", atol=1e-3,
                      hints=[(with_pos, "this model has learned positions: W_pos is already in the residual stream; "
                                        "add it again only for a shortformer")])


@pytest.mark.exercise("corrupt_for_induction")
@pytest.mark.points(2)
def test_corrupt_for_induction(induction_model):
    model = induction_model
    V = model.cfg.d_vocab
    f = answers().corrupt_for_induction
    for half in (7, 12):
        clean = repeated_tokens(V, half, 32, torch.Generator().manual_seed(half))
        before = clean.clone()
        got = f(clean, half, V, torch.Generator().manual_seed(1))
        assert torch.equal(clean, before), "corrupt_for_induction changed `tokens` in place: corrupt a copy"
        assert isinstance(got, torch.Tensor) and got.shape == clean.shape and not got.is_floating_point(), (
            f"expected a [batch, 1 + 2 * half_len] = {list(clean.shape)} LongTensor, got "
            f"{list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        again = f(clean, half, V, torch.Generator().manual_seed(1))
        assert torch.equal(got, again), "the same generator seed gave different prompts: draw only from `generator`"
        assert int(got.min()) >= 0 and int(got.max()) < V, f"token ids must lie in [0, {V - 1}]"
        second = slice(1 + half, 1 + 2 * half)
        if not torch.equal(got[:, second], clean[:, second]):
            raise AssertionError("you changed the second copy: those are the destinations the metric reads (their "
                                 "logit difference is compared between runs), so they must stay the same; corrupt "
                                 "what induction reads from instead")
        assert torch.equal(got[:, 0], clean[:, 0]), "keep BOS at position 0: the model always saw it there"
        assert not bool((got[:, 1:] == 0).any()), ("token 0 is BOS, not an ordinary token: draw the random tokens "
                                                   "from 1 .. d_vocab - 1 (the model only saw BOS at position 0)")
        # what the model does with it: induction must be broken on the second copy
        loss_clean = model(clean, return_type="loss_per_token")[:, half + 1:].mean()
        loss_corr = model(got, return_type="loss_per_token")[:, half + 1:].mean()
        assert float(loss_corr - loss_clean) >= 2.0, (
            f"on your corrupted prompts the loss on the second copy is {float(loss_corr):.2f} nats, on the clean "
            f"ones {float(loss_clean):.2f}: induction still works. Change the first copy so that the second copy no "
            "longer repeats anything (a shuffle of the first copy keeps the same tokens, only moved)")


# ------------------------------------------------------------ pattern-preserving ablation, resampling
def _random_deep_model():
    """A random 3-layer, 3-head model with learned positions (other shapes than induction-2l)."""
    from toylab.model import AttnOnlyTransformer, ModelConfig

    return AttnOnlyTransformer(ModelConfig(d_vocab=30, n_ctx=14, d_model=24, n_layers=3, n_heads=3, d_head=8,
                                           positional="learned"), seed=int(torch.randint(0, 1000, ())))


def _freeze_only(model, tokens, layers, l, h):
    """The zero-ablated run with only ``layers``' patterns frozen (a wrong answer to recognise)."""
    from toylab.causal.interventions import ablation_hooks, frozen_pattern_hooks

    hooks = frozen_pattern_hooks(model, tokens, layers) + ablation_hooks(model, tokens, [(l, h)], "zero")
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


@pytest.mark.exercise("pattern_preserving_ablation")
@pytest.mark.points(2)
def test_pattern_preserving_ablation(induction_model, pair):
    model, (clean, _) = induction_model, pair
    deep = _random_deep_model()
    deep_tokens = torch.randint(0, 30, (6, 14), generator=torch.Generator().manual_seed(4))
    f = answers().pattern_preserving_ablation
    for m, toks, cases in ((model, clean, ((0, 0), (0, 1), (1, 1))), (deep, deep_tokens, ((0, 2), (1, 1), (0, 0)))):
        before_tokens, before_logits = toks.clone(), m(toks)
        before_weights = {n: p.clone() for n, p in m.named_parameters()}
        for l, h in cases:
            got = f(m, toks, l, h)
            assert torch.equal(toks, before_tokens), "pattern_preserving_ablation changed `tokens` in place"
            assert all(torch.equal(p, before_weights[n]) for n, p in m.named_parameters()), (
                "pattern_preserving_ablation changed the model's weights: ablate with a hook on hook_z, "
                "never by editing W_O")
            assert torch.allclose(m(toks), before_logits, atol=1e-5), (
                "after your call the model's plain run gives other logits: a hook stayed attached. Use "
                "model.run_with_hooks or the model.hooks(...) context manager, which remove their hooks")
            want = ablate_heads(m, toks, [(l, h)], kind="zero", freeze_patterns=True)
            hints = [(ablate_heads(m, toks, [(l, h)], kind="zero"),
                      "the patterns were not frozen: this is a plain zero ablation (freezing patterns computed "
                      "on the ablated run itself changes nothing; take them from a clean run)"),
                     (m(toks), "nothing changed: the head was not ablated (set z[:, :, head] = 0 on "
                               f"blocks.{l}.attn.hook_z and return the new z)")]
            if l + 1 < m.cfg.n_layers - 1:
                hints.append((_freeze_only(m, toks, [l + 1], l, h),
                              "you froze only the next layer's patterns: an ablated head reaches every later "
                              "layer, so freeze them all"))
            expect_tensor(got, want, f"pattern_preserving_ablation(layer={l}, head={h}) on a "
                          f"{m.cfg.n_layers}-layer model", "batch, pos, d_vocab", atol=1e-4, hints=hints)


def _variant(model, kind: str, swap_layer0: bool):
    """induction-2l, with its two layer-0 heads swapped (the same circuit, other head numbers) and,
    for ``kind="blind"``, the layer-1 keys zeroed (layer 1 attends uniformly: no head can act
    through attention any more)."""
    m = copy.deepcopy(model)
    if swap_layer0:
        a = m.blocks[0].attn
        for W in (a.W_Q, a.W_K, a.W_V, a.W_O):
            W.data = W.data[[1, 0]].clone()
    if kind == "blind":
        m.blocks[1].attn.W_K.data.zero_()
    return m


def _through_attention_truth(model, tokens, half):
    """The library's measurement, with thresholds far from every head's numbers: (set, table)."""
    loss = make_metric("loss", tokens, list(range(half + 1, 2 * half)))
    clean = float(loss(model(tokens)))
    found, rows = set(), {}
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            normal = float(ablate_heads(model, tokens, [(l, h)], metric=loss)) - clean
            frozen = float(ablate_heads(model, tokens, [(l, h)], freeze_patterns=True, metric=loss)) - clean
            rows[(l, h)] = (normal, frozen)
            if normal > 1.0 and frozen < 0.1 * normal:
                found.add((l, h))
    return found, rows


@pytest.mark.exercise("heads_acting_through_attention")
@pytest.mark.points(2)
def test_heads_acting_through_attention(induction_model):
    f = answers().heads_acting_through_attention
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    V = induction_model.cfg.d_vocab
    swap = bool(torch.randint(0, 2, (), generator=g))
    for kind, half in (("trained", 8), ("trained", 12), ("blind", 10)):
        swapped = swap if kind == "trained" else not swap
        model = _variant(induction_model, kind, swapped)
        tokens = repeated_tokens(V, half, 24, g)
        before = tokens.clone()
        want, rows = _through_attention_truth(model, tokens, half)
        got = f(model, tokens, half)
        assert torch.equal(tokens, before), "heads_acting_through_attention changed `tokens` in place"
        try:
            got_set = {(int(l), int(h)) for l, h in got}
        except (TypeError, ValueError):
            raise AssertionError(f"expected a set of (layer, head) pairs of ints, got {got!r}") from None
        table = "; ".join(f"L{l}H{h}: {n:+.2f} nats normally, {z:+.2f} with frozen patterns"
                          for (l, h), (n, z) in rows.items())
        what = ("induction-2l" + (" with its layer-0 heads swapped" if swapped else "")
                + (" and its layer-1 keys zeroed (layer 1 attends uniformly)" if kind == "blind" else ""))
        if got_set == want:
            continue
        extra, missing = got_set - want, want - got_set
        msg = (f"on {what}, half length {half}, you said {sorted(got_set)}, the measurement says "
               f"{sorted(want)} ({table})")
        for l, h in sorted(extra):
            n, z = rows[(l, h)]
            if n < 0.5:
                msg += (f". L{l}H{h} barely matters at all (+{n:.2f} nats): a head whose ablation does not hurt "
                        "does not act through anything; require a clear harm first")
            elif z > 0.5 * n:
                msg += (f". L{l}H{h} hurts as much with frozen patterns (+{z:.2f}) as without: it acts through the "
                        "values it writes, not through attention")
        for l, h in sorted(missing):
            msg += (f". L{l}H{h} is missing: ablating it costs +{rows[(l, h)][0]:.2f} nats, and with the patterns "
                    f"frozen only +{rows[(l, h)][1]:.2f}: all its harm goes through later heads' patterns")
        raise AssertionError(msg)


def _library_resample(model, tokens, heads, source):
    """The library's resample ablation with the row assignment ``source`` (z'[b] = z[source[b]]).

    ``ablate_heads(kind="resample", reference=ref, seed=s)`` gives row ``b`` the activation of
    ``ref[idx[b]]`` with ``idx = randperm(len(ref), seed s)``; choose ``ref`` so that
    ``ref[idx[b]] = tokens[source[b]]``."""
    idx = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(0))
    ref = torch.empty_like(tokens)
    ref[idx] = tokens[source]
    return ablate_heads(model, tokens, heads, kind="resample", reference=ref, seed=0)


@pytest.mark.exercise("resample_ablate_head")
@pytest.mark.points(2)
def test_resample_ablate_head(induction_model, pair):
    model, (clean, _) = induction_model, pair
    deep = _random_deep_model()
    deep_tokens = torch.randint(0, 30, (7, 14), generator=torch.Generator().manual_seed(8))
    f = answers().resample_ablate_head
    for m, toks, cases in ((model, clean, ((1, 1), (0, 0))), (deep, deep_tokens, ((2, 1), (0, 2)))):
        B = toks.shape[0]
        for l, h in cases:
            before = toks.clone()
            seed = int(torch.randint(0, 10**6, ()))
            out = f(m, toks, l, h, torch.Generator().manual_seed(seed))
            assert torch.equal(toks, before), "resample_ablate_head changed `tokens` in place"
            assert isinstance(out, tuple) and len(out) == 2, "return a pair (logits, source)"
            got, source = out
            ok = isinstance(source, torch.Tensor) and tuple(source.shape) == (B,)
            assert ok and not source.is_floating_point(), (
                f"source must be a LongTensor [batch] = [{B}], got "
                f"{list(source.shape) if isinstance(source, torch.Tensor) else type(source).__name__}")
            source = source.long()
            assert torch.equal(source.sort().values, torch.arange(B)), (
                f"source {source.tolist()} is not a permutation of 0..{B - 1}: every sequence's z must be used "
                "exactly once")
            fixed = torch.nonzero(source == torch.arange(B)).flatten().tolist()
            assert not fixed, (f"sequence(s) {fixed} got their own z back (source[b] == b): that is no ablation for "
                               "them. Draw again until no sequence keeps its own (a derangement)")
            want = _library_resample(m, toks, [(l, h)], source)
            inverse = torch.empty_like(source)
            inverse[source] = torch.arange(B)
            layer_all = _library_resample(m, toks, [(l, k) for k in range(m.cfg.n_heads)], source)
            mean = ablate_heads(m, toks, [(l, h)], kind="mean")
            hints = [(_library_resample(m, toks, [(l, h)], inverse),
                      "you used the inverse permutation: source[b] is the sequence whose z row b receives, "
                      "z'[b] = z_clean[source[b]]"),
                     (layer_all, "you resampled every head of the layer; only z[:, :, head] changes"),
                     (mean, "that is mean ablation: resampling takes one other sequence's z, not an average"),
                     (m(toks), "nothing changed: did your hook return the new z?")]
            expect_tensor(got, want, f"resample_ablate_head(layer={l}, head={h}) on a {m.cfg.n_layers}-layer model",
                          "batch, pos, d_vocab", atol=1e-4, hints=hints)
            again = f(m, toks, l, h, torch.Generator().manual_seed(seed))[1]
            assert torch.equal(again.long(), source), "the same generator seed gave another source: draw only from it"
    for s in range(12):  # small batches, many seeds: a plain randperm keeps some sequence's own z often
        three = f(model, clean[:3], 1, 1, torch.Generator().manual_seed(s))[1].long()
        assert not bool((three == torch.arange(3)).any()), (
            f"with generator seed {s} on a batch of 3, source = {three.tolist()} gives some sequence its own z "
            "back: a random permutation can have fixed points; draw again until none is left (a derangement)")
    others = {tuple(f(model, clean, 1, 1, torch.Generator().manual_seed(s))[1].tolist()) for s in range(4)}
    assert len(others) > 1, ("four different generator seeds all gave the same source: draw the permutation at "
                             "random from `generator` (a fixed shift is a derangement, but always the same one)")


@pytest.mark.exercise("resampled_induction_prediction")
@pytest.mark.points(2)
def test_resampled_induction_prediction(induction_model):
    model = induction_model
    V = model.cfg.d_vocab
    f = answers().resampled_induction_prediction
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    for half in (8, 13):
        tokens = repeated_tokens(V, half, 24, g)
        B = tokens.shape[0]
        order = torch.randperm(B, generator=g)               # a random cycle through all rows: a derangement
        source = torch.empty(B, dtype=torch.long)
        source[order] = order.roll(-1)
        before_t, before_s = tokens.clone(), source.clone()
        got = f(tokens, source, half)
        assert torch.equal(tokens, before_t) and torch.equal(source, before_s), \
            "resampled_induction_prediction changed its inputs in place"
        p = torch.arange(half + 1, 2 * half)
        assert isinstance(got, torch.Tensor) and tuple(got.shape) == (B, half - 1), (
            f"expected a LongTensor [batch, half_len - 1] = {[B, half - 1]}, got "
            f"{list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        # the truth: the model's own top token with both induction heads resampled from `source`
        top = _library_resample(model, tokens, [(1, 0), (1, 1)], source)[:, p].argmax(-1)
        agree = float((got.long() == top).float().mean())
        if agree >= 0.85:
            continue
        own = float((tokens[:, p + 1] == top).float().mean())
        msg = (f"half length {half}: your predictions agree with the model's top token on {agree:.0%} of the "
               "entries (85 % needed)")
        if torch.equal(got.long(), tokens[:, p + 1]):
            msg += (f". You predicted the correct next token, which the model ranks first on only {own:.0%} of "
                    "them: a resampled induction head does not fall silent, it still copies, confidently")
        elif torch.equal(got.long(), tokens[source][:, p]):
            msg += ". Off by one: the logits at position p predict the token at p + 1"
        else:
            inverse = torch.empty_like(source)
            inverse[source] = torch.arange(B)
            if torch.equal(got.long(), tokens[inverse][:, p + 1]):
                msg += ". You used the inverse permutation: row b's heads output what they did on source[b]"
        raise AssertionError(msg)


# ------------------------------------------------------------ term importance
def _no_virtual_loss(model, tokens, freeze=True, with_pos=True, layers=None):
    """The loss with the values of ``layers`` (default all) read from the embeddings, in three plausible
    wrong variants (patterns not frozen, positions left out, some layers only), so a wrong answer gets
    the hint for its mistake (the reference itself is ``term_importance``)."""
    from toylab.causal.interventions import frozen_pattern_hooks
    from toylab.model import next_token_loss

    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed", "hook_pos_embed"])
    e = cache["hook_embed"]
    if with_pos and model.cfg.positional == "learned":
        e = e + cache["hook_pos_embed"]
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = frozen_pattern_hooks(model, tokens) if freeze else []
    for l in layers:
        v = torch.einsum("bpd,hde->bphe", e, model.blocks[l].attn.W_V)
        hooks.append((f"blocks.{l}.attn.hook_v", (lambda v: lambda act, hook: v)(v)))
    return float(next_token_loss(model.run_with_hooks(tokens, fwd_hooks=hooks), tokens).mean())


@pytest.mark.hidden
@pytest.mark.exercise("virtual_terms_loss")
@pytest.mark.points(3)
def test_virtual_terms_loss(induction_model):
    from toylab.causal.interventions import term_importance
    from toylab.model import next_token_loss

    deep = _random_deep_model()
    cases = [("induction-2l on [BOS, r, r]", induction_model,
              repeated_tokens(128, 12, 16, generator=torch.Generator().manual_seed(5))),
             ("a random 3-layer model with learned positions", deep,
              torch.randint(0, 30, (8, 14), generator=torch.Generator().manual_seed(6)))]
    for what, model, tokens in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        toks = tokens.clone()
        want = term_importance(model, tokens)["virtual_terms"]
        got = answers().virtual_terms_loss(model, tokens)
        assert torch.equal(tokens, toks), "virtual_terms_loss changed the tokens it was given"
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), \
            "virtual_terms_loss changed the model's weights: work with hooks, not on the parameters"
        assert not any(hp._forward_hooks for hp in model.hook_dict.values()), \
            "a hook is still attached after virtual_terms_loss returned: use run_with_hooks"
        full = float(next_token_loss(model(tokens), tokens).mean())
        hints = [(-want, "the sign is flipped: the loss the virtual terms "
                  "explain is L_no_virtual - L_full (removing them makes the loss go up)"),
                 (_no_virtual_loss(model, tokens, freeze=False) - full, "the attention patterns were not frozen: "
                  "with new values the later layers' queries and keys change too, and the expansion no longer "
                  "separates the terms; fix every hook_pattern to its clean value"),
                 (_no_virtual_loss(model, tokens, with_pos=False) - full, "with learned positions the residual "
                  "stream before layer 0 is W_E[token] + W_pos: the values must read both"),
                 (_no_virtual_loss(model, tokens, layers=[model.cfg.n_layers - 1]) - full,
                  "only the last layer's values were replaced: a virtual head can end in any layer after the "
                  "first, so every layer's values must read the embeddings alone")]
        assert isinstance(got, float) or (torch.is_tensor(got) and got.numel() == 1), \
            f"return one float (nats), got {type(got).__name__}"
        got = float(got)
        if abs(got - want) > 1e-4 * max(1.0, abs(want)):
            for value, hint in hints:
                if abs(got - value) <= 1e-4 * max(1.0, abs(value)) and abs(value - want) > 1e-3:
                    raise AssertionError(f"on {what}: {hint} (you returned {got:.4f}, expected {want:.4f})")
            raise AssertionError(f"on {what}: you returned {got:.4f} nats, expected {want:.4f} "
                                 "(L_no_virtual - L_full, patterns frozen, all layers' values from the embeddings)")
