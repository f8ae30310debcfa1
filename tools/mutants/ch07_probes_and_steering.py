"""Mutants of chapter 7's exercises (probes and steering)."""
from mutant import M

MUTANTS = [
    M("majority_baseline", "majority of the test labels", old="torch.bincount(train).argmax()", new="torch.bincount(test).argmax()",
      keys=("TEST labels", "training rows")),
    M("majority_baseline", "the -1 rows kept in the average", old="return float((test == m).double().mean())",
      new="return float((test_labels == m).double().mean())", keys=("-1 rows",)),
    M("majority_baseline", "the -1 rows counted as a class", old="m = int(torch.bincount(train).argmax())",
      new="m = int(torch.bincount(train_labels.long() + 1).argmax()) - 1", keys=("-1 rows", "outside the task")),
    M("majority_baseline", "least frequent class", old="torch.bincount(train).argmax()", new="torch.bincount(train).argmin()",
      keys=("most frequent",)),
    M("majority_baseline", "uniform chance instead of the majority", old="return float((test == m).double().mean())",
      new="return 1.0 / (int(train.max()) + 1)", keys=("most frequent", "majority")),
    M("grouped_split", "test_frac of the rows, not of the groups", code='''
def grouped_split(groups, test_frac, seed):
    g = torch.Generator().manual_seed(int(seed))
    n = groups.numel()
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[torch.randperm(n, generator=g)[:int(round(test_frac * n))]] = True
    return is_test
''', keys=("both sides", "whole groups")),
    M("grouped_split", "no clamp to [1, G-1]", old="n_test = min(max(1, int(round(test_frac * uniq.numel()))), uniq.numel() - 1)",
      new="n_test = int(round(test_frac * uniq.numel()))", keys=("clamp",)),
    M("grouped_split", "floor instead of round", old="int(round(test_frac * uniq.numel()))", new="int(test_frac * uniq.numel())",
      keys=("round",)),
    M("grouped_split", "unseeded generator", old="g = torch.Generator().manual_seed(int(seed))", new="g = None",
      keys=("same seed", "seeded")),
    M("grouped_split", "group id used as index (assumes 0..G-1)", code='''
def grouped_split(groups, test_frac, seed):
    G = int(groups.max()) + 1
    n_test = min(max(1, int(round(test_frac * G))), G - 1)
    g = torch.Generator().manual_seed(int(seed))
    is_test = torch.zeros(G, dtype=torch.bool)
    is_test[torch.randperm(G, generator=g)[:n_test]] = True
    return is_test[groups]
''', keys=("distinct", "groups held out", "0..G-1")),
    M("control_task_labels", "uniform labels", old="torch.multinomial(counts, uniq.numel()", new="torch.multinomial(torch.ones_like(counts), uniq.numel()",
      keys=("uniform",)),
    M("control_task_labels", "one label per row, not per type", old="per_type[inverse]", new="torch.multinomial(counts, labels.numel(), replacement=True, generator=g)",
      keys=("same token type", "per type")),
    M("control_task_labels", "-1 rows not kept", old="return torch.where(valid, per_type[inverse], torch.full_like(labels, -1))",
      new="return per_type[inverse]", keys=("-1",)),
    M("control_task_labels", "the task's own labels", old="return torch.where(valid, per_type[inverse], torch.full_like(labels, -1))",
      new="return labels.clone()", keys=("own labels", "random")),
    M("control_task_labels", "unseeded", old="g = torch.Generator().manual_seed(int(seed))", new="g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, (1,))))",
      keys=("seed",)),
    M("least_squares_probe", "no standardisation", old="Z, Zt = (x - mu) / sigma, (xt - mu) / sigma", new="Z, Zt = x, xt",
      keys=("standardise",)),
    M("least_squares_probe", "test rows standardised with their own statistics", old="(xt - mu) / sigma",
      new="(xt - xt.mean(0)) / xt.std(0)", keys=("TRAINING mu", "own")),
    M("least_squares_probe", "ridge without N", old="ridge * Z.shape[0] * torch.eye", new="ridge * torch.eye",
      keys=("lambda * N",)),
    M("least_squares_probe", "no intercept", old="return Zt @ W + ybar", new="return Zt @ W", keys=("Ybar", "intercept")),
    M("least_squares_probe", "ridge ignored", old="ridge * Z.shape[0] * torch.eye", new="0.0 * torch.eye", keys=("ridge", "lambda")),
    M("predicted_logit_shift", "no coefficient", old="return coeff * (vector @ W_U)", new="return vector @ W_U", keys=("coefficient",)),
    M("predicted_logit_shift", "flipped sign", old="return coeff * (vector @ W_U)", new="return -coeff * (vector @ W_U)", keys=("sign",)),
    M("predicted_logit_shift", "unit-normalised vector", old="return coeff * (vector @ W_U)", new="return coeff * (vector / vector.norm()) @ W_U",
      keys=("normalis", "norm", "times")),
    M("predicted_logit_shift", "coefficient squared", old="return coeff * (vector @ W_U)", new="return coeff ** 2 * (vector @ W_U)",
      keys=("times", "coefficient")),
    M("which_hook_for_previous_token", "labels x_p instead of x_(p-1)", old="labels = tokens[:, :-1].reshape(-1)",
      new="labels = tokens[:, 1:].reshape(-1)", keys=("x_(p-1)", "label")),
    M("which_hook_for_previous_token", "compares with 0, not chance", old="if acc > 0.5 and acc > 5.0 / n_classes:", new="if acc > 0.0:",
      keys=("chance",)),
    M("which_hook_for_previous_token", "hard-coded for induction-2l", code='''
def which_hook_for_previous_token(model, tokens):
    return "blocks.0.hook_resid_post"
''', keys=("hard-code",)),
    M("which_hook_for_previous_token", "the last hook that reads it", old="    for hook in hooks:\n", new="    for hook in hooks[::-1]:\n",
      keys=("too late", "earlier")),
    M("which_hook_for_previous_token", "one layer late", old='[f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]',
      new='[f"blocks.{l}.hook_resid_post" for l in range(1, model.cfg.n_layers)] + ["blocks.0.hook_resid_post"]',
      keys=("too late", "too early", "layer")),
    M("predict_logit_change", "exact everywhere", old="    if hook not in after_last:\n        return None\n", new="",
      keys=("passes through attention", "return None")),
    M("predict_logit_change", "never exact", old="    if hook not in after_last:\n", new="    if True:\n", keys=("exact",)),
    M("predict_logit_change", "resid_pre of the last layer counted as after it", old='{f"blocks.{L - 1}.hook_resid_post", f"blocks.{L - 1}.hook_attn_out"}',
      new='{f"blocks.{L - 1}.hook_resid_post", f"blocks.{L - 1}.hook_attn_out", f"blocks.{L - 1}.hook_resid_pre"}',
      keys=("passes through attention", "return None")),
    M("predict_logit_change", "0-layer model forgotten", old='if L else {"hook_embed"}', new='if L else set()',
      keys=("0-layer", "exact")),
    M("predict_logit_change", "flipped sign", old="return float(coeff * (vector @ model.W_U.detach())[token])",
      new="return float(-coeff * (vector @ model.W_U.detach())[token])", keys=("sign",)),
    M("predict_logit_change", "no coefficient", old="return float(coeff * (vector @ model.W_U.detach())[token])",
      new="return float((vector @ model.W_U.detach())[token])", keys=("coefficient", "c (v")),
    M("probe_verdict", "beats chance, not the majority", old="if accuracy < majority + 0.05:", new="if accuracy < 0.55:",
      keys=("majority",)),
    M("probe_verdict", "control ignored", old="    if accuracy - control_accuracy < 0.1:\n        return \"token identity\"\n", new="",
      keys=("control", "selectivity")),
    M("probe_verdict", "no margin over the majority", old="if accuracy < majority + 0.05:", new="if accuracy <= majority:",
      keys=("majority", "margin", "clearly")),
    M("probe_verdict", "control compared with the majority", old="if accuracy - control_accuracy < 0.1:", new="if control_accuracy < majority + 0.05:",
      keys=("control", "selectivity")),
    M("probe_verdict", "verdicts swapped", old='return "readable"', new='return "token identity"', count=1,
      keys=("readable", "planted")),
]
