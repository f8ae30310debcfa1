"""Graded tests of chapter 4, "Induction heads".

Ground truth: the probe's construction (``toylab.data.repeated_tokens``), the
shipped models' own forward passes and attention patterns, the library's
detectors (``toylab.circuits.scores``, ``toylab.circuits.copying.icl_score``), attention patterns
built by hand whose scores are known exactly (a perfect previous-token or
induction head scores 1), and the definitions, checked entry by entry.
"""

import copy

import pytest
import torch

from toylab.data import induction_targets, make_dataset, repeated_tokens
from toylab.course.answers import expect_number, expect_tensor, load_answers
from toylab.circuits.scores import duplicate_token_score, induction_score, previous_token_score

CH = "ch04_induction"
HALF = 10  # half_len of the probe used here: sequences of 21 tokens


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def probe(induction_model):
    """``(tokens [64, 21], patterns [n_layers] of [64, n_heads, 21, 21])`` of ``induction-2l`` on ``[BOS, r, r]``."""
    tokens = repeated_tokens(induction_model.cfg.d_vocab, HALF, 64, torch.Generator().manual_seed(11))
    _, cache = induction_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return tokens, [cache["pattern", layer] for layer in range(induction_model.cfg.n_layers)]


def second_copy(n_tokens: int = 1 + 2 * HALF) -> torch.Tensor:
    return torch.arange(n_tokens) >= 1 + HALF


def one_hot_pattern(batch: int, n: int, source: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, n, n]``: query ``q`` attends fully to ``source[q]`` (``-1``: to BOS)."""
    pattern = torch.zeros(batch, 1, n, n)
    src = torch.where(source >= 0, source, torch.zeros_like(source))
    pattern[:, 0, torch.arange(n), src] = 1.0
    return pattern


@pytest.mark.exercise("make_probe")
@pytest.mark.points(1)
def test_make_probe():
    f = answers().make_probe
    got = f(50, 7, 5, torch.Generator().manual_seed(3))
    assert isinstance(got, torch.Tensor), f"expected a torch.Tensor, got {type(got).__name__}"
    assert tuple(got.shape) == (5, 15), f"expected shape [batch, 1 + 2 * half_len] = [5, 15], got {list(got.shape)}"
    assert got.dtype == torch.long, f"token ids must be torch.long, got {got.dtype}"
    assert bool((got[:, 0] == 0).all()), "every sequence must start with BOS = 0"
    assert bool((got[:, 1:] >= 1).all() and (got[:, 1:] < 50).all()), \
        "the random tokens must lie in 1..d_vocab-1 (never BOS)"
    assert torch.equal(got[:, 1:8], got[:, 8:]), "the second half must repeat the first: x[p + half_len] = x[p]"
    want = repeated_tokens(50, 7, 5, torch.Generator().manual_seed(3))
    assert torch.equal(got, want), ("your probe has the right structure but other random tokens than "
                                    "toylab.data.repeated_tokens: draw r with one call "
                                    "torch.randint(1, d_vocab, (batch, half_len), generator=generator)")
    other = f(50, 7, 5, torch.Generator().manual_seed(4))
    assert not torch.equal(got, other), "different generators must give different probes: use `generator`"


@pytest.mark.exercise("per_position_loss")
@pytest.mark.points(2)
def test_per_position_loss(induction_model, probe):
    tokens, _ = probe
    got = answers().per_position_loss(induction_model, tokens)
    want = induction_model(tokens, return_type="loss_per_token").mean(0)  # the model's own loss
    logits = induction_model(tokens)
    logp = torch.log_softmax(logits, -1)
    current = -logp[:, :-1].gather(-1, tokens[:, :-1, None])[..., 0].mean(0)
    hints = [(current, "Position p predicts the NEXT token, tokens[:, p + 1], not tokens[:, p]."),
             (-want, "The cross-entropy is MINUS the log-probability of the right token.")]
    expect_tensor(got, want, "per_position_loss(induction-2l, probe)", "pos - 1", atol=1e-4, hints=hints)
    # the fact the chapter rests on: the second copy is predictable, the first is not
    second = got[HALF + 1:].mean().item()
    first = got[:HALF].mean().item()
    assert second < 0.2 < 4.0 < first, \
        f"on the probe the loss should be high on the first copy and near 0 on the second: got {first:.2f}, {second:.2f}"


@pytest.mark.exercise("previous_token_score")
@pytest.mark.points(1)
def test_previous_token_score(probe):
    tokens, patterns = probe
    f = answers().previous_token_score
    n = tokens.shape[1]
    perfect = one_hot_pattern(3, n, torch.arange(n) - 1)  # q attends to q - 1 (q = 0 to itself)
    expect_tensor(f(perfect), torch.ones(1), "previous_token_score of a perfect previous-token head", "n_heads",
                  hints=[(torch.full((1,), (n - 1) / n), "Leave out position 0: it has no previous token.")])
    for layer, pattern in enumerate(patterns):
        want = previous_token_score(pattern)
        wrong = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1).mean(0) / n
        expect_tensor(f(pattern), want, f"previous_token_score of layer {layer} of induction-2l", "n_heads",
                      atol=1e-5, hints=[(wrong, "Average over the positions q >= 1 only (there are pos - 1).")])
    got = f(patterns[0])
    assert got[0] > 0.9, f"head L0H0 is the previous-token head, its score should be above 0.9, got {got[0]:.3f}"


@pytest.mark.exercise("duplicate_token_score")
@pytest.mark.points(2)
def test_duplicate_token_score(probe):
    tokens, patterns = probe
    f = answers().duplicate_token_score
    n = tokens.shape[1]
    # a perfect duplicate-token head on the probe: the second copy attends to the first copy
    source = torch.where(second_copy(n), torch.arange(n) - HALF, torch.arange(n))
    perfect = one_hot_pattern(tokens.shape[0], n, source)
    expect_number(f(perfect, tokens, second_copy(n))[0], 1.0,
                  "the duplicate-token score of a perfect duplicate-token head (second copy)", tol=1e-5,
                  hint="sum the attention to the earlier copies of the destination's token")
    same = tokens[:, :, None] == tokens[:, None, :]
    for layer, pattern in enumerate(patterns):
        want = duplicate_token_score(pattern, tokens)
        # the typical mistake: counting k = q (every token is a copy of itself)
        mask = same & torch.ones(n, n, dtype=torch.bool).tril()
        has = (same & torch.ones(n, n, dtype=torch.bool).tril(-1)).any(-1)
        with_self = (pattern * mask[:, None]).sum(-1).mean((0, 2))  # then every destination is in D
        with_self_d = (pattern * mask[:, None]).sum(-1).transpose(0, 1)[:, has].mean(-1)
        all_dest = (pattern * (same & torch.ones(n, n, dtype=torch.bool).tril(-1))[:, None]).sum(-1).mean((0, 2))
        expect_tensor(f(pattern, tokens), want, f"duplicate_token_score of layer {layer}", "n_heads", atol=1e-5,
                      hints=[(with_self, "Count only EARLIER positions k < q: a token is not a duplicate of itself."),
                             (with_self_d, "Count only EARLIER positions k < q: a token is not a duplicate of itself."),
                             (all_dest, "Average only over destinations that have an earlier copy (the set D).")])
        restricted = duplicate_token_score(pattern, tokens, second_copy(n))
        expect_tensor(f(pattern, tokens, second_copy(n)), restricted,
                      f"duplicate_token_score of layer {layer} on the second copy only", "n_heads", atol=1e-5,
                      hints=[(want, "Use `destinations`: keep only the destinations where it is True.")])
        per_row = second_copy(n).expand(tokens.shape[0], n)
        expect_tensor(f(pattern, tokens, per_row), restricted, "duplicate_token_score with destinations [batch, pos]",
                      "n_heads", atol=1e-5)
        # destinations that include positions WITHOUT an earlier copy (the first copy): D is the intersection
        everywhere = torch.ones(n, dtype=torch.bool)
        replaced = (pattern * (same & torch.ones(n, n, dtype=torch.bool).tril(-1))[:, None]).sum(-1).mean((0, 2))
        expect_tensor(f(pattern, tokens, everywhere), duplicate_token_score(pattern, tokens, everywhere),
                      f"duplicate_token_score of layer {layer} with every destination allowed", "n_heads", atol=1e-5,
                      hints=[(replaced, "`destinations` narrows D, it does not replace it: keep only destinations "
                                        "that are in `destinations` AND have an earlier copy")])


@pytest.mark.exercise("induction_score")
@pytest.mark.points(3)
def test_induction_score(probe):
    tokens, patterns = probe
    f = answers().induction_score
    n = tokens.shape[1]
    dest = second_copy(n)
    for layer, pattern in enumerate(patterns):
        want = induction_score(pattern, tokens, dest)
        dup = duplicate_token_score(pattern, tokens, dest)
        unrestricted = induction_score(pattern, tokens)
        expect_tensor(f(pattern, tokens, dest), want, f"induction_score of layer {layer} on the second copy",
                      "n_heads", atol=1e-5,
                      hints=[(dup, "That is the duplicate-token score: count the key AFTER the earlier copy, "
                                   "k with t[k-1] == t[q]."),
                             (unrestricted, "Use `destinations`: keep only the destinations where it is True.")])
        expect_tensor(f(pattern, tokens), unrestricted, f"induction_score of layer {layer}, all destinations",
                      "n_heads", atol=1e-5)
        everywhere = torch.ones(n, dtype=torch.bool)
        match = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
        match[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
        match &= torch.ones(n, n, dtype=torch.bool).tril()
        replaced = (pattern * match[:, None]).sum(-1).mean((0, 2))
        expect_tensor(f(pattern, tokens, everywhere), induction_score(pattern, tokens, everywhere),
                      f"induction_score of layer {layer} with every destination allowed", "n_heads", atol=1e-5,
                      hints=[(replaced, "`destinations` narrows D, it does not replace it: keep only destinations "
                                        "that are in `destinations` AND whose token occurred earlier")])
    # a perfect induction head: the second copy attends to the token after the earlier occurrence
    perfect = one_hot_pattern(tokens.shape[0], n, induction_targets(HALF))
    expect_number(f(perfect, tokens, dest)[0], 1.0, "the induction score of a perfect induction head", tol=1e-5,
                  hint="key k counts when the token BEFORE it, t[k-1], equals the destination's token t[q]")
    dup_head = one_hot_pattern(tokens.shape[0], n, torch.where(dest, torch.arange(n) - HALF, torch.arange(n)))
    got_dup = float(f(dup_head, tokens, dest)[0])
    assert got_dup < 0.1, (f"a head that attends to the earlier copy ITSELF is a duplicate-token head, not an "
                           f"induction head, but your score for it is {got_dup:.3f}: shift the match by one position")
    got = f(patterns[1], tokens, dest)
    assert got[1] > 0.8, f"head L1H1 is the main induction head, its score should be above 0.8, got {got[1]:.3f}"


@pytest.mark.exercise("icl_score")
@pytest.mark.points(1)
def test_icl_score(induction_model, probe):
    from toylab.circuits.copying import icl_score
    from toylab.training.presets import load_shipped

    f = answers().icl_score
    tokens, _ = probe
    loss = induction_model(tokens, return_type="loss_per_token")
    for early, late in ((5, None), (3, 15)):
        want = icl_score(induction_model, tokens, early, late)
        l_ = tokens.shape[1] - 1 if late is None else late
        flipped = -want
        shifted = float(loss[:, min(l_, loss.shape[1] - 1)].mean() - loss[:, early].mean())
        value = f(induction_model, tokens, early, late)
        if abs(float(value) - flipped) < 1e-4 and abs(want) > 1e-3:
            raise AssertionError("your ICL score has the wrong sign: late minus early, negative = better with context")
        if abs(float(value) - shifted) < 1e-4 and abs(shifted - want) > 1e-3:
            raise AssertionError("off by one: the loss of token i is column i - 1 of loss_per_token")
        expect_number(value, want, f"the ICL score on the probe (early={early}, late={late})", tol=1e-4,
                      hint="mean loss of token `late` minus mean loss of token `early`")
    ckpt = load_shipped("induction-2l")
    data = make_dataset(ckpt.data_spec).sample(256, torch.Generator().manual_seed(0))
    expect_number(f(ckpt.model, data), icl_score(ckpt.model, data), "the ICL score on training data", tol=1e-4)


@pytest.mark.exercise("find_heads")
@pytest.mark.points(1)
def test_find_heads(probe):
    tokens, patterns = probe
    f = answers().find_heads
    scores = torch.tensor([[0.2, 0.9, 0.5], [0.95, 0.1, 0.7]])
    want = [(1, 0), (0, 1), (1, 2), (0, 2)]  # every score >= 0.5, highest first
    got = f(scores, 0.5)
    assert isinstance(got, list), f"expected a list of (layer, head) tuples, got {type(got).__name__}"
    assert [tuple(map(int, x)) for x in got] == want, \
        f"for scores [[0.2, 0.9, 0.5], [0.95, 0.1, 0.7]] and threshold 0.5 expected {want} (highest first, >= counts), got {got}"
    assert all(isinstance(v, int) for x in got for v in x), "layer and head must be Python ints (use int(...))"
    assert f(scores, 0.99) == [], "with no head at the threshold the answer is an empty list"
    # on the shipped model: the previous-token head and the induction heads
    dest = second_copy(tokens.shape[1])
    prev = torch.stack([previous_token_score(p) for p in patterns])
    ind = torch.stack([induction_score(p, tokens, dest) for p in patterns])
    for name, s in (("previous-token", prev), ("induction", ind)):
        truth = sorted(((l, h) for l in range(s.shape[0]) for h in range(s.shape[1]) if s[l, h] >= 0.5),
                       key=lambda lh: -float(s[lh]))
        got = f(s, 0.5)
        assert [tuple(x) for x in got] == truth, f"the {name} heads of induction-2l (>= 0.5) are {truth}, got {got}"


@pytest.mark.exercise("phase_change_step")
@pytest.mark.points(2)
def test_phase_change_step():
    from toylab.training.presets import load_shipped

    f = answers().phase_change_step
    blip = [{"step": 10 * i, "s": v} for i, v in enumerate([0.1, 0.6, 0.2, 0.7, 0.8, 0.9])]
    got = f(blip, "s", 0.5)
    assert got == 30, (f"for the values [0.1, 0.6, 0.2, 0.7, 0.8, 0.9] at steps 0, 10, ..., 50 the change that "
                       f"STAYS starts at step 30 (the 0.6 at step 10 is a blip), got {got}")
    assert f(blip[:3], "s", 0.5) is None, "if the last evaluation is below the threshold, return None"
    assert f(blip, "s", 0.05) == 0, "if every evaluation is above the threshold, return the first step"
    edge = [{"step": 10 * i, "s": v} for i, v in enumerate([0.1, 0.5, 0.6, 0.7])]
    got = f(edge, "s", 0.5)
    assert got == 10, (f"for the values [0.1, 0.5, 0.6, 0.7] and threshold 0.5 the change starts at step 10, got "
                       f"{got}" + (": a value exactly AT the threshold counts (>=, not >)" if got == 20 else ""))
    two = load_shipped("induction-2l").history
    values = [e["best_induction"] for e in two]
    truth = next(e["step"] for i, e in enumerate(two) if min(values[i:]) >= 0.5)  # the definition
    got = f(two, "best_induction", 0.5)
    assert got == truth, f"the induction score of induction-2l crosses 0.5 for good at step {truth}, got {got}"
    at = next(e for e in two if e["step"] == truth)
    assert at["loss_repeat"] < 0.5 * two[0]["loss_repeat"], "sanity: the repeated-copy loss falls at the phase change"
    one = load_shipped("induction-1l").history
    assert f(one, "best_induction", 0.5) is None, "the one-layer control never forms an induction head: expected None"


def _positional_model(prev_head: int, decoy_head: int):
    """A 1-layer, 3-head model with learned positions, built so that only a masked reading finds the truth.

    Head ``prev_head``'s positional QK matches the key one position back AND one and two positions ahead:
    the causal mask hides the later two, so on real inputs it attends to the previous position. Head
    ``decoy_head`` matches only the previous position, but weakly. The third head is random.
    """
    from toylab.model import AttnOnlyTransformer, ModelConfig

    n = 12
    m = AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=n, d_model=48, n_layers=1, n_heads=3, d_head=16,
                                        positional="learned"), seed=prev_head + 3 * decoy_head)
    with torch.no_grad():
        m.W_pos.zero_()
        m.W_pos[:, :n] = 5 * torch.eye(n)
        m.W_E[:, :n] = 0.0
        m.W_E.mul_(0.1)
        attn = m.blocks[0].attn
        for h, shifts in ((prev_head, {1: 1.0, -1: 1.0, -2: 1.0}), (decoy_head, {1: 0.5})):
            attn.W_Q[h].zero_()
            attn.W_K[h].zero_()
            attn.W_Q[h][:n, :n] = torch.eye(n)
            for j in range(n):
                for shift, w in shifts.items():
                    if 0 <= j + shift < n:
                        attn.W_K[h][j, j + shift] = w  # key at j matches the query at j + shift
    return m


@pytest.mark.hidden
@pytest.mark.exercise("previous_token_head_from_positions")
@pytest.mark.points(2)
def test_previous_token_head_from_positions(induction_model):
    from toylab.circuits.scores import previous_token_score

    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    prev_head, decoy_head = torch.randperm(3, generator=g)[:2].tolist()
    cases = [("induction-2l, layer 0", induction_model, 0),
             (f"a hand-built model (planted previous-token head {prev_head})", _positional_model(prev_head, decoy_head),
              0)]
    other = (prev_head + 1) % 3                 # a second planted head: never the same index as the first
    cases.append((f"a hand-built model (planted previous-token head {other})", _positional_model(other, prev_head), 0))
    for name, model, layer in cases:
        toks = torch.randint(1, model.cfg.d_vocab, (32, model.cfg.n_ctx), generator=g)
        _, cache = model.run_with_cache(toks, names_filter=lambda s: s.endswith("hook_pattern"))
        measured = previous_token_score(cache["pattern", layer])
        want = int(measured.argmax())
        # wrong readings, computed here: no causal mask, or the key one position AFTER the query
        W_pos = model.W_pos.detach()
        n = W_pos.shape[0]
        q = torch.einsum("pd,hde->hpe", W_pos, model.W_Q.detach()[layer])
        k = torch.einsum("pd,hde->hpe", W_pos, model.W_K.detach()[layer])
        s = q @ k.transpose(-1, -2) / model.cfg.d_head ** 0.5
        unmasked = int(s.softmax(-1).diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).argmax())
        after = int(s.softmax(-1).diagonal(offset=1, dim1=-2, dim2=-1).mean(-1).argmax())
        before = copy.deepcopy(model.state_dict())
        got = answers().previous_token_head_from_positions(model, layer)
        assert all(torch.equal(v, before[key]) for key, v in model.state_dict().items()), \
            "previous_token_head_from_positions changed the model's weights: read them, do not edit"
        assert isinstance(got, int) and not isinstance(got, bool), f"expected an int (a head), got {got!r}"
        if got == want:
            continue
        msg = ""
        if got == after:
            msg = (": your head attends to the NEXT position in the position-only pattern: the previous "
                   "position is the key at q - 1 (diagonal offset -1)")
        elif got == 0 and want != 0 and "hand-built" in name:
            msg = (": the planted head is not head 0 here; did you hard-code induction-2l's answer? Read it off "
                   "the positional QK circuit of the model you are given")
        elif got == unmasked:
            msg = (": without the causal mask the later keys take a share of the softmax that attention never "
                   "gives them — mask them (-inf) before the softmax, as the model does")
        raise AssertionError(f"on {name} you chose head {got}, but the head that attends to the previous position "
                             f"on real inputs is {want} (previous-token scores "
                             f"{[round(x, 2) for x in measured.tolist()]}){msg}")
