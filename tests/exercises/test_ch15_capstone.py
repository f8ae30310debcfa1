"""Graded tests of the capstone: plant a rule, train a model, get the rule back.

Ground truth: the rules the language planted (``make_dataset(spec).rules``) and
its exact next-token distribution (``next_token_probs``, ``active_rules``).
Two models are trained once per session and cached: the student's (their
language, their configuration) and a reference model the test trains on a
language whose seed it draws at random from seeds checked to be learnable, so
an answer hard-coded to one language fails on the other.
"""

import copy
import random

import pytest
import torch

from toylab.course.answers import expect_number, load_answers

CH = "ch15_capstone"
# language seeds of REF_SPEC whose rules the reference model learns (each rule's P(C) within 5 % of the
# truth, rule_from_weights of the solution exact, measured when the capstone was written)
REF_SEEDS = (1, 6, 7, 8, 9, 10, 11)
REF_SPEC = {"kind": "skip_trigram", "d_vocab": 24, "n_ctx": 16, "seed": 0, "n_rules": 2, "p_rule": 0.9,
            "n_triggers": 2, "p_boost": 0.5, "zipf_exponent": 1.0, "n_successors": 4}
BUDGET = 40_000
_cache: dict = {}


def answers():
    return load_answers(CH)


# ------------------------------------------------------------------ helpers
def _firing(lang, tokens, i):
    """Where rule ``i`` governs the next token: the generator's own bookkeeping."""
    return lang.active_rules(tokens) == i


def _spec_problem(spec) -> str | None:
    """Why ``spec`` breaks the capstone's constraints (None if it keeps them)."""
    from toylab.data import SkipTrigramLanguage, make_dataset

    if not isinstance(spec, dict):
        return f"design_language must return a dict (a data spec), got {type(spec).__name__}"
    if spec.get("kind") != "skip_trigram":
        return f"the spec's kind must be 'skip_trigram', got {spec.get('kind')!r}"
    try:
        lang = make_dataset(spec)
    except (ValueError, TypeError) as e:
        return f"make_dataset rejects your spec: {e}"
    assert isinstance(lang, SkipTrigramLanguage)
    if lang.d_vocab > 32 or lang.n_ctx > 16:
        return f"keep d_vocab <= 32 and n_ctx <= 16 (you have {lang.d_vocab} and {lang.n_ctx})"
    if not 1 <= lang.n_rules <= 3:
        return f"plant 1 to 3 rules (n_rules = {lang.n_rules})"
    if lang.n_triggers != lang.n_rules:
        return (f"n_triggers ({lang.n_triggers}) must equal n_rules ({lang.n_rules}): with fewer triggers two "
                "rules share a B and compete for it (the skip-trigram bug of chapter 2)")
    if lang.p_rule < 0.5:
        return f"p_rule = {lang.p_rule} is below 0.5: the rule would not decide the next token most of the time"
    tokens = lang.sample(512, torch.Generator().manual_seed(0))
    rate = float((lang.active_rules(tokens)[:, :-1] >= 0).float().mean())
    if rate < 0.05:
        return (f"a rule governs only {100 * rate:.1f} % of the predicted positions (need >= 5 %): raise p_boost "
                "(sources and triggers become frequent) or lower d_vocab")
    return None


def _student_spec() -> dict:
    """The student's spec, checked; a chained failure if design_language is wrong."""
    if "spec" not in _cache:
        try:
            spec = answers().design_language()
            problem = _spec_problem(spec)
        except Exception as e:  # noqa: BLE001 - reported as a chained failure
            problem = f"{type(e).__name__}: {e}"
        _cache["spec"] = (problem, copy.deepcopy(spec) if problem is None else None)
    problem, spec = _cache["spec"]
    if problem is not None:
        raise AssertionError(f"design_language fails ({problem}): fix it first, this exercise uses your language")
    return copy.deepcopy(spec)


def _config_problem(cfgs, spec) -> str | None:
    from toylab.model import ModelConfig
    from toylab.training.train import TrainConfig

    if not (isinstance(cfgs, tuple) and len(cfgs) == 3):
        return "train_config must return a tuple (model_cfg, train_cfg, seed)"
    mc, tc, seed = cfgs
    if not isinstance(mc, ModelConfig) or not isinstance(tc, TrainConfig):
        return f"expected (ModelConfig, TrainConfig, int), got ({type(mc).__name__}, {type(tc).__name__}, ...)"
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1000:
        return f"the seed must be an int in [0, 1000), got {seed!r}"
    if mc.n_layers != 1:
        return f"the capstone reads a one-layer model: n_layers must be 1, got {mc.n_layers}"
    if mc.n_heads > 4 or mc.d_model > 64 or mc.layernorm:
        return f"keep n_heads <= 4, d_model <= 64 and no LayerNorm (got {mc.n_heads}, {mc.d_model}, {mc.layernorm})"
    if mc.d_vocab != spec["d_vocab"] or mc.n_ctx != spec["n_ctx"]:
        return (f"the model's d_vocab and n_ctx ({mc.d_vocab}, {mc.n_ctx}) must be the language's "
                f"({spec['d_vocab']}, {spec['n_ctx']}): take them from spec")
    if tc.steps * tc.batch_size > BUDGET:
        return (f"steps * batch_size = {tc.steps * tc.batch_size} sequences is over the budget of {BUDGET}: "
                "a larger learning rate buys more than more steps")
    return None


def _train(mc, spec, tc, seed):
    from toylab.training.train import train

    return train(mc, spec, tc, seed, progress=False).model.eval()


def _student_model():
    """``(language, model)`` trained with the student's choices (cached); chained failures say so."""
    from toylab.data import make_dataset

    spec = _student_spec()
    if "model" not in _cache:
        try:
            cfgs = answers().train_config(copy.deepcopy(spec))
            problem = _config_problem(cfgs, spec)
            model = None if problem else _train(cfgs[0], spec, cfgs[1], cfgs[2])
        except Exception as e:  # noqa: BLE001
            problem, model = f"{type(e).__name__}: {e}", None
        _cache["model"] = (problem, model)
    problem, model = _cache["model"]
    if problem is not None:
        raise AssertionError(f"train_config fails ({problem}): fix it first, this exercise uses your model")
    return make_dataset(spec), copy.deepcopy(model)


def _reference():
    """``(language, model)``: the test's own model on a language with a randomly drawn seed (cached)."""
    from toylab.data import make_dataset
    from toylab.model import ModelConfig
    from toylab.training.train import TrainConfig

    if "ref" not in _cache:
        spec = dict(REF_SPEC, seed=random.choice(REF_SEEDS))
        mc = ModelConfig(d_vocab=24, n_ctx=16, d_model=32, n_layers=1, n_heads=2, positional="shortformer")
        tc = TrainConfig(steps=300, batch_size=64, lr=3e-2, warmup_steps=20, weight_decay=0.0,
                         eval_every=10**6, eval_batch=64, prefix_steps=0)
        _cache["ref"] = (spec, _train(mc, spec, tc, 0))
    spec, model = _cache["ref"]
    return make_dataset(spec), copy.deepcopy(model)


def _untrained(n_layers=1):
    from toylab.model import AttnOnlyTransformer, ModelConfig

    return AttnOnlyTransformer(ModelConfig(d_vocab=24, n_ctx=16, d_model=32, n_layers=n_layers, n_heads=2,
                                           positional="shortformer"), seed=3).eval()


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _model_probs(model, tokens):
    return model(tokens).double().softmax(-1)


# ------------------------------------------------------------------ tests
@pytest.mark.exercise("design_language")
@pytest.mark.points(1)
def test_design_language():
    spec = answers().design_language()
    problem = _spec_problem(spec)
    assert problem is None, problem


@pytest.mark.exercise("train_config")
@pytest.mark.points(2)
def test_train_config():
    ref = dict(REF_SPEC, d_vocab=28, n_ctx=12)
    cfgs = answers().train_config(copy.deepcopy(ref))
    problem = _config_problem(cfgs, ref)
    assert problem is None, f"on a spec with d_vocab=28, n_ctx=12: {problem}"
    lang, model = _student_model()
    tokens = lang.sample(512, torch.Generator().manual_seed(11))
    probs, truth = _model_probs(model, tokens), lang.next_token_probs(tokens)
    for i, (A, B, C) in enumerate(lang.rules):
        fires = _firing(lang, tokens, i)
        got, want = float(probs[fires][:, C].mean()), float(truth[fires][:, C].mean())
        assert got >= 0.75 * want, (
            f"rule {(A, B, C)}: where it fires your model gives C probability {got:.2f}, the language "
            f"{want:.2f} (need at least 3/4 of it): train longer or with a larger learning rate, add a head, "
            "or make the rule fire more often in design_language")


@pytest.mark.exercise("rule_firing_mask")
@pytest.mark.points(1)
def test_rule_firing_mask():
    from toylab.data import make_dataset

    for seed, n_rules in ((4, 2), (9, 3)):
        lang = make_dataset(dict(REF_SPEC, seed=seed, n_rules=n_rules, n_triggers=n_rules, p_boost=0.6))
        tokens = lang.sample(64, torch.Generator().manual_seed(seed))
        before = tokens.clone()
        for i, rule in enumerate(lang.rules):
            A, B, _ = rule
            got = answers().rule_firing_mask(tokens, rule)
            assert torch.equal(tokens, before), "rule_firing_mask changed `tokens` in place: work on a copy"
            assert isinstance(got, torch.Tensor) and got.shape == tokens.shape, (
                f"expected a [batch, n] = {list(tokens.shape)} bool tensor, got "
                f"{list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
            want = _firing(lang, tokens, i)
            got = got.bool()
            if torch.equal(got, want):
                continue
            shifted = torch.zeros_like(want)
            shifted[:, 1:] = want[:, :-1]
            adjacent = torch.zeros_like(want)
            adjacent[:, 1:] = (tokens[:, 1:] == B) & (tokens[:, :-1] == A)
            anywhere = (tokens == B) & (tokens == A).any(1, keepdim=True)
            hints = [(shifted, "you marked the position of the token the rule decides (t + 1); mark the "
                               "trigger's position t, where the prediction is made"),
                     (adjacent, "you required A right before B: a skip-trigram's A may be anywhere earlier"),
                     (anywhere, "you counted an A that comes after the trigger: only earlier tokens are visible"),
                     (tokens == B, "you marked every trigger B, also where no A came before it")]
            for cand, msg in hints:
                assert not torch.equal(got, cand), f"rule {rule}: {msg}"
            b, t = (got != want).nonzero()[0].tolist()
            raise AssertionError(f"rule {rule}: at sequence {b}, position {t} (token {int(tokens[b, t])}) you have "
                                 f"{bool(got[b, t])}, expected {bool(want[b, t])}")


def _check_rules(got, rules, which):
    assert isinstance(got, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == 3 for r in got), (
        f"{which}: expected a list of (A, B, C) triples, got {got!r}")
    listed = [tuple(int(x) for x in r) for r in got]
    got = set(listed)
    want = set(rules)
    if got == want and len(listed) == len(got):
        return
    if len(got) < len(listed):
        raise AssertionError(f"{which}: you returned the same rule twice ({listed}): two heads can implement the same "
                             "rule, so de-duplicate: skip a candidate whose A or B an earlier pick already uses")
    if got == {(b, a, c) for a, b, c in want}:
        raise AssertionError(f"{which}: you returned (B, A, C): the QK circuit's rows are the query (the trigger B), "
                             "its columns the key (the source A)")
    if got == {(c, b, a) for a, b, c in want}:
        raise AssertionError(f"{which}: you returned (C, B, A): the OV circuit's rows are the attended source A, its "
                             "columns the boosted output C")
    pairs = {(a, b) for a, b, _ in got}
    if pairs == {(a, b) for a, b, _ in want}:
        raise AssertionError(f"{which}: your (A, B) pairs are right but an output C is not ({sorted(got)} vs planted "
                             f"{sorted(want)}): the token predicted at B is the argmax of the direct path W_E W_U "
                             "plus A's (mean-subtracted) OV row")
    right = len(got & want)
    raise AssertionError(f"{which}: you found {sorted(got)}, the planted rules are {sorted(want)} ({right} of "
                         f"{len(want)} right): score (A, B) by how much more B attends to A than to an average token, "
                         "times how much A's OV row singles out an output")


PLANTED = [(4, 6, 8), (10, 12, 14)]


def _planted_model():
    """A one-layer model whose circuits are written by hand, with the traps of a real one.

    One-hot tokens in dims 0-23, the heads write to dims 24-47. Head 0 plants both rules
    (QK[B, A] and OV[A, C]); head 1 plants the first rule again (two heads, one rule). Query
    17's QK row is a constant 10 (it attends uniformly: softmax ignores a constant per row),
    and A = 4's OV row boosts token 19 even more than C = 8, but the direct path at B = 6
    suppresses 19, so the model predicts 8 there."""
    from toylab.model import AttnOnlyTransformer, ModelConfig

    cfg = ModelConfig(d_vocab=24, n_ctx=16, d_model=48, n_layers=1, n_heads=2, d_head=24, positional="shortformer")
    m = AttnOnlyTransformer(cfg, seed=0)
    (a1, b1, c1), (a2, b2, c2) = PLANTED
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[:, :24] = torch.eye(24)
        m.W_U[24:] = torch.eye(24)
        m.W_U[b1, 19] = -10.0                       # the direct path at B1 suppresses 19
        attn = m.blocks[0].attn
        for h in range(2):
            attn.W_K[h, :24] = torch.eye(24)
            attn.W_V[h, :24] = torch.eye(24)
            attn.W_Q[h, b1, a1] = 6.0
            attn.W_O[h, a1, 24 + c1] = 5.0
            attn.W_O[h, a1, 24 + 19] = 6.0
        attn.W_Q[0, b2, a2] = 4.0
        attn.W_O[0, a2, 24 + c2] = 4.0
        attn.W_Q[0, 17, :] = 10.0                   # a query that attends uniformly
    return m.eval()


@pytest.mark.exercise("rule_from_weights")
@pytest.mark.points(3)
def test_rule_from_weights():
    probe = _untrained()
    got = answers().rule_from_weights(probe, 2)  # an untrained model first: cheap, and the shape of the answer
    assert isinstance(got, (list, tuple)) and len(got) == 2, f"asked for 2 rules, got {got!r}"
    lang, model = _reference()
    kept = copy.deepcopy(model)
    got = answers().rule_from_weights(model, len(lang.rules))
    assert _same_weights(model, kept), "rule_from_weights changed the model's weights: read them, do not edit"
    _check_rules(got, lang.rules, f"the test's model (language seed {lang.seed})")
    got = answers().rule_from_weights(_planted_model(), 2)
    listed = [tuple(int(x) for x in r) for r in got] if isinstance(got, (list, tuple)) else got
    if isinstance(listed, list) and any(len(r) == 3 and r[1] == 17 for r in listed):
        raise AssertionError(f"on a hand-built model you returned {listed}, with B = 17: query 17's QK row is one "
                             "constant (it attends uniformly, softmax ignores a constant per row). Subtract each QK "
                             "row's mean over the keys, and each OV row's mean over the outputs, before ranking")
    if isinstance(listed, list) and (4, 6, 19) in listed:
        raise AssertionError(f"on a hand-built model you returned {listed}: A = 4's OV row boosts 19 most, but the "
                             "direct path W_E W_U at B = 6 pushes 19 down, so the model predicts 8 there: C is the "
                             "argmax of the direct path plus the boost")
    _check_rules(got, PLANTED, "a hand-built model (two heads share a rule, a uniform query, a direct path)")
    lang, model = _student_model()
    _check_rules(answers().rule_from_weights(model, len(lang.rules)), lang.rules, "your model")


@pytest.mark.exercise("rule_by_intervention")
@pytest.mark.points(2)
def test_rule_by_intervention():
    from toylab.data import make_dataset

    warm = make_dataset(dict(REF_SPEC, seed=REF_SEEDS[0]))  # an untrained model first: cheap
    answers().rule_by_intervention(_untrained(), warm.sample(4, torch.Generator().manual_seed(0)), warm.rules[0], 22)
    lang, model = _reference()
    tokens = lang.sample(128, torch.Generator().manual_seed(5))
    before = tokens.clone()
    used = {t for r in lang.rules for t in r}
    spare = [t for t in range(1, lang.d_vocab) if t not in used]
    probs = _model_probs(model, tokens)
    for i, rule in enumerate(lang.rules):
        A, B, C = rule
        rep = spare[i % len(spare)]
        got = answers().rule_by_intervention(model, tokens, rule, rep)
        assert torch.equal(tokens, before), ("rule_by_intervention changed `tokens` in place (did you write the "
                                             "replacement into them?): corrupt a copy")
        fires = _firing(lang, tokens, i)
        corrupted = torch.where(tokens == A, rep, tokens)
        pc = _model_probs(model, corrupted)
        want = float((probs[..., C] - pc[..., C])[fires].mean())
        lp = float((probs[..., C].log() - pc[..., C].log())[fires].mean())
        everywhere = float((probs[..., C] - pc[..., C]).mean())
        first_only = tokens.clone()
        for b in range(tokens.shape[0]):
            hit = (tokens[b] == A).nonzero()
            if len(hit):
                first_only[b, hit[0, 0]] = rep
        p1 = _model_probs(model, first_only)
        once = float((probs[..., C] - p1[..., C])[fires].mean())
        shift = torch.zeros_like(fires)
        shift[:, 1:] = fires[:, :-1]
        late = float((probs[..., C] - pc[..., C])[shift].mean())
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"expected a float, got {type(got).__name__}") from None
        hints = [(-want, "the sign is flipped: the effect is clean minus corrupted, positive when removing A hurts C"),
                 (lp, "that is the drop in log-probability; the exercise asks for the drop in probability"),
                 (everywhere, "you averaged over every position; average only where the rule fires"),
                 (once, "you replaced only the first A; replace every occurrence, or a later A still fires the rule"),
                 (late, "you read the prediction one position late: the logits at t predict the token at t + 1")]
        for cand, msg in hints:
            if abs(value - cand) < 1e-4 and abs(value - want) > 1e-4:
                raise AssertionError(f"rule {rule}: your effect is {value:.4g}, expected {want:.4g}: {msg}")
        expect_number(value, want, f"the effect of removing A on rule {rule}", tol=1e-4,
                      hint="mean over the firing positions of P_clean(C) - P_corrupted(C)")
    quiet = torch.where(tokens == lang.rules[0][0], spare[0], tokens)  # no A left: the rule never fires
    expect_number(answers().rule_by_intervention(model, quiet, lang.rules[0], spare[1]), 0.0,
                  "the effect on tokens where the rule never fires", tol=0.0,
                  hint="the docstring asks for 0.0 when the rule never fires (a mean over nothing is NaN)")


@pytest.mark.hidden
@pytest.mark.exercise("is_rule_learned")
@pytest.mark.points(2)
def test_is_rule_learned():
    from toylab.data import make_dataset

    untrained = _untrained()
    for seed in REF_SEEDS[:2]:  # an untrained model first: cheap, and no language's rule is learned by it
        warm = make_dataset(dict(REF_SPEC, seed=seed))
        first = answers().is_rule_learned(untrained, warm, warm.rules[0])
        assert first in (True, False), f"expected a bool, got {first!r}"
        assert not first, (f"an untrained model has not learned {warm.rules[0]}, but you say it has: check that "
                           "the model actually predicts C where the rule fires, not only that the rule fires")
    lang, model = _reference()
    for rule in lang.rules:
        assert bool(answers().is_rule_learned(model, lang, rule)), (
            f"the test's model learned {rule} (it predicts C where the rule fires, and removing A takes that "
            "away), but you say it did not: are your thresholds too strict?")
    (a1, b1, c1), (a2, b2, c2) = lang.rules[:2]
    for fake, why in (((a1, b2, c1), "the source of one rule with the trigger of another"),
                      ((a2, b1, c2), "the source of one rule with the trigger of another"),
                      ((a1, b1, c2), "a real (A, B) pair with another rule's output C")):
        assert not answers().is_rule_learned(model, lang, fake), (
            f"{fake} mixes {why}; the model never learned it, but you say it did: does your check look at C "
            "where this rule fires, and at what removing A does?")
    used = {t for r in lang.rules for t in r}
    x = next(t for t in range(1, lang.d_vocab) if t not in used)
    assert not answers().is_rule_learned(model, lang, (x, b1, c1)), (
        f"{(x, b1, c1)} puts a token of no rule before a real trigger: the model predicts {c1} where it fires, but "
        f"only because the real source {a1} is often there too; taking {x} away changes nothing. Check what "
        "removing A does, not only that C is predicted")
    other_seed = next(s for s in REF_SEEDS if s != lang.seed)
    other = make_dataset(dict(REF_SPEC, seed=other_seed))
    foreign = [r for r in other.rules if r not in lang.rules][0]
    assert not answers().is_rule_learned(model, other, foreign), (
        f"{foreign} is a rule of another language (seed {other_seed}), which this model never saw, but you say it "
        "learned it: base the decision on the model's predictions, not on the language's rule list")
