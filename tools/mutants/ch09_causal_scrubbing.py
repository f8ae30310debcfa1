"""Mutants of chapter 9's exercises (causal scrubbing)."""
from mutant import M

MUTANTS = [
    M("loss_recovered", "inverted", old="return (float(loss_scrubbed) - float(loss_hypothesis)) / gap",
      new="return gap / (float(loss_scrubbed) - float(loss_hypothesis))", keys=("invert", "upside down")),
    M("loss_recovered", "one minus", old="return (float(loss_scrubbed) - float(loss_hypothesis)) / gap",
      new="return 1 - (float(loss_scrubbed) - float(loss_hypothesis)) / gap", keys=("1 -", "one minus", "reversed")),
    M("loss_recovered", "relative to the model's loss", old="gap = float(loss_scrubbed) - float(loss_model)", new="gap = float(loss_model)",
      keys=("gap", "scrubbed - model")),
    M("loss_recovered", "no zero-gap check", old='    if gap == 0:\n        raise ValueError("the scrubbed model is as good as the model: there is no loss to recover")\n',
      new="    if gap == 0:\n        return 0.0\n", keys=("ValueError", "gap")),
    M("loss_recovered", "flipped sign", old="return (float(loss_scrubbed) - float(loss_hypothesis)) / gap",
      new="return (float(loss_hypothesis) - float(loss_scrubbed)) / gap", keys=("sign",)),
    M("offset_classes", "no -1 for sequences without a repeat", old="return torch.where(batch.has_repeat, offset, torch.full_like(offset, -1)).long()",
      new="return offset.long()", keys=("-1", "has_repeat", "without a repeat")),
    M("offset_classes", "source start", old="offset = batch.dst_start - batch.src_start", new="offset = batch.src_start.clone()",
      keys=("src_start", "d - s")),
    M("offset_classes", "each sequence without a repeat its own class", old="torch.full_like(offset, -1)", new="-1 - torch.arange(len(offset))",
      keys=("one class", "neither")),
    M("resample_within_class", "a global permutation", old="""    out = torch.arange(len(labels))
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        out[members] = members[torch.randperm(len(members), generator=generator)]
    return out""", new="    return torch.randperm(len(labels), generator=generator)", keys=("class", "same label")),
    M("resample_within_class", "identity", old="    return out", new="    return torch.arange(len(labels))", keys=("identity", "resample", "shuffle")),
    M("resample_within_class", "with replacement", old="members[torch.randperm(len(members), generator=generator)]",
      new="members[torch.randint(0, len(members), (len(members),), generator=generator)]", keys=("permutation", "replacement", "once")),
    M("resample_within_class", "unseeded", old="torch.randperm(len(members), generator=generator)", new="torch.randperm(len(members))",
      keys=("generator", "seed")),
    M("resample_within_class", "cyclic shift within the class", old="members[torch.randperm(len(members), generator=generator)]",
      new="members.roll(1)", keys=("generator", "random", "seed", "fixed shift")),
    M("bootstrap_interval", "mean of ratios per row", code='''
def bootstrap_interval(loss_model, loss_hypothesis, loss_scrubbed, n_boot, confidence, generator):
    N = loss_model.shape[0]
    idx = torch.randint(0, N, (n_boot, N), generator=generator)
    lm, lh, ls = (t.double()[idx] for t in (loss_model, loss_hypothesis, loss_scrubbed))
    ratios = ((ls - lh) / (ls - lm)).mean(-1)
    a = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return low, high
''', keys=("ratio of means", "mean of ratios", "per row")),
    M("bootstrap_interval", "one-sided quantiles", old="a = (1 - confidence) / 2", new="a = 1 - confidence", keys=("two-sided", "(1 - confidence) / 2", "tail")),
    M("bootstrap_interval", "sequences not resampled together", old="lm, lh, ls = (t.double()[idx].mean(-1) for t in (loss_model, loss_hypothesis, loss_scrubbed))",
      new="lm, lh, ls = (t.double()[torch.randint(0, N, (n_boot, N), generator=generator)].mean(-1) for t in (loss_model, loss_hypothesis, loss_scrubbed))",
      keys=("same rows", "together", "paired", "same resampled")),
    M("bootstrap_interval", "normal approximation", old="    low, high = torch.quantile(ratios, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()\n",
      new="    m, s = float(ratios.mean()), float(ratios.std())\n    low, high = m - 1.96 * s, m + 1.96 * s\n", keys=("quantile", "percentile")),
    M("bootstrap_interval", "returns (high, low)", old="    return low, high", new="    return high, low", keys=("order", "low", "(low, high)")),
    M("which_hypotheses_are_falsified", "point estimate instead of the interval", old="if high < required or low > 1.0",
      new="if results[name][0] < required", keys=("interval", "upper end", "high")),
    M("which_hypotheses_are_falsified", "low end compared with required", old="if high < required or low > 1.0",
      new="if low < required or low > 1.0", keys=("upper", "high", "interval")),
    M("which_hypotheses_are_falsified", "above 1 ignored", old="if high < required or low > 1.0", new="if high < required",
      keys=("above 1", "more than 1", "over 1", "> 1")),
    M("which_hypotheses_are_falsified", "boundary <=", old="if high < required or low > 1.0", new="if high <= required or low > 1.0",
      keys=("boundary", "exactly")),
    M("which_hypotheses_are_falsified", "unsorted", old="return sorted(name for", new="return list(name for", keys=("sorted", "order")),
    M("predict_one_induction_head", "0.5 (half the heads)", old="return 0.75", new="return 0.5", keys=("back", "one head", "redundan")),
    M("predict_one_induction_head", "1.0 (one head suffices)", old="return 0.75", new="return 1.0", keys=("one head", "not all", "too high")),
    M("predict_one_induction_head", "0.0", old="return 0.75", new="return 0.0", keys=("one head", "loss recovered")),
    M("design_hypothesis", "no previous-token head edges", old='    edges = {f"embed->{p}.v": "identity"}\n', new="    edges = {}\n",
      keys=("previous-token", p_ := "embed->")) if False else
    M("design_hypothesis", "no previous-token head edges", old='    edges = {f"embed->{p}.v": "identity"}\n', new="    edges = {}\n",
      keys=("previous-token", "previous token")),
    M("design_hypothesis", "the previous-token head's output read by the query", old='f"{p}->{i}.k": "identity"', new='f"{p}->{i}.q": "identity"',
      keys=("key", ".k")),
    M("design_hypothesis", "one induction head only", old="    for layer, h in heads:\n", new="    for layer, h in heads[:1]:\n",
      keys=("both", "every induction head", "all induction")),
    M("design_hypothesis", "no logits edges", old='f"{i}->logits": "identity", ', new="", keys=("logits",)),
    M("design_hypothesis", "hard-coded for induction-2l", code='''
def design_hypothesis(model, graph, tokens):
    return {"embed->L0H0.v": "identity", "L1H0->logits": "identity", "L0H0->L1H0.k": "identity",
            "embed->L1H0.q": "identity", "embed->L1H0.v": "identity", "L1H1->logits": "identity",
            "L0H0->L1H1.k": "identity", "embed->L1H1.q": "identity", "embed->L1H1.v": "identity"}
''', keys=("hard-code", "writing indices", "renumbered")),
]
