"""Mutants of chapter 11's exercises (MLPs and neurons)."""
from mutant import M

MUTANTS = [
    M("mlp_as_memory", "no ReLU", old="torch.relu(x @ W_in + b_in) @ W_out + b_out", new="(x @ W_in + b_in) @ W_out + b_out", keys=("relu", "negative")),
    M("mlp_as_memory", "no output bias", old="@ W_out + b_out", new="@ W_out", keys=("b_out", "bias")),
    M("mlp_as_memory", "bias after the ReLU", old="torch.relu(x @ W_in + b_in)", new="(torch.relu(x @ W_in) + b_in)", keys=("b_in", "bias", "relu")),
    M("mlp_as_memory", "no input bias", old="torch.relu(x @ W_in + b_in)", new="torch.relu(x @ W_in)", keys=("b_in", "bias")),
    M("mlp_as_memory", "the residual added", old="return torch.relu(x @ W_in + b_in) @ W_out + b_out", new="return x + torch.relu(x @ W_in + b_in) @ W_out + b_out",
      keys=("residual", "x")),
    M("mlp_as_memory", "GELU", old="torch.relu(x @ W_in + b_in)", new="torch.nn.functional.gelu(x @ W_in + b_in)", keys=("relu", "gelu")),
    M("neuron_top_attribute", "index into attributes forgotten", old="return attributes[(W_out @ W_U)[:, attributes].argmax(-1)]",
      new="return (W_out @ W_U)[:, attributes].argmax(-1)", keys=("index", "position", "token id")),
    M("neuron_top_attribute", "argmin", old=".argmax(-1)]", new=".argmin(-1)]", keys=("sign", "largest", "lowest")),
    M("neuron_top_attribute", "over the whole vocabulary", old="return attributes[(W_out @ W_U)[:, attributes].argmax(-1)]",
      new="return (W_out @ W_U).argmax(-1)", keys=("attribute", "restrict", "among")),
    M("neuron_top_attribute", "absolute value", old="(W_out @ W_U)[:, attributes].argmax(-1)", new="(W_out @ W_U)[:, attributes].abs().argmax(-1)",
      keys=("sign", "abs", "negative")),
    M("neuron_top_attribute", "wrong axis", old="(W_out @ W_U)[:, attributes].argmax(-1)", new="(W_out @ W_U)[:, attributes].argmax(0)[:W_out.shape[0]] if W_out.shape[0] <= len(attributes) else (W_out @ W_U)[:, attributes].argmax(-1).flip(0)",
      keys=("axis", "dim", "neuron")),
    M("mean_neuron_dla", "sum, not mean", old="(W_out @ W_U[:, targets])).mean(-1)", new="(W_out @ W_U[:, targets])).sum(-1)", keys=("times", "mean", "sum")),
    M("mean_neuron_dla", "weights only, no activation", old="(post.T * (W_out @ W_U[:, targets])).mean(-1)", new="(W_out @ W_U[:, targets]).mean(-1)",
      keys=("activation", "post")),
    M("mean_neuron_dla", "mean activation times mean value", old="(post.T * (W_out @ W_U[:, targets])).mean(-1)",
      new="post.T.mean(-1) * (W_out @ W_U[:, targets]).mean(-1)", keys=("product", "per position", "mean of")),
    M("mean_neuron_dla", "the mean logit over the vocabulary", old="(W_out @ W_U[:, targets])", new="(W_out @ (W_U[:, targets] - W_U.mean(1, keepdim=True)))",
      keys=("target", "centre", "mean")),
    M("mean_neuron_dla", "abs of contributions", old="(post.T * (W_out @ W_U[:, targets])).mean(-1)", new="(post.T * (W_out @ W_U[:, targets])).abs().mean(-1)",
      keys=("sign", "abs")),
    M("fact_neuron_set", "signed contributions", old="pos = contributions.clamp_min(0)", new="pos = contributions", keys=("negative", "positive", "clamp")),
    M("fact_neuron_set", "boundary: one neuron short", old="k = int((vals.cumsum(0) < coverage * total * (1 - 1e-12)).sum()) + 1",
      new="k = int((vals.cumsum(0) < coverage * total * (1 - 1e-12)).sum())", keys=("boundary", "reach", "at least", "short")),
    M("fact_neuron_set", "boundary: one neuron too many at exact coverage", old="< coverage * total * (1 - 1e-12)", new="<= coverage * total",
      keys=("boundary", "exactly", "at least", "smallest")),
    M("fact_neuron_set", "index order, not largest first", old="vals, order = torch.sort(pos, descending=True, stable=True)",
      new="order = torch.nonzero(pos > 0).flatten(); vals = pos[order]", keys=("largest", "order", "sort")),
    M("fact_neuron_set", "coverage of the absolute total", old="total = float(pos.sum())", new="total = float(contributions.abs().sum())",
      keys=("positive", "total", "negative")),
    M("fact_neuron_set", "unstable ties", old="descending=True, stable=True)", new="descending=True)", keys=("tie", "lower index")),
    M("count_facts_per_neuron", "a set's length per fact", old="        counts[s] += 1\n", new="        counts[: len(s)] += 1\n",
      keys=("neuron", "index", "count")),
    M("count_facts_per_neuron", "duplicates counted once per neuron index? no: counts bincount once", code='''
def count_facts_per_neuron(neuron_sets, d_mlp):
    counts = torch.zeros(d_mlp, dtype=torch.long)
    for s in neuron_sets:
        counts += torch.bincount(torch.as_tensor(s, dtype=torch.long), minlength=d_mlp).clamp_max(1)
    return counts * 0 + counts
''', keys=("count",)),
    M("count_facts_per_neuron", "in-place edit of the sets", code='''
def count_facts_per_neuron(neuron_sets, d_mlp):
    counts = torch.zeros(d_mlp, dtype=torch.long)
    for s in neuron_sets:
        counts[s] += 1
        if isinstance(s, torch.Tensor) and s.numel():
            s.zero_()
    return counts
''', keys=("in place", "modified", "changed")),
    M("count_facts_per_neuron", "float counts", old="counts = torch.zeros(d_mlp, dtype=torch.long)", new="counts = torch.zeros(d_mlp)",
      keys=("long", "integer", "dtype")),
    M("count_facts_per_neuron", "empty sets break it / length d_mlp missed", old="    return counts", new="    return counts[: int(counts.nonzero().max()) + 1] if counts.any() else counts",
      keys=("d_mlp", "shape")),
    M("predict_facts_per_neuron", "mean over neurons, not facts", old="kbar = float(fpn.double().sum()) / n_facts", new="kbar = float(fpn.double().mean())",
      keys=("per fact", "n_facts", "k")),
    M("predict_facts_per_neuron", "no rescaling to the new count", old="return kbar, n_new * kbar / fpn.numel()", new="return kbar, float(fpn.double().mean())",
      keys=("n_new", "scale", "new")),
    M("predict_facts_per_neuron", "ratio upside down", old="n_new * kbar / fpn.numel()", new="fpn.numel() * kbar / n_new", keys=("invert", "n_new", "d_mlp")),
    M("predict_facts_per_neuron", "n_new replaces n_facts", old="n_new * kbar / fpn.numel()", new="n_facts * kbar / fpn.numel()", keys=("n_new", "new")),
    M("predict_facts_per_neuron", "rounded", old="return kbar, n_new * kbar / fpn.numel()", new="return float(round(kbar)), float(round(n_new * kbar / fpn.numel()))",
      keys=("round", "float")),
    M("ablating_neuron_breaks", "largest contribution decides", old="ratio = float((c[ok] / m[ok]).max()) if ok.any() else 0.0",
      new="ratio = float(c[ok][c[ok].argmax()] / m[ok][c[ok].argmax()]) if ok.any() else 0.0", keys=("margin to spare", "largest contribution")),
    M("ablating_neuron_breaks", "boundary >", old="ratio >= 1.0", new="ratio > 1.0", keys=("boundary", "exactly", "zero or below", ">=")),
    M("ablating_neuron_breaks", "wrong facts included", old="ok = (m > 0) & (c > 0)", new="ok = c > 0", keys=("already wrong", "margin <= 0", "cannot break")),
    M("ablating_neuron_breaks", "served unsorted", old="served = order[vals > 0]", new="served = torch.nonzero(c > 0).flatten()", keys=("largest", "order", "first")),
    M("ablating_neuron_breaks", "served includes zero contributions", old="served = order[vals > 0]", new="served = order[vals >= 0]",
      keys=("> 0", "zero", "served")),
    M("ablating_neuron_breaks", "ratio inverted", old="ratio = float((c[ok] / m[ok]).max())", new="ratio = float((m[ok] / c[ok]).min())",
      keys=("ratio", "c / m", "invert")),
    M("better_unit", "ties to sae", old='("sae" if s > n else "neurons")', new='("sae" if s >= n else "neurons")', keys=("tie",)),
    M("better_unit", "swapped", old='("sae" if s > n else "neurons")', new='("neurons" if s > n else "sae")', keys=("higher", "larger", "better")),
    M("better_unit", "W_dec transposed", old="mcc(W_dec.to(planted.dtype), planted)", new="mcc(W_dec.T.to(planted.dtype), planted)",
      keys=("transpose", "W_dec", "rows")),
    M("better_unit", "numbers swapped", old='return ("sae" if s > n else "neurons"), n, s', new='return ("sae" if s > n else "neurons"), s, n',
      keys=("order", "neurons", "sae")),
    M("better_unit", "hard-coded sae", old='return ("sae" if s > n else "neurons"), n, s', new='return "sae", n, s', keys=("neurons",)),
]
