"""Graded tests of chapter 9, "Causal scrubbing".

Ground truth: the induction generator's hidden variables (offsets, structures,
copied segments), identities of the score and the bootstrap recomputed here
with many draws, and ``toylab.discovery.scrubbing.scrub`` on the shipped
``induction-2l`` (and on a copy whose heads are renumbered, so that an answer
that writes head indices down fails).
"""

import copy

import pytest
import torch

from toylab.course.answers import expect_number, load_answers

CH = "ch09_causal_scrubbing"


def answers():
    return load_answers(CH)


def pool(model, n_structures=16, seed=0):
    """A pool as in the chapter: structures x 2 token draws x 3 noise draws, with its classes and graph."""
    from toylab.data import make_dataset
    from toylab.discovery.graph import Graph
    from toylab.discovery.scrubbing import EquivalenceClasses, redraw_tokens
    from toylab.training.presets import get_preset

    spec = get_preset("induction-2l").data
    gen = torch.Generator().manual_seed(seed)
    base = make_dataset(spec).sample_batch(n_structures, gen)
    by_structure, _ = redraw_tokens(base, spec["d_vocab"], 2, gen, keep="structure")
    batch, parent = redraw_tokens(by_structure, spec["d_vocab"], 3, gen, keep="segment")
    return batch, EquivalenceClasses.from_induction(batch, segment=parent), Graph(model)


@pytest.mark.exercise("loss_recovered")
@pytest.mark.points(1)
def test_loss_recovered():
    g = torch.Generator().manual_seed(3)
    cases = [(0.3, 0.4, 4.9), (1.0, 1.0, 2.0), (0.2, 5.5, 4.8), (0.5, 0.3, 3.0)]
    cases += [tuple(sorted(torch.rand(3, generator=g).mul(5).tolist())) for _ in range(3)]
    for lm, lh, ls in cases:
        want = (ls - lh) / (ls - lm)
        got = answers().loss_recovered(lm, lh, ls)
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"loss_recovered should return a float, got {type(got).__name__}") from None
        if abs(value - want) > 1e-6 and abs(value - (1 - want)) < 1e-6:
            raise AssertionError(f"for L_model={lm:.3f}, L_hyp={lh:.3f}, L_scrub={ls:.3f} you return "
                                 f"{value:.4f} = 1 - the score: that is the share of the loss *lost*; the "
                                 "full scrub is the zero of the score, the model its one")
        if abs(value - want) > 1e-6 and lh != ls and abs(value - (ls - lm) / (ls - lh)) < 1e-6:
            raise AssertionError(f"you return {value:.4f} = (L_scrub - L_model) / (L_scrub - L_hyp): the ratio is "
                                 "inverted (upside down); the gap the model closes, L_scrub - L_model, is the "
                                 "denominator")
        if abs(value - want) > 1e-6 and abs(value - (ls - lh) / lm) < 1e-6:
            raise AssertionError("you divide by L_model; divide by the gap the model closes, L_scrub - L_model")
        if abs(value - want) > 1e-6 and abs(value - (ls - lh) / ls) < 1e-6:
            raise AssertionError("you divide by L_scrub; divide by the gap the model closes, L_scrub - L_model")
        if abs(value - want) > 1e-6 and abs(value - min(max(want, 0.0), 1.0)) < 1e-6:
            raise AssertionError(f"you clip the score to [0, 1] (the true value is {want:.3f}): a score below 0 or "
                                 "above 1 is information (a hypothesis worse than the full scrub, or resampling "
                                 "that helped), keep it")
        expect_number(value, want, f"loss recovered for L_model={lm:.3f}, L_hyp={lh:.3f}, L_scrub={ls:.3f}",
                      tol=1e-6, hint="(L_scrub - L_hyp) / (L_scrub - L_model); it may be negative or above 1, "
                      "do not clip it")
    try:
        got = answers().loss_recovered(1.5, 1.0, 1.5)
    except ValueError:
        pass
    else:
        raise AssertionError(f"with L_scrub == L_model = 1.5 there is no gap to recover and the score is "
                             f"undefined; raise a ValueError (you returned {got!r})")


def offset_truth(batch):
    return [(bool(r), int(o) if r else None) for r, o in zip(batch.has_repeat, batch.offset)]


def same_partition(labels, keys) -> bool:
    labels = [int(x) for x in labels]
    for i in range(len(keys)):
        for j in range(len(keys)):
            if (labels[i] == labels[j]) != (keys[i] == keys[j]):
                return False
    return True


@pytest.mark.exercise("offset_classes")
@pytest.mark.points(1)
def test_offset_classes():
    from toylab.data.induction import InductionData

    for seed, (lo, hi, p_rep) in enumerate([(2, 20, 0.6), (3, 9, 0.8), (1, 5, 0.5)]):
        data = InductionData(d_vocab=40, n_ctx=24, min_offset=lo, max_offset=hi, p_repeat=p_rep, p_end=0.2)
        batch = data.sample_batch(80, torch.Generator().manual_seed(seed))
        before = batch.tokens.clone(), batch.dst_start.clone(), batch.src_start.clone()
        got = answers().offset_classes(batch)
        assert isinstance(got, torch.Tensor) and got.shape == (80,), \
            f"offset_classes should return a LongTensor [80], got {type(got).__name__} {getattr(got, 'shape', '')}"
        assert not got.dtype.is_floating_point, "class labels are integers (a LongTensor)"
        assert torch.equal(before[0], batch.tokens) and torch.equal(before[1], batch.dst_start) \
            and torch.equal(before[2], batch.src_start), "offset_classes changed the batch it was given"
        keys = offset_truth(batch)
        if same_partition(got, keys):
            continue
        if same_partition(got, [int(o) for o in batch.offset]):
            raise AssertionError("sequences without a repeat share a class with repeats of their drawn offset: "
                                 "the generator draws an offset for every sequence, but without a repeat it "
                                 "means nothing; give those sequences one class of their own (use has_repeat)")
        rep = batch.has_repeat
        if same_partition(got[rep], [k for k, r in zip(keys, rep) if r]) and not same_partition(got[~rep], [0] * int((~rep).sum())):
            raise AssertionError("your classes of the sequences with a repeat are right, but the sequences "
                                 "without a repeat must share one class of their own (neither has a repeat)")
        if same_partition(got, [(bool(r), int(d)) for r, d in zip(batch.has_repeat, batch.src_start)]):
            raise AssertionError("your classes group by where the source starts (src_start), not by the offset "
                                 "d - s")
        if same_partition(got, [(bool(r), int(d)) for r, d in zip(batch.has_repeat, batch.dst_start)]):
            raise AssertionError("your classes group by where the copy starts (dst_start), not by the offset "
                                 "d - s")
        raise AssertionError("two sequences must share a label exactly when both have a repeat with the same "
                             "offset d - s (or neither has a repeat)")


@pytest.mark.exercise("resample_within_class")
@pytest.mark.points(2)
def test_resample_within_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 12, (90,), generator=g)
    labels[:5] = 40  # a class of five; 41 below is a class of one
    labels[5] = 41
    keep = labels.clone()
    out = answers().resample_within_class(labels, torch.Generator().manual_seed(1))
    assert isinstance(out, torch.Tensor) and out.shape == labels.shape, \
        f"return a LongTensor of indices, shape [{len(labels)}], got {getattr(out, 'shape', type(out).__name__)}"
    assert torch.equal(labels, keep), "resample_within_class changed the labels it was given"
    assert not out.dtype.is_floating_point, "return integer indices"
    if not torch.equal(labels[out], labels):
        bad = int(torch.nonzero(labels[out] != labels)[0])
        raise AssertionError(f"sequence {bad} (class {int(labels[bad])}) is replaced by sequence {int(out[bad])} "
                             f"of class {int(labels[out[bad]])}: resampling must stay inside the class the "
                             "hypothesis calls equivalent, otherwise it tests a different claim")
    if not torch.equal(torch.sort(out).values, torch.arange(len(labels))):
        raise AssertionError("the result is not a permutation: some sequences appear twice and others never "
                             "(that is sampling with replacement); shuffle each class instead")
    if torch.equal(out, torch.arange(len(labels))):
        raise AssertionError("you return the identity: every sequence replaced by itself tests nothing")
    again = answers().resample_within_class(labels, torch.Generator().manual_seed(1))
    assert torch.equal(again, out), "the same generator seed must give the same permutation (draw from generator)"
    # uniform within a class: over many seeds, member 0 of the class of five lands on each member ~1/5 of the time
    counts = torch.zeros(5)
    for s in range(300):
        o = answers().resample_within_class(labels, torch.Generator().manual_seed(100 + s))
        counts[int(o[0])] += 1
    freq = counts / counts.sum()
    if freq[0] == 0:
        raise AssertionError("a sequence is never replaced by itself: a uniform permutation leaves an element in "
                             f"place with probability 1/k (here 1/5); you drew only derangements or a fixed shift "
                             f"(frequencies {[round(float(f), 2) for f in freq]})")
    assert (freq - 0.2).abs().max() < 0.09, \
        f"the permutation is not uniform within the class: member 0 went to members 0..4 with frequencies " \
        f"{[round(float(f), 2) for f in freq]}, expected about 0.2 each (use torch.randperm per class)"


def boot_data(seed, N=150):
    g = torch.Generator().manual_seed(seed)
    lm = torch.rand(N, generator=g, dtype=torch.float64) * 0.6
    ls = lm + 0.3 + 5.0 * torch.rand(N, generator=g, dtype=torch.float64)  # some roots have little to lose
    lh = lm + torch.rand(N, generator=g, dtype=torch.float64) ** 2 * 0.8
    return lm, lh, ls


def boot_reference(lm, lh, ls, confidence, n=20000, seed=123):
    idx = torch.randint(0, len(lm), (n, len(lm)), generator=torch.Generator().manual_seed(seed))
    m, h, s = lm[idx].mean(-1), lh[idx].mean(-1), ls[idx].mean(-1)
    a = (1 - confidence) / 2
    q = torch.tensor([a, 1 - a], dtype=torch.float64)
    right = torch.quantile((s - h) / (s - m), q)
    mean_of_ratios = torch.quantile(((ls - lh) / (ls - lm))[idx].mean(-1), q)
    narrow = torch.quantile((s - h) / (s - m), torch.tensor([1 - confidence, confidence], dtype=torch.float64))
    return right, mean_of_ratios, narrow


@pytest.mark.exercise("bootstrap_interval")
@pytest.mark.points(2)
def test_bootstrap_interval():
    for seed, conf in [(0, 0.95), (1, 0.9), (2, 0.8)]:
        lm, lh, ls = boot_data(seed)
        keep = lm.clone(), lh.clone(), ls.clone()
        got = answers().bootstrap_interval(lm, lh, ls, 4000, conf, torch.Generator().manual_seed(seed))
        assert torch.equal(keep[0], lm) and torch.equal(keep[1], lh) and torch.equal(keep[2], ls), \
            "bootstrap_interval changed the losses it was given"
        try:
            low, high = (float(v) for v in got)
        except (TypeError, ValueError):
            raise AssertionError(f"return a pair (low, high) of floats, got {got!r}") from None
        right, mean_of_ratios, narrow = boot_reference(lm, lh, ls, conf)
        point = float((ls.mean() - lh.mean()) / (ls.mean() - lm.mean()))
        width = float(right[1] - right[0])
        tol = 0.08 * width
        if low > high:
            raise AssertionError(f"low {low:.4f} > high {high:.4f}: return (low, high) in that order")
        ok = abs(low - right[0]) < tol and abs(high - right[1]) < tol
        if ok:
            assert low <= point <= high, "the interval should contain the point estimate"
            continue
        if abs(low - mean_of_ratios[0]) < tol and abs(high - mean_of_ratios[1]) < tol:
            raise AssertionError("you bootstrap the mean of per-root ratios; the score is a ratio of means "
                                 "(mean L_scrub - mean L_hyp) / (mean L_scrub - mean L_model), and so must each "
                                 "bootstrap replicate be")
        if abs(low - narrow[0]) < tol and abs(high - narrow[1]) < tol:
            raise AssertionError(f"your interval is too narrow: for confidence {conf} cut (1 - confidence) / 2 = "
                                 f"{(1 - conf) / 2:.3f} from each side, not {1 - conf:.2f}")
        if high - low > 5 * width:
            raise AssertionError(f"your interval [{low:.3f}, {high:.3f}] is far too wide (expected about "
                                 f"[{float(right[0]):.3f}, {float(right[1]):.3f}]): are you taking quantiles over "
                                 "the roots instead of over the bootstrap draws? Average over the N roots of each "
                                 "draw first (the last axis of a [B, N] index), then take quantiles over B")
        if high - low < 0.2 * width:
            raise AssertionError(f"your interval [{low:.4f}, {high:.4f}] is far too narrow (expected about "
                                 f"[{float(right[0]):.3f}, {float(right[1]):.3f}]): are you averaging over the "
                                 "bootstrap draws instead of over the roots? Each draw's mean runs over its N roots")
        raise AssertionError(f"with confidence {conf} expected about [{float(right[0]):.3f}, {float(right[1]):.3f}] "
                             f"(a percentile bootstrap of the ratio of means over roots), got [{low:.3f}, {high:.3f}]")


@pytest.mark.exercise("which_hypotheses_are_falsified")
@pytest.mark.points(2)
def test_which_hypotheses_are_falsified():
    g = torch.Generator().manual_seed(7)
    for required in (0.9, 0.75):
        table = {
            "clearly short": (0.4, 0.35, 0.45),
            "point short, interval reaches": (required - 0.03, required - 0.08, required + 0.02),
            "low end short": (required + 0.02, required - 0.01, required + 0.05),
            "good": (0.98, 0.96, 1.0),
            "straddles one": (1.01, 0.99, 1.03),
            "above one": (1.12, 1.07, 1.17),
            "just short": (required - 0.05, required - 0.07, required - 0.02),
            "reaches exactly": (required - 0.04, required - 0.08, required),
        }
        for k in range(4):  # random extra rows, decided by the same rule
            c = float(torch.rand(1, generator=g)) * 1.3
            w = 0.01 + float(torch.rand(1, generator=g)) * 0.05
            table[f"random {k}"] = (c, c - w, c + w)
        want = sorted(n for n, (_, lo, hi) in table.items() if hi < required or lo > 1.0)
        got = answers().which_hypotheses_are_falsified(dict(table), required)
        assert isinstance(got, (list, tuple)), f"return a list of names, got {type(got).__name__}"
        assert list(got) == sorted(got), f"return the names sorted (you returned {list(got)})"
        got = sorted(got)
        if got == want:
            continue
        if "low end short" in got:
            raise AssertionError("'low end short' is not falsified: its interval contains the required level "
                                 "(you asked the low end to clear it, which demands proof of truth, not absence "
                                 "of a falsification)")
        if "point short, interval reaches" in got:
            raise AssertionError("'point short, interval reaches' has an interval that reaches the required level: "
                                 "the data do not rule out that it explains enough; a point estimate is no verdict")
        if "above one" not in got:
            raise AssertionError("'above one' recovers 1.07 to 1.17: a true hypothesis recovers exactly 1 in "
                                 "expectation (resampling within its classes changes nothing); an interval above 1 "
                                 "means resampling what it calls irrelevant *helped*, so that part matters: "
                                 "falsified")
        if "reaches exactly" in got:
            raise AssertionError("'reaches exactly' has an interval whose upper end is exactly the required level: "
                                 "the data do not rule out that it explains enough; falsify only when the upper "
                                 "end is below required (a boundary: < not <=)")
        if "straddles one" in got:
            raise AssertionError("'straddles one' is consistent with 1 (its interval contains it): not falsified")
        raise AssertionError(f"for required = {required} expected {want}, got {got}")


@pytest.fixture(scope="module")
def scored_pool(induction_model):
    return pool(induction_model)


@pytest.mark.exercise("predict_one_induction_head")
@pytest.mark.points(1)
def test_predict_one_induction_head(induction_model, scored_pool):
    from toylab.discovery.scrubbing import Hypothesis, scrub

    guess = answers().predict_one_induction_head()
    try:
        guess = float(guess)
    except (TypeError, ValueError):
        raise AssertionError(f"return your prediction as a float, got {type(guess).__name__}") from None
    _, classes, graph = scored_pool
    edges = ["L1H1->logits", "L0H0->L1H1.k", "embed->L0H0.v", "embed->L1H1.q", "embed->L1H1.v"]
    r = scrub(induction_model, graph, classes, Hypothesis({e: "identity" for e in edges}), n_resamples=2,
              n_boot=200)
    if guess > r.recovered + 0.15:
        raise AssertionError(f"you predicted {guess:.2f}, too high: with L1H0's inputs resampled its output is "
                             "noise added to L1H1's prediction, and L1H1 alone does not carry the whole copy")
    if guess < r.recovered - 0.15:
        raise AssertionError(f"you predicted {guess:.2f}, too low: L1H1 is a complete induction head with all "
                             "three of its inputs; one head alone does much of the work")


def renumbered(model):
    """A copy of ``model`` with the heads of every layer in reverse order: the same function."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                w = getattr(block.attn, name)
                w.copy_(w.flip(0))
    return m


@pytest.mark.hidden
@pytest.mark.exercise("design_hypothesis")
@pytest.mark.points(3)
def test_design_hypothesis(induction_model, scored_pool):
    from toylab.discovery.graph import Graph
    from toylab.discovery.scrubbing import Hypothesis, scrub

    batch, classes, graph = scored_pool
    other = renumbered(induction_model)
    with torch.no_grad():
        assert (other(batch.tokens[:4]) - induction_model(batch.tokens[:4])).abs().max() < 1e-4
    for name, model, g in [("the shipped induction-2l", induction_model, graph),
                           ("induction-2l with its heads renumbered", other, Graph(other))]:
        edges = answers().design_hypothesis(model, g, batch.tokens.clone())
        assert isinstance(edges, dict), f"return a dict {{edge name: feature}}, got {type(edges).__name__}"
        assert len(edges) <= 9, f"your hypothesis names {len(edges)} edges; at most 9 are allowed (a hypothesis " \
                                "that keeps every edge explains everything and says nothing)"
        try:
            r = scrub(model, g, classes, Hypothesis(dict(edges)), n_resamples=2, n_boot=200)
        except ValueError as e:
            raise AssertionError(f"on {name} your hypothesis is not valid: {e}") from None
        if r.recovered >= 0.9:
            continue
        assert r.recovered >= 0.9, \
            f"on {name} your hypothesis recovers {r.recovered:.2f} of the loss, below 0.9" + (
                "; the heads are renumbered here: find them with the detectors instead of writing indices "
                "(toylab.discovery.reference.induction_heads)" if model is other and name_ok(edges, induction_model, batch)
                else "; " + missing_parts(edges, model, batch) + ". An induction head needs its query, key and "
                "value inputs, and the keys get 'the token before' from the previous-token head")


def _mechanism(model, batch):
    """The edges of the induction mechanism by part, from the library's head detectors."""
    from toylab.discovery.graph import head_name
    from toylab.discovery.reference import induction_heads

    prev, heads = induction_heads(model, batch.tokens)
    p = head_name(*prev)
    parts = {"the previous-token head's value input (embed -> " + p + ".v)": [f"embed->{p}.v"]}
    for layer, h in heads:
        i = head_name(layer, h)
        parts[f"induction head {i}'s output to the logits"] = [f"{i}->logits"]
        parts[f"the key input of {i} from the previous-token head"] = [f"{p}->{i}.k"]
        parts[f"the query and value inputs of {i} from the embedding"] = [f"embed->{i}.q", f"embed->{i}.v"]
    return parts


def name_ok(edges, shipped, batch) -> bool:
    """Whether ``edges`` would be the mechanism of the SHIPPED model (indices written for it)."""
    return all(e in edges for es in _mechanism(shipped, batch).values() for e in es)


def missing_parts(edges, model, batch) -> str:
    parts = _mechanism(model, batch)
    miss = [what for what, es in parts.items() if not all(e in edges for e in es)]
    heads = {what.split()[2][:-2] for what in parts if what.startswith("induction head")}
    gone = [h for h in heads if not any(h + "." in e or e.startswith(h + "->") for e in edges)]
    if gone:
        return (f"it leaves out induction head {', '.join(sorted(gone))} entirely: both induction heads carry "
                "the copy (they back each other up), keep every induction head")
    if miss:
        return "it leaves out " + "; ".join(miss[:3])
    return "it names every edge of the mechanism; check the features you give them"
