"""Graded tests of chapter 7, "Probes and steering".

Ground truth: the library's independent implementations (``toylab.features.probes``
for probes and baselines, ``toylab.features.steering`` for steered runs), observed
forward passes of random models of other shapes, a closed-form probe solved a
second way (an augmented least-squares system), labels the test plants itself,
and models *built* with a previous-token head in a layer the test chooses, so the
write site is known by construction, not recorded from a solution.
"""

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers
from toylab.model import AttnOnlyTransformer, ModelConfig

CH = "ch07_probes_and_steering"


def answers():
    return load_answers(CH)


# ------------------------------------------------------------------ helpers
def planted_previous_token_model(n_layers: int, layer: int, d_vocab: int = 20,
                                 seed: int = 0) -> AttnOnlyTransformer:
    """A shortformer model whose only working head, ``L{layer}H1``, is a previous-token head.

    Residual dimensions: 10 positional (the shortformer's W_pos, one-hot), 11 token
    (``W_E``), 11 "previous token" (written by the planted head through a random
    rotation). Query and key read the one-hot positions so that position p attends
    to p - 1 (a margin of 10 logits); every other head writes nothing (W_O = 0)."""
    n_ctx, d_tok = 10, 11
    cfg = ModelConfig(d_vocab=d_vocab, n_ctx=n_ctx, d_model=32, n_layers=n_layers, n_heads=2,
                      d_head=16, positional="shortformer")
    model = AttnOnlyTransformer(cfg, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    tok = slice(n_ctx, n_ctx + d_tok)
    prev = slice(n_ctx + d_tok, 32)
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[:, tok] = torch.randn(d_vocab, d_tok, generator=g)
        model.W_pos.zero_()
        model.W_pos[:, :n_ctx] = torch.eye(n_ctx)
        model.W_U.copy_(torch.randn(32, d_vocab, generator=g) / 5)
        for l, block in enumerate(model.blocks):
            attn = block.attn
            attn.W_O.zero_()
            if l != layer:
                continue
            h = 1
            attn.W_Q[h].zero_(); attn.W_K[h].zero_(); attn.W_V[h].zero_()
            attn.W_Q[h, :n_ctx, :n_ctx] = 40.0 * torch.eye(n_ctx)
            for j in range(n_ctx - 1):
                attn.W_K[h, j, j + 1] = 1.0
            attn.W_V[h, tok, :d_tok] = torch.eye(d_tok)
            rot, _ = torch.linalg.qr(torch.randn(d_tok, d_tok, generator=g))
            attn.W_O[h, :d_tok, prev] = rot
    return model


def random_model(n_layers, seed, positional="learned"):
    cfg = ModelConfig(n_layers=n_layers, n_heads=3, d_model=24, d_head=8, d_vocab=20, n_ctx=12,
                      positional=positional)
    return AttnOnlyTransformer(cfg, seed=seed)


# ---------------------------------------------------------------- exercises
@pytest.mark.exercise("majority_baseline")
@pytest.mark.points(1)
def test_majority_baseline():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        train = torch.multinomial(torch.tensor([0.5, 0.3, 0.2, 0.1]), 300, replacement=True, generator=g)
        test = torch.multinomial(torch.tensor([0.2, 0.5, 0.2, 0.1]), 200, replacement=True, generator=g)
        train[torch.randperm(300, generator=g)[:60 if trial < 4 else 200]] = -1   # last trial: -1 is the most common
        test[torch.randperm(200, generator=g)[:40]] = -1
        tr, te = train.clone(), test.clone()
        m = int(torch.bincount(train[train >= 0]).argmax())
        want = float((test[test >= 0] == m).double().mean())
        got = answers().majority_baseline(train, test)
        assert torch.equal(train, tr) and torch.equal(test, te), "you modified the labels in place"
        m_test = int(torch.bincount(test[test >= 0]).argmax())
        if isinstance(got, (int, float)) and m_test != m and \
                abs(got - float((test[test >= 0] == m_test).double().mean())) < 1e-9:
            raise AssertionError("you took the majority class of the TEST labels: the baseline must be "
                                 "decided on the training rows, like any probe")
        m_bad = int(torch.bincount(train + 1).argmax()) - 1          # -1 counted as a class
        bad = (float((test[test >= 0] == m_bad).double().mean()), float((test == m_bad).double().mean()))
        if m_bad != m and isinstance(got, (int, float)) and min(abs(got - b) for b in bad) < 1e-9 \
                and abs(got - want) > 1e-9:
            raise AssertionError("you counted the -1 rows as a class (here they are the most common training "
                                 "value): rows outside the task take no part in the majority")
        if isinstance(got, (int, float)) and abs(got - float((test == m).double().mean())) < 1e-9:
            raise AssertionError("you averaged over the -1 rows too: leave rows outside the task out of "
                                 "the accuracy")
        expect_number(got, want, f"majority baseline (trial {trial})", tol=1e-9,
                      hint="count the training labels >= 0, take the most frequent class, and score "
                           "it on the test labels >= 0")


@pytest.mark.exercise("grouped_split")
@pytest.mark.points(2)
def test_grouped_split():
    g = torch.Generator().manual_seed(1)
    for n_groups, frac, seed in ((40, 0.25, 0), (7, 0.5, 3), (3, 0.9, 1), (25, 0.01, 2)):
        ids = torch.randperm(1000, generator=g)[:n_groups] + 500      # not 0..G-1
        groups = ids[torch.randint(0, n_groups, (30 * n_groups,), generator=g)]
        before = groups.clone()
        mask = answers().grouped_split(groups, frac, seed)
        assert torch.equal(groups, before), "you modified groups in place"
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == groups.shape, \
            f"return a bool tensor of shape [{groups.shape[0]}], one flag per row"
        test_ids, train_ids = set(groups[mask].tolist()), set(groups[~mask].tolist())
        both = test_ids & train_ids
        assert not both, (f"groups {sorted(both)[:5]} have rows on both sides of the split: a sequence that "
                          "lends rows to training leaks its tokens into the test; choose whole groups")
        want = min(max(1, round(frac * n_groups)), n_groups - 1)
        assert len(test_ids) == want, (f"{len(test_ids)} of {n_groups} groups held out for test_frac={frac}, "
                                       f"expected round(test_frac * G) clamped to [1, G-1] = {want}"
                                       + (" (test_frac counts groups, not rows)" if len(test_ids) != want else ""))
        again = answers().grouped_split(groups, frac, seed)
        assert torch.equal(mask, again), "the same seed must give the same split (use a seeded torch.Generator)"
    groups = torch.arange(40).repeat_interleave(5)
    masks = {tuple(answers().grouped_split(groups, 0.25, s).tolist()) for s in range(4)}
    assert len(masks) > 1, "different seeds should give different splits"


@pytest.mark.exercise("control_task_labels")
@pytest.mark.points(2)
def test_control_task_labels():
    g = torch.Generator().manual_seed(2)
    n_types = 3000
    types = torch.randint(0, n_types, (20000,), generator=g) * 7 + 3
    labels = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), 20000, replacement=True, generator=g)
    labels[torch.randperm(20000, generator=g)[:2000]] = -1
    t0, l0 = types.clone(), labels.clone()
    ctrl = answers().control_task_labels(types, labels, 0)
    assert torch.equal(types, t0) and torch.equal(labels, l0), "you modified an input in place"
    assert isinstance(ctrl, torch.Tensor) and ctrl.shape == labels.shape, \
        f"return one label per row, shape [{labels.shape[0]}]"
    ctrl = ctrl.long()
    assert torch.equal(ctrl == -1, labels == -1), "rows outside the task (label -1) must stay -1, and only they"
    assert not torch.equal(ctrl, labels), "you returned the task's own labels: the control's labels are random"
    valid = labels >= 0
    assert set(ctrl[valid].unique().tolist()) <= {0, 1, 2}, "control labels must come from the task's labels"
    # one label per type: every type's valid rows agree
    uniq, inv = torch.unique(types[valid], return_inverse=True)
    lo = torch.full((uniq.numel(),), 99).scatter_reduce(0, inv, ctrl[valid], "amin")
    hi = torch.full((uniq.numel(),), -99).scatter_reduce(0, inv, ctrl[valid], "amax")
    assert torch.equal(lo, hi), ("rows of the same token type got different control labels: draw ONE label "
                                 "per type and give it to every row of that type")
    per_type = torch.bincount(lo, minlength=3).double() / uniq.numel()
    task = torch.bincount(labels[valid], minlength=3).double() / int(valid.sum())
    if float((per_type - 1 / 3).abs().max()) < 0.04:
        raise AssertionError(f"your labels are uniform over the classes ({per_type.tolist()}); draw them from "
                             f"the task's label distribution ({[round(x, 2) for x in task.tolist()]})")
    assert float((per_type - task).abs().max()) < 0.04, \
        (f"share of types per control label {[round(x, 3) for x in per_type.tolist()]}, expected about the "
         f"task's label frequencies {[round(x, 3) for x in task.tolist()]}")
    assert torch.equal(ctrl, answers().control_task_labels(types, labels, 0).long()), \
        "the same seed must give the same control labels"
    assert not torch.equal(ctrl, answers().control_task_labels(types, labels, 1).long()), \
        "another seed should give other control labels"


def _ridge_reference(x, y, xt, C, lam):
    """The same probe solved as an augmented least-squares problem, [Z; sqrt(lam N) I] W = [Y - Ybar; 0]."""
    x, xt = x.double(), xt.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    Z, Zt = (x - mu) / sd, (xt - mu) / sd
    Y = torch.nn.functional.one_hot(y, C).double()
    ybar = Y.mean(0)
    n, d = Z.shape
    A = torch.cat([Z, (lam * n) ** 0.5 * torch.eye(d, dtype=torch.float64)])
    B = torch.cat([Y - ybar, torch.zeros(d, C, dtype=torch.float64)])
    W = torch.linalg.lstsq(A, B).solution
    return Zt @ W + ybar, (Z, Zt, Y, ybar, mu, sd)


@pytest.mark.exercise("least_squares_probe")
@pytest.mark.points(2)
def test_least_squares_probe():
    g = torch.Generator().manual_seed(3)
    for n, d, C, lam in ((300, 8, 4, 0.1), (500, 12, 6, 0.0), (200, 5, 3, 0.5)):
        centres = torch.randn(C, d, generator=g) * 2 + 3
        y = torch.randint(0, C, (n,), generator=g)
        x = centres[y] * torch.linspace(0.5, 4, d) + torch.randn(n, d, generator=g)
        yt = torch.randint(0, C, (n // 2,), generator=g)
        xt = centres[yt] * torch.linspace(0.5, 4, d) + torch.randn(n // 2, d, generator=g) + 0.5
        x0, xt0 = x.clone(), xt.clone()
        want, (Z, Zt, Y, ybar, mu, sd) = _ridge_reference(x, y, xt, C, lam)
        got = answers().least_squares_probe(x, y, xt, C, lam)
        assert torch.equal(x, x0) and torch.equal(xt, xt0), "you modified an input in place"

        def solve(Zm, reg):
            return torch.linalg.solve(Zm.T @ Zm + reg * torch.eye(d, dtype=torch.float64), Zm.T @ (Y - ybar))
        W = solve(Z, lam * n)
        xd, xtd = x.double(), xt.double()
        own = (xtd - xtd.mean(0)) / xtd.std(0)
        hints = [(xtd @ solve(xd, lam * n) + ybar, "standardise the activations first, z = (x - mu) / sigma"),
                 (own @ W + ybar, "standardise the TEST rows with the TRAINING mu and sigma, not their own")]
        if lam > 0:
            hints.append((Zt @ solve(Z, lam) + ybar, "the ridge term is lambda * N * I (N training rows)"))
        hints.append((Zt @ W, "add the mean one-hot label Ybar back (the intercept)"))
        expect_tensor(got, want, f"probe scores (N={n}, d={d}, C={C}, lambda={lam})", "M, n_classes",
                      atol=1e-6, rtol=1e-6, hints=hints)


@pytest.mark.exercise("predicted_logit_shift")
@pytest.mark.points(1)
def test_predicted_logit_shift():
    from toylab.features.steering import run_with_steering
    g = torch.Generator().manual_seed(4)
    for n_layers, seed in ((1, 0), (3, 1)):
        model = random_model(n_layers, seed)
        tokens = torch.randint(0, 20, (3, 12), generator=g)
        v = torch.randn(24, generator=g)
        c = 1.7
        hook = f"blocks.{n_layers - 1}.hook_resid_post"
        observed = (run_with_steering(model, tokens, hook, v, c) - run_with_steering(model, tokens, hook, v, 0.0))
        W_U = model.W_U.detach().clone()
        got = answers().predicted_logit_shift(W_U, v.clone(), c)
        expect_tensor(got, observed[1, 5], f"logit shift ({n_layers}-layer model)", "d_vocab",
                      hints=[(v @ W_U, "multiply by the coefficient c"),
                             (-c * (v @ W_U), "the sign is flipped: adding c v raises the logits by c v W_U")])


@pytest.mark.exercise("which_hook_for_previous_token")
@pytest.mark.points(3)
def test_which_hook_for_previous_token(induction_model):
    from toylab.data import InductionData, repeated_tokens
    from toylab.circuits.scores import head_detector_scores
    g = torch.Generator().manual_seed(5)
    for n_layers, layer, seed in ((3, 1, 0), (2, 1, 1), (3, 2, 2), (2, 0, 3)):
        model = planted_previous_token_model(n_layers, layer, seed=seed)
        tokens = torch.randint(1, 20, (60, 10), generator=g)
        tokens[:, 0] = 0
        got = answers().which_hook_for_previous_token(model, tokens.clone())
        want = f"blocks.{layer}.hook_resid_post"
        if got == want:
            continue
        if got == "hook_embed":
            raise AssertionError(f"you chose 'hook_embed' in a model whose previous-token head is in layer "
                                 f"{layer}: before any attention the stream holds only the current token. Did "
                                 "you label row p with x_p instead of x_(p-1), score the probe on its training "
                                 "rows, or compare with 0 instead of chance?")
        if isinstance(got, str) and got.startswith("blocks.") and got.endswith("hook_resid_post"):
            l = int(got.split(".")[1])
            raise AssertionError(f"you chose {got!r}, but this {n_layers}-layer model's previous-token head is "
                                 f"in layer {layer}: " + ("too early: nothing has written x_(p-1) there yet"
                                                          if l < layer else
                                                          "too late: it is already readable one layer earlier")
                                 + ". Did you hard-code the shipped model's answer or mis-align the labels?")
        raise AssertionError(f"return one of 'hook_embed', 'blocks.L.hook_resid_post'; got {got!r}")
    tokens = InductionData(d_vocab=128, n_ctx=32).sample(64, torch.Generator().manual_seed(6))
    prev = head_detector_scores(induction_model, repeated_tokens(128, 15, 16, g))["previous_token"]
    want_layer = int(prev.max(1).values.argmax())
    got = answers().which_hook_for_previous_token(induction_model, tokens)
    assert got == f"blocks.{want_layer}.hook_resid_post", \
        (f"on induction-2l you chose {got!r}; its previous-token head is in layer {want_layer} "
         f"(previous-token scores {prev.tolist()})")


@pytest.mark.exercise("predict_logit_change")
@pytest.mark.points(2)
def test_predict_logit_change():
    from toylab.features.steering import run_with_steering
    g = torch.Generator().manual_seed(7)
    cases = []
    for n_layers, positional, seed in ((2, "learned", 0), (3, "shortformer", 1), (1, "learned", 2)):
        model = random_model(n_layers, seed, positional)
        last = n_layers - 1
        cases += [(model, f"blocks.{last}.hook_resid_post", True), (model, f"blocks.{last}.hook_attn_out", True),
                  (model, "hook_embed", False), (model, f"blocks.{last}.hook_resid_pre", False)]
    cases.append((random_model(0, 3, "none"), "hook_embed", True))
    for model, hook, exact in cases:
        tokens = torch.randint(0, 20, (4, 12), generator=g)
        v = torch.randn(24, generator=g) * 2
        token = int(torch.randint(0, 20, (1,), generator=g))
        shift = (run_with_steering(model, tokens, hook, v, 1.5)
                 - run_with_steering(model, tokens, hook, v, 0.0))[..., token]
        got = answers().predict_logit_change(model, hook, v.clone(), 1.5, token)
        where = f"{hook} of a {model.cfg.n_layers}-layer model"
        if exact:
            if got is None:
                raise AssertionError(f"at {where} nothing but W_U lies between the hook and the logits, so "
                                     f"the change is exact: predict it (observed {float(shift[0, 0]):.4g})")
            expect_number(got, float(shift[0, 0]), f"the logit change at {where}", tol=1e-3,
                          hint="c (v @ W_U)[token]")
        elif got is not None:
            raise AssertionError(f"at {where} the steered stream still passes through attention: the observed "
                                 f"change of logit {token} varies from {float(shift.min()):.3g} to "
                                 f"{float(shift.max()):.3g} across positions, so no exact prediction exists; "
                                 "return None")


@pytest.mark.hidden
@pytest.mark.exercise("probe_verdict")
@pytest.mark.points(2)
def test_probe_verdict():
    from toylab.features.probes import probe_with_control
    g = torch.Generator().manual_seed(8)
    n_seq, n_pos, n_types, d = 40, 30, 40, 16
    N = n_seq * n_pos
    types = torch.randint(0, n_types, (N,), generator=g)
    groups = torch.arange(n_seq).repeat_interleave(n_pos)
    E = torch.randn(n_types, d, generator=g)
    token_acts = E[types] + 0.1 * torch.randn(N, d, generator=g)
    skewed = (torch.rand(N, generator=g) < 0.2).long()            # 80 / 20, independent of the type
    per_type = torch.randint(0, 2, (n_types,), generator=g)[types]  # a function of the type only
    balanced = torch.randint(0, 2, (N,), generator=g)
    u = torch.randn(d, generator=g)
    planted = 3.0 * (2 * balanced[:, None] - 1) * u + torch.randn(N, d, generator=g)
    cases = [("nothing", token_acts, skewed, "the labels are independent of the activations"),
             ("token identity", token_acts, per_type, "the labels are a function of the token type"),
             ("readable", planted, balanced, "the label is planted along a direction, apart from the type")]
    # numbers given directly: a margin too small to be more than the noise of a few hundred rows
    for acc, ctrl, maj, want in ((0.81, 0.30, 0.80, "nothing"), (0.84, 0.80, 0.60, "token identity"),
                                 (0.90, 0.60, 0.55, "readable")):
        got = answers().probe_verdict(acc, ctrl, maj)
        if got != want:
            raise AssertionError(
                f"you said {got!r} for accuracy {acc:.2f}, control {ctrl:.2f}, majority {maj:.2f}; expected "
                f"{want!r}: " + ("0.01 above the majority baseline is within the noise of a few hundred "
                                 "held-out rows: beat the majority clearly, by a margin of a few per cent"
                                 if want == "nothing" else
                                 "the control task is solved almost as well (selectivity 0.04): the probe "
                                 "may be reading the token type" if want == "token identity" else
                                 "it beats the majority and the control clearly"))
    for want, acts, labels, why in cases:
        r = probe_with_control(acts, labels, types, groups=groups, max_iter=50)
        got = answers().probe_verdict(r["accuracy"], r["control_accuracy"], r["majority"])
        nums = (f"accuracy {r['accuracy']:.2f}, control {r['control_accuracy']:.2f}, "
                f"majority {r['majority']:.2f}")
        if got != want:
            extra = ""
            if want == "nothing" and r["accuracy"] > 0.6:
                extra = " Beating chance (0.5) is not enough: compare with the majority baseline."
            if want == "token identity":
                extra = " The control task is solved as well as the task: selectivity is about zero."
            raise AssertionError(f"you said {got!r} for {nums}; expected {want!r} ({why}).{extra}")
