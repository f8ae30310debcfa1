"""Mutants of chapter 8's exercises (attribution patching and ACDC)."""
from mutant import M

MUTANTS = [
    M("edge_patch_effect", "flipped sign (clean - corrupted)", old="delta = out(c_corr) - out(c_clean)",
      new="delta = out(c_clean) - out(c_corr)", keys=("sign",)),
    M("edge_patch_effect", "node patching: every reader of the sender", code='''
def edge_patch_effect(model, clean, corrupted, metric, sender, receiver):
    with torch.no_grad():
        _, c_corr = model.run_with_cache(corrupted)
    if sender == "embed":
        name, head = "hook_embed", None
    elif sender == "pos":
        name, head = "hook_pos_embed", None
    else:
        l, head = (int(v) for v in sender[1:].split("H"))
        name = f"blocks.{l}.attn.hook_result"

    def patch(act, hook):
        act = act.clone()
        if head is None:
            return c_corr[name].clone()
        act[:, :, head] = c_corr[name][:, :, head]
        return act

    with torch.no_grad():
        patched = metric(model.run_with_hooks(clean, fwd_hooks=[(name, patch)]))
        base = metric(model(clean))
    return float(patched - base)
''', keys=("node patching", "every reader")),
    M("edge_patch_effect", "every head of the receiver's layer", old="        act[:, :, head] = act[:, :, head] + delta\n        return act\n",
      new="        return act + delta[:, :, None]\n", keys=("receiver's head", "receiver")),
    M("edge_patch_effect", "denoising: start from the corrupted run", old="        patched = metric(model.run_with_hooks(clean, fwd_hooks=[(name, patch)]))\n        base = metric(model(clean))",
      new="        delta.neg_()\n        patched = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]))\n        base = metric(model(corrupted))",
      keys=("denois",)),
    M("edge_patch_effect", "metric of the patched run, not the difference", old="return float(patched - base)", new="return float(patched)",
      keys=("M(patched) - M(clean)", "difference", "clean")),
    M("edge_patch_effect", "logits edge patched at the last layer's input", old='name, head = f"blocks.{L - 1}.hook_resid_post", None',
      new='name, head = f"blocks.{L - 1}.hook_resid_pre", None', keys=("logits", "receiver")),
    M("atp_estimate", "flipped sign", old="((other_act - base_act) * grad)", new="((base_act - other_act) * grad)", keys=("sign",)),
    M("atp_estimate", "gradient times the activation, no difference", old="((other_act - base_act) * grad)", new="(other_act * grad)",
      keys=("difference", "base", "step")),
    M("atp_estimate", "no sum over positions", old=".sum(dim=(0, 1, 3))", new=".sum(dim=(0, 3)).mean(0)", keys=("sum", "position", "times")),
    M("atp_estimate", "sums over heads", old=".sum(dim=(0, 1, 3))", new=".sum(dim=(0, 1, 2, 3)).expand(grad.shape[2]).clone()",
      keys=("head",)),
    M("atp_estimate", "mean over the batch", old=".sum(dim=(0, 1, 3))", new=".sum(dim=(1, 3)).mean(0)", keys=("times", "batch", "sum")),
    M("spearman", "Pearson of the values", old="ra, rb = ranks(a), ranks(b)", new="ra, rb = a.double(), b.double()",
      keys=("Pearson", "RANKS")),
    M("spearman", "ties not averaged", old="ra, rb = ranks(a), ranks(b)", new="ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()",
      keys=("tie", "average rank")),
    M("spearman", "not centred", old="ra, rb = ra - ra.mean(), rb - rb.mean()", new="", keys=("centre", "mean", "Pearson correlation of the average ranks")),
    M("spearman", "ranks of a only", old="ra, rb = ranks(a), ranks(b)", new="ra, rb = ranks(a), b.double()", keys=("RANKS", "rank")),
    M("spearman", "reversed ranks for b", old="ra, rb = ranks(a), ranks(b)", new="ra, rb = ranks(a), ranks(-b)", keys=("sign",)),
    M("roc_auc", "signed scores", old="s = scores.abs().double()", new="s = scores.double()", keys=("|score|",)),
    M("roc_auc", "reversed", old="(pos[:, None] > neg[None])", new="(pos[:, None] < neg[None])", keys=("reversed",)),
    M("roc_auc", "ties count 0", old=" + 0.5 * (pos[:, None] == neg[None]).double()", new="", keys=("ties", "1/2")),
    M("roc_auc", "ties count 1", old="(pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()",
      new="(pos[:, None] >= neg[None]).double()", keys=("ties", "1/2")),
    M("roc_auc", "mean of the reference scores' ranks rule of thumb", old="return float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())",
      new="return float((pos.mean() > neg).double().mean())", keys=("pair", "ties", "1/2")),
    M("acdc_prune", "|difference| compared", old="if value - current < tau:", new="if abs(value - current) < tau:", keys=("LOWERS", "|difference|")),
    M("acdc_prune", "boundary: <= tau", old="if value - current < tau:", new="if value - current <= tau:", keys=("exactly tau",)),
    M("acdc_prune", "compared with the full graph, not the current one", old="        if value - current < tau:\n            removed, current = removed | {e}, value",
      new="        if value - current < tau:\n            removed = removed | {e}", keys=("CURRENT",)),
    M("acdc_prune", "each edge tested alone", old="value = float(metric_of(removed | {e}))", new="value = float(metric_of(frozenset({e})))",
      keys=("CURRENT", "removed")),
    M("acdc_prune", "returns the removed edges", old="    return kept", new="    return [e for e in edges if e in removed]", keys=("kept",)),
    M("acdc_prune", "kept edges sorted", old="    return kept", new="    return sorted(kept)", keys=("visiting order", "order")),
    M("choose_metric", "KL", old='return "logit_diff"', new='return "kl"', keys=("gradient is 0", "KL")),
    M("choose_tau", "the largest threshold", old="return taus[max(range(len(ratios)), key=ratios.__getitem__)]", new="return taus[-1]",
      keys=("too large",)),
    M("choose_tau", "the smallest threshold", old="return taus[max(range(len(ratios)), key=ratios.__getitem__)]", new="return taus[0]",
      keys=("too small", "noise")),
    M("choose_tau", "one step past the jump", old="return taus[max(range(len(ratios)), key=ratios.__getitem__)]",
      new="return taus[max(range(len(ratios)), key=ratios.__getitem__) + 1]", keys=("too large", "jump")),
    M("choose_tau", "largest absolute jump", old="ratios = [(kl[i + 1] + floor) / (max(kl[i], 0.0) + floor) for i in range(len(taus) - 1)]",
      new="ratios = [kl[i + 1] - kl[i] for i in range(len(taus) - 1)]", keys=("too large", "too small", "jump")),
    M("choose_tau", "the middle threshold", old="return taus[max(range(len(ratios)), key=ratios.__getitem__)]", new="return taus[len(taus) // 2]",
      keys=("too large", "too small")),
    M("choose_tau", "where the edge count drops most", old="return taus[max(range(len(ratios)), key=ratios.__getitem__)]",
      new="return taus[max(range(len(taus) - 1), key=lambda i: n_edges[i] - n_edges[i + 1]) + 1]", keys=("too large", "too small")),
    M("is_edge_real", "alone only", old="return max(exact_alone, exact_without_partner) >= tau", new="return exact_alone >= tau",
      keys=("back each other up", "either")),
    M("is_edge_real", "trusts the estimate", old="return max(exact_alone, exact_without_partner) >= tau", new="return abs(approx) >= tau",
      keys=("EAP", "estimate")),
    M("is_edge_real", "both tests required", old="return max(exact_alone, exact_without_partner) >= tau", new="return min(exact_alone, exact_without_partner) >= tau",
      keys=("either", "back each other up")),
    M("is_edge_real", "boundary >", old="return max(exact_alone, exact_without_partner) >= tau", new="return max(exact_alone, exact_without_partner) > tau",
      keys=("boundary", "exactly tau", ">=")),
    M("is_edge_real", "without-partner only", old="return max(exact_alone, exact_without_partner) >= tau", new="return exact_without_partner >= tau",
      keys=("either", "alone")),
]
