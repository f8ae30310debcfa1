"""Graded tests of chapter 11, "MLPs and neurons: key-value memories".

Ground truth: the shipped ``facts-1l`` model itself (its MLP's ``hook_mlp_out`` on a
run, its neuron DLA from :func:`toylab.causal.attribution.neuron_dla`, the library's
:mod:`toylab.neurons.facts`), plain loops over small random tables, and hand-built
cases whose right choice is known by construction (a neuron whose biggest
contribution goes to a fact with margin to spare; facts aligned with the neurons).
"""

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers

CH = "ch11_mlps_and_neurons"


def answers():
    return load_answers(CH)


@pytest.fixture(scope="module")
def facts():
    """The shipped ``facts-1l`` model, its language and a small batch of it."""
    from toylab.data import make_dataset
    from toylab.neurons.facts import fact_batch
    from toylab.training.presets import load_shipped

    ckpt = load_shipped("facts-1l")
    lang = make_dataset(ckpt.data_spec)
    return ckpt.model, lang, fact_batch(lang, batch=512)


@pytest.mark.exercise("mlp_as_memory")
@pytest.mark.points(1)
def test_mlp_as_memory(facts):
    model, _, tokens = facts
    _, cache = model.run_with_cache(tokens[:64], names_filter=lambda n: "resid_mid" in n or "mlp_out" in n)
    x = cache["blocks.0.hook_resid_mid"].reshape(-1, model.cfg.d_model)
    want = cache["blocks.0.hook_mlp_out"].reshape(-1, model.cfg.d_model)
    mlp = model.blocks[0].mlp
    W_in, b_in, W_out, b_out = (p.detach().clone() for p in (mlp.W_in, mlp.b_in, mlp.W_out, mlp.b_out))
    keep = x.clone()
    got = answers().mlp_as_memory(x, W_in, b_in, W_out, b_out)
    assert torch.equal(x, keep), "mlp_as_memory changed its input x in place: work on a copy"
    expect_tensor(got, want, "the MLP's output", "batch, d_model",
                  hints=[((x @ W_in + b_in) @ W_out + b_out, "you forgot the ReLU: a neuron writes its value "
                                                             "only when its key matches (pre-activation > 0)"),
                         (torch.relu(x @ W_in + b_in) @ W_out, "you forgot the output bias b_out"),
                         (torch.relu(x @ W_in) @ W_out + b_out, "you forgot the input bias b_in"),
                         ((torch.relu(x @ W_in) + b_in) @ W_out + b_out, "you added the input bias b_in after "
                          "the ReLU: it belongs inside, ReLU(x W_in + b_in)"),
                         (torch.nn.functional.gelu(x @ W_in + b_in) @ W_out + b_out, "you used GELU: this "
                          "model's MLP uses ReLU"),
                         (x + torch.relu(x @ W_in + b_in) @ W_out + b_out, "you added the residual x: return "
                          "the MLP's output only")])


@pytest.mark.exercise("neuron_top_attribute")
@pytest.mark.points(1)
def test_neuron_top_attribute(facts):
    from toylab.neurons.facts import neuron_attributes

    model, lang, _ = facts
    mlp = model.blocks[0].mlp
    W_out, W_U = mlp.W_out.detach().clone(), model.W_U.detach().clone()
    want = neuron_attributes(model, lang)
    got = answers().neuron_top_attribute(W_out, W_U, lang.attributes.clone())
    if isinstance(got, torch.Tensor) and got.shape == want.shape:
        col = (W_out @ W_U)[:, lang.attributes].argmax(-1)
        assert not torch.equal(got, col), ("you returned the column index into `attributes`, not the attribute "
                                           "token id: map it back with attributes[...]")
        assert not torch.equal(got, (W_out @ W_U).argmax(-1)), \
            "you took the argmax over the whole vocabulary: only attribute tokens compete"
    scores = (W_out @ W_U)[:, lang.attributes]
    expect_tensor(got, want, "the top attribute of each neuron", "d_mlp",
                  hints=[(lang.attributes[scores.argmin(-1)], "you took the attribute with the LOWEST logit "
                          "(argmin or a flipped sign): the top attribute has the largest W_out W_U entry"),
                         (lang.attributes[scores.abs().argmax(-1)], "you ranked by |W_out W_U|: a large "
                          "negative entry suppresses the attribute, keep the sign (argmax of the signed values)")])
    # a hand-made case where the best token overall is not an attribute
    W_U2 = torch.zeros(2, 6)
    W_U2[0, 5], W_U2[0, 3], W_U2[1, 2] = 5.0, 1.0, 1.0
    W_out2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got2 = answers().neuron_top_attribute(W_out2, W_U2, torch.tensor([2, 3]))
    expect_tensor(got2, torch.tensor([3, 2]), "the top attribute on a hand-made case", "d_mlp",
                  hints=[(torch.tensor([5, 2]), "token 5 is not an attribute: keep only the attribute columns"),
                         (torch.tensor([1, 0]), "you returned positions in `attributes`, not token ids")])


@pytest.mark.exercise("mean_neuron_dla")
@pytest.mark.points(2)
def test_mean_neuron_dla(facts):
    from toylab.causal.attribution import neuron_dla

    model, lang, tokens = facts
    tokens = tokens[:128]
    s = 1  # the first subject
    at = (tokens[:, :-1] == s) | (tokens[:, :-1] == s + 1)   # two subjects: the targets differ
    want = neuron_dla(model, tokens, 0).attrs[:-1][:, at].mean(1)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    post = cache["blocks.0.mlp.hook_post"][:, :-1][at]  # [m, d_mlp]
    targets = tokens[:, 1:][at]
    W_out, W_U = model.blocks[0].mlp.W_out.detach().clone(), model.W_U.detach().clone()
    keep = post.clone()
    got = answers().mean_neuron_dla(post, W_out, W_U, targets)
    assert torch.equal(post, keep), "mean_neuron_dla changed post in place: work on a copy"
    value = W_out @ W_U[:, targets]  # [d_mlp, m]
    expect_tensor(got, want, "the mean neuron DLA", "d_mlp",
                  hints=[(want * len(targets), "you summed over positions instead of averaging"),
                         (value.mean(-1), "you left out the activation: DLA is activation times value"),
                         (post.mean(0) * value.mean(-1), "you averaged activation and value separately: "
                                                         "average their product, position by position"),
                         ((post.T * value).abs().mean(-1), "you took |activation x value|: keep the sign, a "
                          "neuron can push the right token's logit down")])


def _loop_set(c, coverage):
    pos = [max(float(v), 0.0) for v in c]
    total = sum(pos)
    if total <= 0:
        return []
    order = sorted(range(len(pos)), key=lambda i: (-pos[i], i))
    out, run = [], 0.0
    for i in order:
        out.append(i)
        run += pos[i]
        if run >= coverage * total:
            break
    return out


@pytest.mark.exercise("fact_neuron_set")
@pytest.mark.points(2)
def test_fact_neuron_set(facts):
    from toylab.neurons.facts import fact_contributions, fact_neurons

    f = answers().fact_neuron_set
    # the boundary: exactly reaching the target counts (binary fractions, no rounding)
    c = torch.tensor([0.25, 0.5, -1.0, 0.25], dtype=torch.float64)
    keep = c.clone()
    got = f(c, 0.75)
    assert torch.equal(c, keep), "fact_neuron_set changed its input in place: work on a copy"
    got = torch.as_tensor(got).long().reshape(-1).tolist()
    assert got != [1, 0, 3], "you stopped only when the sum passed the target (>): 'at least' includes equality"
    assert got != [1], ("you stopped one neuron short: 0.5 alone is below 0.75 of the total 1.0; keep adding "
                        "neurons until their sum reaches at least coverage x total")
    assert got != [], ("negative contributions count as 0 (clamp them) in the total: with -1.0 in it the "
                       "total is 0 and no neuron is chosen")
    assert 2 not in got, (f"you chose neuron 2, whose contribution is negative (got {got}): only positive "
                          "contributions count, in the set and in the total (clamp at 0, not |c|)")
    assert got != [0, 1], "order the neurons by their contribution, largest first (got [0, 1], index order)"
    assert got == [1, 0], f"expected neurons [1, 0] (0.5 + 0.25 = 0.75 of 1.0), got {got}"
    # ties: the lower index first
    got = torch.as_tensor(f(torch.tensor([0.1, 0.3, 0.3, 0.3]), 0.5)).long().tolist()
    assert got == [1, 2], f"equal contributions go lower index first: expected [1, 2], got {got}"
    empty = torch.as_tensor(f(torch.tensor([-0.2, 0.0]), 0.5))
    assert empty.numel() == 0, "a fact no neuron helps has no neurons: return an empty tensor"
    g = torch.Generator().manual_seed(3)
    for cov in (0.3, 0.8, 1.0):
        r = torch.randn(40, generator=g, dtype=torch.float64)
        want = _loop_set(r.tolist(), cov)
        got = torch.as_tensor(f(r, cov)).long().reshape(-1).tolist()
        assert got == want, f"coverage {cov}: expected {want}, got {got}"
    model, lang, tokens = facts
    contrib = fact_contributions(model, lang, tokens)
    sets = fact_neurons(contrib, 0.8)
    for fact in (0, 17, 95):
        got = torch.as_tensor(f(contrib[:, fact].clone(), 0.8)).long()
        assert torch.equal(got, sets[fact]), f"on facts-1l fact {fact}: expected {sets[fact].tolist()}"


@pytest.mark.exercise("count_facts_per_neuron")
@pytest.mark.points(1)
def test_count_facts_per_neuron():
    g = torch.Generator().manual_seed(0)
    d = 13
    sets = [torch.randperm(d, generator=g)[:int(torch.randint(0, 6, (1,), generator=g))] for _ in range(20)]
    want = torch.zeros(d, dtype=torch.long)
    for s in sets:
        for n in s.tolist():
            want[n] += 1
    keep = [s.clone() for s in sets]
    got = answers().count_facts_per_neuron(sets, d)
    assert all(torch.equal(a, b) for a, b in zip(sets, keep)), "count_facts_per_neuron changed a set in place"
    assert isinstance(got, torch.Tensor) and not got.dtype.is_floating_point, \
        "return integer counts: a LongTensor [d_mlp], not floats"
    expect_tensor(torch.as_tensor(got).double(), want.double(), "facts per neuron", "d_mlp")
    tail = answers().count_facts_per_neuron([torch.tensor([0, 2]), torch.tensor([2])], 6)
    assert torch.as_tensor(tail).tolist() == [1, 0, 2, 0, 0, 0], (
        f"with d_mlp = 6 and sets [0, 2], [2] expected [1, 0, 2, 0, 0, 0], got {torch.as_tensor(tail).tolist()}: "
        "one count per neuron, d_mlp of them, the unused ones 0")
    assert torch.as_tensor(got).sum() == sum(len(s) for s in sets), "the counts must sum to the sets' sizes"


@pytest.mark.exercise("predict_facts_per_neuron")
@pytest.mark.points(1)
def test_predict_facts_per_neuron():
    fpn = torch.tensor([0, 0, 3, 5, 4, 0, 8, 4])  # sum 24 over 8 neurons
    keep = fpn.clone()
    kbar, pred = answers().predict_facts_per_neuron(fpn, 6, 12)
    assert torch.equal(fpn, keep), "predict_facts_per_neuron changed fpn in place"
    expect_number(kbar, 4.0, "kbar (24 pairs over 6 facts)", tol=1e-9,
                  hint="you averaged over the used neurons only: kbar is sum(fpn) / N"
                  if abs(float(kbar) - 4.8) < 1e-9 else
                  "kbar is sum(fpn) / N: every (neuron, fact) pair counts once on each side")
    expect_number(pred, 6.0, "the predicted facts per neuron at 12 facts", tol=1e-9,
                  hint="that is the mean of fpn at the CURRENT 6 facts: scale with the new number of facts "
                  "n_new, N' kbar / d_mlp" if abs(float(pred) - 3.0) < 1e-9 else
                  "N' kbar / d_mlp, averaged over all 8 neurons (the unused ones included)")
    g = torch.Generator().manual_seed(1)
    fpn = torch.randint(0, 9, (32,), generator=g)
    kbar, pred = answers().predict_facts_per_neuron(fpn, 40, 100)
    expect_number(kbar, float(fpn.sum()) / 40, "kbar", tol=1e-9,
                  hint="do not round: kbar is a mean, sum(fpn) / N" if abs(float(kbar) - round(float(fpn.sum()) / 40)) < 1e-9
                  else "kbar is sum(fpn) / N")
    expect_number(pred, 100 * float(fpn.sum()) / 40 / 32, "the prediction", tol=1e-9)


@pytest.mark.exercise("ablating_neuron_breaks")
@pytest.mark.points(3)
def test_ablating_neuron_breaks():
    f = answers().ablating_neuron_breaks
    # neuron 1 helps fact 0 most (2.0) but fact 0 has margin 10; it helps fact 2 a little (0.6)
    # and fact 2's margin is 0.5: zeroing neuron 1 breaks fact 2, not fact 0
    c = torch.tensor([[0.1, 0.2, 0.0, 0.3],
                      [2.0, -0.4, 0.6, 0.6],
                      [0.0, 0.1, 0.2, 0.0]], dtype=torch.float64)
    margins = torch.tensor([10.0, 1.0, 0.5, -0.2], dtype=torch.float64)
    keep_c, keep_m = c.clone(), margins.clone()
    served, breaks, ratio = f(c, margins, 1)
    assert torch.equal(c, keep_c) and torch.equal(margins, keep_m), "ablating_neuron_breaks changed an input"
    served = torch.as_tensor(served).long().tolist()
    assert served == [0, 2, 3], (f"neuron 1 serves facts [0, 2, 3] (positive contributions, largest first, "
                                 f"ties lower index first), got {served}")
    assert bool(breaks), ("fact 2 loses 0.6 of a 0.5 margin: zeroing neuron 1 breaks it. Its largest "
                          "contribution (to fact 0) does not decide; compare each contribution with its margin")
    expect_number(ratio, 1.2, "the ratio", tol=1e-9,
                  hint="fact 3 has margin <= 0 (already wrong): leave it out" if abs(float(ratio) + 3) < 1e-9
                  else "the largest c[n, f] / margins[f] over facts with a positive margin")
    # a polysemantic neuron that breaks nothing: it serves 3 facts, every one with margin to spare
    served, breaks, ratio = f(c, margins, 0)
    got0 = torch.as_tensor(served).long().tolist()
    assert got0 == [3, 1, 0], (f"neuron 0 serves facts [3, 1, 0], got {got0}: the facts with c > 0 (fact 2's "
                               "contribution is 0: not served), largest contribution first")
    assert not bool(breaks), "neuron 0 serves three facts but none of them needs it: nothing breaks"
    expect_number(ratio, 0.2, "the ratio for neuron 0", tol=1e-9)
    # exactly the margin: the margin drops to 0, no longer positive
    c2 = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    _, breaks, ratio = f(c2, torch.tensor([0.5, 1.0], dtype=torch.float64), 0)
    assert bool(breaks), "a contribution equal to the margin leaves the margin at 0: that breaks the fact (>=)"
    _, breaks, ratio = f(torch.tensor([[0.5, 0.2]], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), 0)
    assert not bool(breaks) and abs(float(ratio) - 0.2) < 1e-9, (
        f"fact 0 has margin 0: it is already wrong and cannot break, leave facts with margin <= 0 out "
        f"(expected ratio 0.2 from fact 1, got {float(ratio):.4g})")
    _, breaks, ratio = f(torch.tensor([[-1.0, 0.0]]), torch.tensor([1.0, 1.0]), 0)
    assert not bool(breaks) and float(ratio) == 0.0, "a neuron that serves nothing breaks nothing: ratio 0.0"


@pytest.mark.exercise("better_unit")
@pytest.mark.points(2)
@pytest.mark.hidden
def test_better_unit():
    from toylab.features.metrics import mcc

    f = answers().better_unit
    g = torch.Generator().manual_seed(0)
    d, S = 12, 8
    # a privileged basis: the facts sit almost on single neurons; a mediocre SAE
    aligned = torch.eye(d, dtype=torch.float64)[:S] + 0.1 * torch.randn(S, d, generator=g, dtype=torch.float64)
    noisy_sae = torch.cat([aligned + 0.8 * torch.randn(S, d, generator=g, dtype=torch.float64),
                           torch.randn(8, d, generator=g, dtype=torch.float64)])
    keep = aligned.clone()
    try:
        choice, n_mcc, s_mcc = f(aligned, noisy_sae)
    except ValueError as e:
        raise AssertionError(f"better_unit raised ValueError ({e}): W_dec [n_latents, d_mlp] has one SAE direction "
                             "per ROW, like planted [S, d_mlp]; score it as it is, not transposed") from None
    assert torch.equal(aligned, keep), "better_unit changed planted in place"
    eye = torch.eye(d, dtype=torch.float64)
    expect_number(n_mcc, mcc(eye, aligned), "the neurons' MCC", tol=1e-6,
                  hint="score the identity [d_mlp, d_mlp] with toylab.features.metrics.mcc")
    expect_number(s_mcc, mcc(noisy_sae, aligned), "the SAE's MCC", tol=1e-6)
    assert choice == "neurons", (f"here the facts are aligned with the neurons (MCC {n_mcc:.2f} against the "
                                 f"SAE's {s_mcc:.2f}): an SAE is not better by construction")
    # superposition: the facts are rotated away from the neurons; the SAE found them
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    rotated = aligned @ Q
    good_sae = torch.cat([rotated + 0.05 * torch.randn(S, d, generator=g, dtype=torch.float64),
                          torch.randn(4, d, generator=g, dtype=torch.float64)])
    choice, n_mcc, s_mcc = f(rotated, good_sae)
    expect_number(s_mcc, mcc(good_sae, rotated), "the SAE's MCC", tol=1e-6)
    assert choice == "sae", f"the SAE's MCC {s_mcc:.2f} beats the neurons' {n_mcc:.2f}: choose 'sae'"
    # a tie goes to the neurons
    choice, _, _ = f(aligned, torch.cat([eye, eye]))
    assert choice == "neurons", "when both score the same, the simpler unit (neurons) wins the tie"
