"""Bad inputs to circuit discovery, the viewer, the off-probe evaluations and their neighbours (issue 20, section 2).

One row per case: (id, call, expected exception, a regex its message must match). Run with ``-s``
to print the table of messages. Every call must raise a sentence (no traceback text, no torch
internals); no call may leave a hook attached or a figure open. The models are the shipped ones
and small batches, so the whole table runs in seconds.
"""

import copy
import functools
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toylab.causal.evaluation import (no_bos_probe, off_probe_failures, off_probe_lines, off_probe_metrics,  # noqa: E402
                                      segment_probe, segment_tokens)
from toylab.circuits.scores import check_causal_pattern, induction_score  # noqa: E402
from toylab.circuits.viewer import attention_viewer, heads_from_cache  # noqa: E402
from toylab.cli import _resolve_checkpoint, build_parser, cmd_train  # noqa: E402
from toylab.data import make_dataset, repeated_tokens  # noqa: E402
from toylab.discovery import figures  # noqa: E402
from toylab.discovery.acdc import acdc, acdc_sweep  # noqa: E402
from toylab.discovery.attribution_patching import edge_attribution, node_attribution, node_effects  # noqa: E402
from toylab.discovery.edge_patching import as_weights, edge_effects, run_circuit, run_with_edges, sender_outputs  # noqa: E402
from toylab.discovery.graph import Circuit, Graph  # noqa: E402
from toylab.discovery.metrics import (check_metric_value, induction_positions, kl_to_clean, logit_diff,  # noqa: E402
                                      next_token_loss_on)
from toylab.discovery.reference import copied_positions, distractors, induction_circuit, induction_heads  # noqa: E402
from toylab.discovery.roc import roc_curve, roc_from_scores, spearman, topk_recall, tpr_fpr  # noqa: E402
from toylab.discovery.scrubbing import (EquivalenceClasses, Hypothesis, position_losses, redraw_tokens,  # noqa: E402
                                        scrub, scrubbed_position_losses, treeified_logits)
from toylab.discovery.subnetwork_probing import gate, subnetwork_probing  # noqa: E402
from toylab.factored import FactoredMatrix  # noqa: E402
from toylab.files import SaveError  # noqa: E402
from toylab.model import AttnOnlyTransformer, ModelConfig  # noqa: E402
from toylab.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from toylab.training.presets import get_preset, load_model  # noqa: E402
from toylab.training.train import evaluate  # noqa: E402
from _helpers import raises_a_sentence  # noqa: E402

torch.set_num_threads(1)
NAN = float("nan")


@functools.lru_cache(maxsize=None)
def m2():
    return load_model("induction-2l")


@functools.lru_cache(maxsize=None)
def m1():
    return load_model("induction-1l")


@functools.lru_cache(maxsize=None)
def twin():
    """induction-2l's shape with other (random) weights: the same edge names, not the same edges."""
    return AttnOnlyTransformer(m2().cfg, seed=1)


@functools.lru_cache(maxsize=None)
def bigram():
    return load_model("bigram-0l")


@functools.lru_cache(maxsize=None)
def g2():
    return Graph(m2())


@functools.lru_cache(maxsize=None)
def g1():
    return Graph(m1())


@functools.lru_cache(maxsize=None)
def gtwin():
    return Graph(twin())


def clean():
    return repeated_tokens(128, 7, 4, torch.Generator().manual_seed(0))  # [4, 15]


def corr():
    return repeated_tokens(128, 7, 4, torch.Generator().manual_seed(1))


@functools.lru_cache(maxsize=None)
def _clean_logits():
    with torch.no_grad():
        return m2()(clean())


def kl():
    return kl_to_clean(_clean_logits())


def nan_metric(logits):
    return logits.sum() * NAN


def inf_metric(logits):
    return logits.abs().sum() / 0.0


def known():
    return induction_circuit(m2(), g2(), clean())


def other_circuit():
    """A circuit of induction-1l's graph (edge names that induction-2l has too)."""
    return g1().circuit(["embed->L0H0.v", "L0H0->logits"])


def twin_circuit():
    """The same edge names as known(), on the graph of a model of the same shape with other weights."""
    return gtwin().circuit(known().edges)


@functools.lru_cache(maxsize=None)
def batch():
    return make_dataset(get_preset("induction-2l").data).sample_batch(24, torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def classes():
    return EquivalenceClasses.from_induction(batch())


def hyp():
    return Hypothesis({e: "identity" for e in known().edges})


@functools.lru_cache(maxsize=None)
def nan_model():
    m = copy.deepcopy(m2())
    with torch.no_grad():
        m.W_U[0, 0] = NAN
    return m


@functools.lru_cache(maxsize=None)
def _baseline_of_another_pool():
    """A scrub result on a pool of the same size (the same roots) whose tokens differ."""
    other = make_dataset(get_preset("induction-2l").data).sample_batch(24, torch.Generator().manual_seed(5))
    pool = EquivalenceClasses(other.tokens, positions=classes().positions)
    return scrub(m2(), g2(), pool, Hypothesis({}), n_resamples=1, n_boot=10)


def ln_model():
    """LayerNorm with shortformer positions (they join q and k after ln1): the one LayerNorm case refused."""
    return AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=2, n_heads=2,
                                           layernorm=True, positional="shortformer"), seed=0)


def mlp_model():
    """A model with an MLP module in its first block (the MLP Part's models): not attention-only."""
    m = AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=1, n_heads=2), seed=0)
    m.blocks[0].mlp = torch.nn.Linear(16, 16)
    return m


def short_model():
    return AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=9, d_model=16, n_layers=1, n_heads=2), seed=0)


def _pattern():
    return torch.softmax(torch.randn(2, 5, 5).masked_fill(torch.ones(5, 5).triu(1).bool(), -math.inf), -1)


def viewer():
    return attention_viewer(list("abcde"), _pattern())


@functools.lru_cache(maxsize=None)
def cache():
    return m2().run_with_cache(clean())[1]


@functools.lru_cache(maxsize=None)
def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="toylab-bad-discovery-"))


def _tampered_checkpoint(name: str, **data_changes) -> Path:
    """A shipped-style checkpoint whose data spec was edited by hand after saving."""
    model = AttnOnlyTransformer(ModelConfig(d_vocab=64, n_ctx=16, d_model=16, n_layers=1, n_heads=2), seed=0)
    path = save_checkpoint(tmpdir() / f"{name}.pt", model, data_spec={"kind": "bigram", "d_vocab": 64, "n_ctx": 16},
                           train_spec={}, seed=0)
    payload = torch.load(path, weights_only=True)
    payload["data_spec"].update(data_changes)
    torch.save(payload, path)
    return path


def _readonly_save(monkeypatch_access):
    """viewer.save into a folder the process may not write (os.access says no: root may write anywhere)."""
    folder = tmpdir() / "readonly"
    folder.mkdir(exist_ok=True)
    real = os.access
    os.access = lambda p, mode, *a, **k: False if Path(p) == folder else real(p, mode, *a, **k)
    try:
        viewer().save(folder / "page.html")
    finally:
        os.access = real


def _reentrant_hook():
    def hook(act, hook_point):
        m2()(clean())  # runs the model again: this very hook fires again, and again
    return m2().run_with_hooks(clean(), fwd_hooks=[("blocks.0.attn.hook_z", hook)])


def _train_args(*argv):
    return cmd_train(build_parser().parse_args(["train", *argv]))


CASES = [
    # --- the graph: which models it applies to, names
    ("Graph of a LayerNorm shortformer model", lambda: Graph(ln_model()), ValueError, "without LayerNorm"),
    ("Graph of a model with MLPs", lambda: Graph(mlp_model()), ValueError, "attention-only models.*blocks.0.mlp"),
    ("Graph of a preset name", lambda: Graph("induction-2l"), TypeError, "Graph takes a model"),
    ("Graph of a 0-layer model", lambda: Graph(bigram()), ValueError, "at least one layer"),
    ("unknown edge", lambda: g2().edge_index("L9H9->logits"), ValueError, "unknown edge 'L9H9->logits'"),
    ("circuit from one string", lambda: g2().circuit("embed->logits"), TypeError, "not a single string"),
    ("circuit from a number", lambda: g2().circuit(5), TypeError, "iterable of edge names, got int"),
    ("node by number", lambda: g2().node(3), TypeError, "named by a string"),
    ("unknown receiver", lambda: g2().incoming("L5H0.q"), ValueError, "unknown receiver 'L5H0.q'"),
    ("unknown sender", lambda: g2().outgoing("L7H0"), ValueError, "unknown node 'L7H0'"),
    ("circuit re-made from another model's circuit", lambda: g2().circuit(other_circuit()), ValueError,
     "edges belongs to the graph of another model"),
    ("Circuit without a graph", lambda: Circuit(None, []), TypeError, "graph must be a toylab.discovery.graph.Graph"),
    ("precision_recall across models", lambda: known().precision_recall(other_circuit()), ValueError,
     "graph of another model"),
    ("precision_recall against a same-shape model", lambda: known().precision_recall(twin_circuit()), ValueError,
     "graph of another model.*not the same edge"),
    ("precision_recall of a string", lambda: known().precision_recall("embed->logits"), TypeError,
     "reference must be a Circuit"),
    # --- metrics
    ("kl_to_clean of NaN logits", lambda: kl_to_clean(_clean_logits() * NAN), ValueError,
     r"clean_logits holds \d+ NaN or inf"),
    ("kl_to_clean of token ids", lambda: kl_to_clean(clean()[..., None]), ValueError,
     r"float tensor \[batch, pos, d_vocab\]"),
    ("kl_to_clean, empty positions", lambda: kl_to_clean(_clean_logits(), torch.zeros(15, dtype=torch.bool)),
     ValueError, "selects nothing"),
    ("kl_to_clean, float positions", lambda: kl_to_clean(_clean_logits(), torch.ones(15)), TypeError,
     "positions must be a bool mask"),
    ("kl_to_clean, positions of another length", lambda: kl_to_clean(_clean_logits(),
                                                                      torch.ones(9, dtype=torch.bool)),
     ValueError, r"shape \[15\] or \[4, 15\], got \[9\]"),
    ("logit_diff of identical tokens", lambda: logit_diff(clean(), clean()), ValueError, "agree at every"),
    ("logit_diff of lists", lambda: logit_diff([[1, 2]], [[2, 1]]), TypeError, "tokens must be a LongTensor"),
    ("next_token_loss_on one token", lambda: next_token_loss_on(clean()[:, :1]), ValueError, "pos >= 2"),
    ("induction_positions of floats", lambda: induction_positions(torch.ones(2, 3)), ValueError,
     "is_repeat must be a bool tensor"),
    ("metric on another batch's logits", lambda: kl()(torch.zeros(2, 15, 128)), ValueError,
     r"expects logits .* = \[4, 15\], got \[2, 15, 128\]"),
    ("logit_diff metric on a smaller vocabulary", lambda: logit_diff(clean(), corr())(torch.zeros(4, 15, 64)),
     ValueError, "made for token id 1[0-9][0-9], but these logits have d_vocab = 64"),
    ("next_token_loss_on on a smaller vocabulary", lambda: next_token_loss_on(clean())(torch.zeros(4, 15, 64)),
     ValueError, "another vocabulary"),
    ("metric value NaN", lambda: check_metric_value(torch.tensor(NAN)), ValueError, "must be a finite number"),
    ("metric value a string", lambda: check_metric_value("0.5"), TypeError, "must return a real scalar"),
    # --- exact edge patching
    ("run_circuit, metric returning NaN", lambda: run_circuit(m2(), g2(), known(), clean(), corr(), nan_metric),
     ValueError, r"returned nan: a metric must be a finite number"),
    ("run_circuit, circuit of another model",
     lambda: run_circuit(m2(), g2(), other_circuit(), clean(), corr(), kl()), ValueError, "graph of another model"),
    ("run_circuit, graph of another model", lambda: run_circuit(m2(), g1(), other_circuit(), clean(), corr(), kl()),
     ValueError, "graph was built for another model"),
    ("run_circuit, graph of same-shape model", lambda: run_circuit(m2(), gtwin(), twin_circuit(), clean(), corr(),
                                                                   kl()),
     ValueError, "built from a model with other weights"),
    ("run_circuit, metric by name", lambda: run_circuit(m2(), g2(), known(), clean(), corr(), "kl"), TypeError,
     "must be a function logits"),
    ("run_circuit, edges instead of a Circuit", lambda: run_circuit(m2(), g2(), list(known().edges), clean(),
                                                                    corr(), kl()),
     TypeError, "circuit must be a Circuit"),
    ("edge_effects, shapes differ", lambda: edge_effects(m2(), g2(), clean(), corr()[:2], kl()), ValueError,
     "same shape"),
    ("edge_effects, negative edges_per_pass", lambda: edge_effects(m2(), g2(), clean(), corr(), kl(),
                                                                   edges_per_pass=-1),
     ValueError, "edges_per_pass must be a positive integer"),
    ("edge_effects, unknown direction", lambda: edge_effects(m2(), g2(), clean(), corr(), kl(), direction="up"),
     ValueError, "direction must be one of"),
    ("edge_effects, denoise from zero", lambda: edge_effects(m2(), g2(), clean(), "zero", kl(), direction="denoise"),
     ValueError, "denoising needs corrupted tokens"),
    ("edge_effects, metric returning inf", lambda: edge_effects(m2(), g2(), clean(), corr(), inf_metric),
     ValueError, "returned inf"),
    ("run_with_edges, NaN weights", lambda: run_with_edges(m2(), g2(), clean(), corr(), torch.full((len(g2()),), NAN)),
     ValueError, "patch weights hold 37 NaN"),
    ("run_with_edges, weights of another length", lambda: run_with_edges(m2(), g2(), clean(), corr(), torch.ones(5)),
     ValueError, r"shape \[37\] or \[G, 37\]"),
    ("run_with_edges, unknown source", lambda: run_with_edges(m2(), g2(), clean(), "ones", []), ValueError,
     "or 'zero', got 'ones'"),
    ("run_with_edges, token out of range", lambda: run_with_edges(m2(), g2(), clean() + 200, corr(), []), ValueError,
     "out of range"),
    ("run_with_edges, empty batch", lambda: run_with_edges(m2(), g2(), clean()[:0], corr()[:0], []), ValueError,
     "tokens is empty"),
    ("run_with_edges, longer than n_ctx", lambda: run_with_edges(m2(), g2(), torch.ones(2, 40, dtype=torch.long),
                                                                 "zero", []),
     ValueError, "longer than the model's n_ctx"),
    ("run_with_edges, embed_override of a wrong shape",
     lambda: run_with_edges(m2(), g2(), clean(), corr(), [], embed_override=torch.zeros(3, 15, 64)), ValueError,
     r"embed_override must be a tensor \[G \* batch, pos, d_model\] = \[4, 15, 64\]"),
    ("run_with_edges, float tokens", lambda: run_with_edges(m2(), g2(), clean().float(), corr(), []), TypeError,
     "integer ids"),
    ("sender_outputs, graph of another model", lambda: sender_outputs(m2(), g1(), clean()), ValueError,
     "graph was built for another model"),
    ("as_weights, complex", lambda: as_weights(g2(), torch.zeros(37, dtype=torch.complex64)), TypeError,
     "real numbers"),
    ("as_weights, circuit of another model", lambda: as_weights(g2(), other_circuit()), ValueError,
     "graph of another model"),
    # --- attribution patching
    ("node_attribution, unknown node", lambda: node_attribution(m2(), clean(), corr(), kl(), node="z"), ValueError,
     "node must be one of"),
    ("node_attribution, unknown around", lambda: node_attribution(m2(), clean(), corr(), kl(), around="middle"),
     ValueError, "around must be 'clean' or 'corrupted'"),
    ("node_attribution, QK fix on results", lambda: node_attribution(m2(), clean(), corr(), kl(), qk_fix=True),
     ValueError, "QK fix applies to query and key"),
    ("node_attribution, QK fix 'yes'", lambda: node_attribution(m2(), clean(), corr(), kl(), node="q", qk_fix="yes"),
     TypeError, "qk_fix must be True or False"),
    ("node_attribution around zero", lambda: node_attribution(m2(), clean(), "zero", kl(), around="corrupted"),
     ValueError, "needs corrupted tokens"),
    ("node_attribution, metric returning NaN", lambda: node_attribution(m2(), clean(), corr(), nan_metric),
     ValueError, "finite number"),
    ("node_attribution, 0-layer model", lambda: node_attribution(bigram(), clean()[:, :8] % 64, corr()[:, :8] % 64,
                                                                 lambda lg: lg.sum()),
     ValueError, "has no layers"),
    ("node_effects, metric returning inf", lambda: node_effects(m2(), clean(), corr(), inf_metric), ValueError,
     "returned inf"),
    ("edge_attribution, unknown method", lambda: edge_attribution(m2(), g2(), clean(), corr(), kl(), method="ig"),
     ValueError, "method must be one of"),
    ("edge_attribution, 0 steps", lambda: edge_attribution(m2(), g2(), clean(), corr(), kl(), method="eap-ig",
                                                           steps=0),
     ValueError, "steps must be a positive integer"),
    ("edge_attribution, EAP with 10 steps", lambda: edge_attribution(m2(), g2(), clean(), corr(), kl(), steps=10),
     ValueError, "steps=10 applies to method='eap-ig'"),
    ("edge_attribution, graph of another model", lambda: edge_attribution(m2(), g1(), clean(), corr(), kl()),
     ValueError, "graph was built for another model"),
    # --- ACDC
    ("acdc, tau NaN", lambda: acdc(m2(), g2(), clean(), corr(), NAN), ValueError, "tau must be a finite number"),
    ("acdc, negative tau", lambda: acdc(m2(), g2(), clean(), corr(), -0.1), ValueError, "finite number >= 0"),
    ("acdc, tau as text", lambda: acdc(m2(), g2(), clean(), corr(), "0.1"), TypeError, "tau must be a number"),
    ("acdc, unknown sender order", lambda: acdc(m2(), g2(), clean(), corr(), 0.1, sender_order="backward"),
     ValueError, "sender_order must be one of"),
    ("acdc, incomplete sender order", lambda: acdc(m2(), g2(), clean(), corr(), 0.1, sender_order=["embed"]),
     ValueError, "must list every node; missing"),
    ("acdc, a node twice in the order", lambda: acdc(m2(), g2(), clean(), corr(), 0.1,
                                                     sender_order=["embed", "embed"]),
     ValueError, "appears twice"),
    ("acdc, metric returning NaN", lambda: acdc(m2(), g2(), clean(), corr(), 0.1, metric=nan_metric), ValueError,
     "finite number"),
    ("acdc, positions with a metric", lambda: acdc(m2(), g2(), clean(), corr(), 0.1, metric=kl(),
                                                   positions=torch.ones(15, dtype=torch.bool)),
     ValueError, "put the positions into the metric"),
    ("acdc, graph of another model", lambda: acdc(m2(), g1(), clean(), corr(), 0.1), ValueError,
     "graph was built for another model"),
    ("acdc_sweep, one tau", lambda: acdc_sweep(m2(), g2(), clean(), corr(), 0.1), TypeError,
     "taus must be a list of thresholds"),
    ("acdc_sweep, no taus", lambda: acdc_sweep(m2(), g2(), clean(), corr(), []), ValueError, "taus is empty"),
    # --- subnetwork probing
    ("subnetwork_probing, negative lam", lambda: subnetwork_probing(m2(), g2(), clean(), corr(), -1.0), ValueError,
     "lam must be a finite number >= 0"),
    ("subnetwork_probing, lr NaN", lambda: subnetwork_probing(m2(), g2(), clean(), corr(), 0.1, lr=NAN), ValueError,
     "lr must be a finite number > 0"),
    ("subnetwork_probing, 0 steps", lambda: subnetwork_probing(m2(), g2(), clean(), corr(), 0.1, steps=0),
     ValueError, "steps must be a positive integer"),
    ("subnetwork_probing, seed as text", lambda: subnetwork_probing(m2(), g2(), clean(), corr(), 0.1, seed="a"),
     TypeError, "seed must be an integer"),
    ("gate, draws outside (0, 1)", lambda: gate(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0])), ValueError,
     "strictly between 0 and 1"),
    # --- ROC and rank statistics
    ("tpr_fpr across models", lambda: tpr_fpr(other_circuit(), known()), ValueError, "graph of another model"),
    ("tpr_fpr against a same-shape model", lambda: tpr_fpr(twin_circuit(), known()), ValueError,
     "graph of another model"),
    ("tpr_fpr of edge names", lambda: tpr_fpr(list(known().edges), known()), TypeError, "circuit must be a Circuit"),
    ("tpr_fpr, empty reference", lambda: tpr_fpr(known(), g2().circuit([])), ValueError,
     "at least one edge in and one edge out"),
    ("tpr_fpr, universe as one string", lambda: tpr_fpr(known(), known(), edges="embed->logits"), TypeError,
     "not a single string"),
    ("roc_from_scores with NaN", lambda: roc_from_scores(g2(), torch.full((37,), NAN), known()), ValueError,
     "scores holds 37 NaN or inf"),
    ("roc_from_scores of another length", lambda: roc_from_scores(g2(), torch.zeros(5), known()), ValueError,
     r"scores must be a tensor \[37\]"),
    ("roc_from_scores, reference of another model", lambda: roc_from_scores(g2(), torch.zeros(37), twin_circuit()),
     ValueError, "graph of another model"),
    ("roc_curve, no circuits", lambda: roc_curve([], known()), ValueError, "at least one circuit"),
    ("roc_curve, one circuit not in a list", lambda: roc_curve(known(), known()), TypeError,
     "circuits must be a list of Circuits"),
    ("roc_curve, a family across models", lambda: roc_curve([known(), twin_circuit()], known()), ValueError,
     "graph of another model"),
    ("spearman of a constant", lambda: spearman(torch.ones(5), torch.arange(5.0)), ValueError,
     "a is constant.*0/0"),
    ("spearman with NaN", lambda: spearman(torch.tensor([1.0, NAN, 3.0]), torch.arange(3.0)), ValueError,
     "a holds 1 NaN"),
    ("spearman of different lengths", lambda: spearman(torch.arange(5.0), torch.arange(3.0)), ValueError,
     "same length"),
    ("spearman of different shapes", lambda: spearman(torch.rand(2, 3), torch.rand(6)), ValueError,
     r"same length \(and shape\), got \[2, 3\] and \[6\]"),
    ("spearman of text", lambda: spearman("abc", "abd"), TypeError, "must be a tensor of numbers"),
    ("topk_recall, k = 0", lambda: topk_recall(torch.arange(5.0), torch.arange(5.0), 0), ValueError, "1 <= k <= n"),
    ("topk_recall, k = 1.5", lambda: topk_recall(torch.arange(5.0), torch.arange(5.0), 1.5), TypeError,
     "k must be an integer"),
    ("topk_recall with inf", lambda: topk_recall(torch.tensor([1.0, math.inf]), torch.arange(2.0), 1), ValueError,
     "estimate holds 1 NaN or inf"),
    # --- figures (checked before any figure is made)
    ("edge_graph, circuit of another model", lambda: figures.edge_graph(g2(), other_circuit()), ValueError,
     "graph of another model"),
    ("edge_graph, ax a string", lambda: figures.edge_graph(g2(), ax="left"), TypeError,
     "ax must be a matplotlib Axes"),
    ("roc_curves, title a number", lambda: figures.roc_curves({"a": ([0.0, 1.0], [0.0, 1.0], 0.5)}, title=3),
     TypeError, "title must be a string"),
    ("edge_graph of a model", lambda: figures.edge_graph(m2()), TypeError, "graph must be a toylab.discovery"),
    ("roc_curves of a list", lambda: figures.roc_curves([roc_curve([known()], known())]), TypeError,
     r"curves must be a dict \{label: \(fpr, tpr, auc\)\}"),
    ("roc_curves, NaN rate", lambda: figures.roc_curves({"a": ([0.0, NAN], [0.0, 1.0], 0.5)}), ValueError,
     r"fpr must be rates in \[0, 1\]"),
    ("roc_curves, NaN AUC", lambda: figures.roc_curves({"a": ([0.0, 1.0], [0.0, 1.0], NAN)}), ValueError,
     r"the AUC must be a number in \[0, 1\]"),
    ("roc_curves, two-part curve", lambda: figures.roc_curves({"a": ([0.0, 1.0], [0.0, 1.0])}), ValueError,
     r"must be \(fpr, tpr, auc\)"),
    ("roc_curves, nothing", lambda: figures.roc_curves({}), ValueError, "nothing to draw"),
    # --- reference circuits and ground truth
    ("induction_heads of a 1-layer model", lambda: induction_heads(m1(), clean()), ValueError,
     "at least two layers"),
    ("induction_circuit, threshold NaN", lambda: induction_circuit(m2(), g2(), clean(), threshold=NAN), ValueError,
     "threshold must be a finite number"),
    ("induction_circuit, threshold above 1", lambda: induction_circuit(m2(), g2(), clean(), threshold=1.5),
     ValueError, r"threshold must be a finite number in \[0, 1\]"),
    ("induction_circuit, negative min_ratio", lambda: induction_circuit(m2(), g2(), clean(), composition=True,
                                                                        min_ratio=-1.0),
     ValueError, "min_ratio must be a finite number in"),
    ("induction_circuit, graph of another model", lambda: induction_circuit(m2(), gtwin(), clean()), ValueError,
     "other weights"),
    ("induction_heads without repeats", lambda: induction_heads(m2(), torch.arange(1, 16)[None]), ValueError,
     "no destination in this batch"),
    ("copied_positions of tokens", lambda: copied_positions(clean()), TypeError, "batch must be an InductionBatch"),
    ("distractors, float within", lambda: distractors(batch(), torch.ones(24, 32)), ValueError,
     "within must be a bool mask"),
    # --- causal scrubbing
    ("EquivalenceClasses of float tokens", lambda: EquivalenceClasses(clean().float()), TypeError,
     "must be integer ids"),
    ("EquivalenceClasses of one sequence", lambda: EquivalenceClasses(clean()[:1]), ValueError,
     "at least 2 sequences"),
    ("EquivalenceClasses, float labels", lambda: EquivalenceClasses(clean(), {"x": torch.zeros(4)}), ValueError,
     "one integer label per pool sequence"),
    ("EquivalenceClasses, features as a list", lambda: EquivalenceClasses(clean(), [1, 2]), TypeError,
     "features must be a dict"),
    ("EquivalenceClasses, redefining 'any'", lambda: EquivalenceClasses(clean(), {"any": torch.arange(4)}),
     ValueError, "'any' is built in"),
    ("EquivalenceClasses, positions as a list", lambda: EquivalenceClasses(clean(), positions=[True] * 15),
     ValueError, r"positions must be a bool mask \[4, 15\]"),
    ("resample, index outside the pool", lambda: classes().resample(torch.tensor([99]), "any",
                                                                    torch.Generator()),
     ValueError, "must index the pool of 24"),
    ("resample, unknown feature", lambda: classes().resample(torch.tensor([0]), "colour", torch.Generator()),
     ValueError, "unknown feature 'colour'"),
    ("redraw_tokens of tokens", lambda: redraw_tokens(clean(), 128, 2, torch.Generator()), TypeError,
     "batch must be an InductionBatch"),
    ("redraw_tokens, 0 variants", lambda: redraw_tokens(batch(), 128, 0, torch.Generator()), ValueError,
     "n_variants must be a positive integer"),
    ("redraw_tokens without a generator", lambda: redraw_tokens(batch(), 128, 2, None), TypeError,
     "generator must be a torch.Generator"),
    ("redraw_tokens, vocabulary of 1", lambda: redraw_tokens(batch(), 1, 2, torch.Generator()), ValueError,
     "d_vocab must be an integer >= 2"),
    ("scrub, unknown edge", lambda: scrub(m2(), g2(), classes(), Hypothesis({"L3H0->logits": "identity"})),
     ValueError, "names node 'L3H0'"),
    ("scrub, unknown feature", lambda: scrub(m2(), g2(), classes(), Hypothesis({"L1H0->logits": "colour"})),
     ValueError, "unknown feature 'colour'"),
    ("scrub, edges as a list", lambda: scrub(m2(), g2(), classes(), Hypothesis(["L1H0->logits"])), TypeError,
     "must be a dict"),
    ("scrub, graph of another model", lambda: scrub(m2(), g1(), classes(), hyp()), ValueError,
     "graph was built for another model"),
    ("scrub, 0 bootstrap draws", lambda: scrub(m2(), g2(), classes(), hyp(), n_boot=0), ValueError,
     "n_boot must be a positive integer"),
    ("scrub, confidence 1.5", lambda: scrub(m2(), g2(), classes(), hyp(), confidence=1.5), ValueError,
     "strictly between 0 and 1"),
    ("scrub, a foreign baseline", lambda: scrub(m2(), g2(), classes(), hyp(), baseline=0.5), ValueError,
     "baseline must be a ScrubResult"),
    ("scrub, baseline of another pool", lambda: scrub(m2(), g2(), classes(), hyp(), n_resamples=1, n_boot=10,
                                                      baseline=_baseline_of_another_pool()),
     ValueError, "same model and the same classes"),
    ("scrub, pool longer than n_ctx", lambda: scrub(m2(), g2(), EquivalenceClasses(torch.ones(3, 40,
                                                                                            dtype=torch.long)),
                                                    Hypothesis({})),
     ValueError, "longer than the model's n_ctx"),
    ("scrub of a model with NaN weights", lambda: scrub(nan_model(), Graph(nan_model()), classes(), hyp(),
                                                        n_resamples=1, n_boot=10),
     ValueError, "loss is NaN or inf"),
    ("treeified_logits, root outside the pool", lambda: treeified_logits(m2(), g2(), classes(), hyp(),
                                                                          torch.tensor([30]), torch.Generator()),
     ValueError, "must index the pool"),
    ("scrubbed_position_losses, 0 resamples", lambda: scrubbed_position_losses(m2(), g2(), classes(), hyp(),
                                                                               torch.tensor([0]), 0),
     ValueError, "n_resamples must be a positive integer"),
    ("position_losses, logits of another batch", lambda: position_losses(classes(), torch.zeros(2, 32, 128),
                                                                         torch.tensor([0])),
     ValueError, r"\[B, pos\] = \[1, 32\]"),
    # --- the attention viewer
    ("viewer, title a number", lambda: attention_viewer(list("abcde"), _pattern(), title=5), TypeError,
     "title must be a string"),
    ("viewer, NaN pattern", lambda: attention_viewer(list("abcde"), _pattern() * NAN), ValueError, "NaN or inf"),
    ("viewer, transposed pattern", lambda: attention_viewer(list("abcde"), _pattern().transpose(-1, -2)),
     ValueError, "not causal"),
    ("viewer, too few tokens", lambda: attention_viewer(list("abc"), _pattern()), ValueError,
     "got 3 tokens but the pattern has 5 positions"),
    ("viewer, query out of range", lambda: attention_viewer(list("abcde"), _pattern(), query=9), ValueError,
     r"query must be a position in \[-5, 5\)"),
    ("viewer, tokens a number", lambda: attention_viewer(5, _pattern()), TypeError, "tokens must be a sequence"),
    ("heads_from_cache of text", lambda: heads_from_cache("cache"), TypeError, "cache must be an ActivationCache"),
    ("heads_from_cache, float batch index", lambda: heads_from_cache(cache(), 1.5), TypeError,
     "batch_index must be an integer"),
    ("heads_from_cache, batch index out of range", lambda: heads_from_cache(cache(), 9), ValueError,
     "batch_index 9 is out of range for a batch of 4"),
    ("heads_from_cache, layer out of range", lambda: heads_from_cache(cache(), 0, [5]), ValueError,
     "layers: bad cache key .* layer 5 is out of range"),
    ("viewer.save into a read-only folder", lambda: _readonly_save(None), SaveError, "is not writable"),
    ("viewer.save onto a folder", lambda: viewer().save(tmpdir()), SaveError,
     "is a folder; give a file path such as .*viewer.html"),
    ("viewer.save to None", lambda: viewer().save(None), TypeError, "path must be a file path"),
    # --- the off-probe evaluations
    ("segment_tokens, negative batch", lambda: segment_tokens(64, 32, 4, -1, torch.Generator()), ValueError,
     "batch must be an integer >= 1, got -1"),
    ("segment_tokens, vocabulary of 1", lambda: segment_tokens(1, 32, 4, 2, torch.Generator()), ValueError,
     "d_vocab must be an integer >= 2"),
    ("segment_tokens without a generator", lambda: segment_tokens(64, 32, 4, 2, 0), TypeError,
     "generator must be a torch.Generator"),
    ("segment_tokens, segment too long", lambda: segment_tokens(64, 12, 6, 2, torch.Generator()), ValueError,
     "does not fit twice"),
    ("no_bos_probe, batch 0", lambda: no_bos_probe(m2(), batch=0), ValueError, "batch must be a positive integer"),
    ("no_bos_probe, seed as text", lambda: no_bos_probe(m2(), seed="x"), ValueError,
     "seed must be a non-negative integer"),
    ("no_bos_probe of a name", lambda: no_bos_probe("induction-2l"), TypeError, "model must be an AttnOnlyTransformer"),
    ("segment_probe, seg_len 2", lambda: segment_probe(m2(), seg_len=2), ValueError, "seg_len must be an integer >= 3"),
    ("off_probe_metrics, context too short", lambda: off_probe_metrics(short_model()), ValueError,
     "need n_ctx >= 11"),
    ("off_probe_failures of an empty dict", lambda: off_probe_failures({}), ValueError, "metrics lacks"),
    ("off_probe_lines of a number", lambda: off_probe_lines(5), TypeError, "metrics must be a dict"),
    # --- head detectors, factored matrices, hooks
    ("induction_score, destinations of another batch",
     lambda: induction_score(cache()["pattern", 1], clean(), torch.ones(3, 15, dtype=torch.bool)), ValueError,
     r"\[batch, pos\] = \[4, 15\], got shape \[3, 15\]"),
    ("induction_score, float tokens", lambda: induction_score(cache()["pattern", 1], clean().float()), TypeError,
     "tokens must be a LongTensor"),
    ("check_causal_pattern of a list", lambda: check_causal_pattern([[1.0]]), ValueError,
     "pattern must be a tensor"),
    ("FactoredMatrix eigenvalues, NaN factor",
     lambda: FactoredMatrix(torch.full((5, 3), NAN), torch.ones(3, 5)).eigenvalues, ValueError,
     r"eigenvalues: factor A \[5, 3\] holds 15 NaN or inf"),
    ("FactoredMatrix svd, inf factor", lambda: FactoredMatrix(torch.ones(5, 3), torch.full((3, 4), math.inf)).svd(),
     ValueError, "svd: factor B"),
    ("FactoredMatrix norm, NaN factor", lambda: FactoredMatrix(torch.full((5, 3), NAN), torch.ones(3, 4)).norm(),
     ValueError, "norm: factor A"),
    ("a hook that re-runs the model", _reentrant_hook, ValueError, "runs the model again from inside itself"),
    # --- checkpoints whose data spec contradicts the config; presets and the command line
    ("checkpoint, vocabulary 32 vs 64", lambda: load_checkpoint(_tampered_checkpoint("vocab", d_vocab=32)),
     CheckpointError, "vocabulary of 32 tokens but the model d_vocab = 64"),
    ("checkpoint, data longer than n_ctx", lambda: load_checkpoint(_tampered_checkpoint("ctx", n_ctx=64)),
     CheckpointError, "sequences of 64 tokens but the model reads at most n_ctx = 16"),
    ("checkpoint, alphabet of another size", lambda: load_checkpoint(_tampered_checkpoint("abc", kind="text",
                                                                                        alphabet="abc")),
     CheckpointError, "alphabet has 3 characters"),
    ("checkpoint, data kind a number", lambda: load_checkpoint(_tampered_checkpoint("kind", kind=5)),
     CheckpointError, "the data spec's kind is 5"),
    ("save_checkpoint, contradicting spec", lambda: save_checkpoint(tmpdir() / "bad.pt", m2(),
                                                                    data_spec={"kind": "induction", "d_vocab": 64},
                                                                    train_spec={}, seed=0),
     CheckpointError, "contradicts the model config"),
    ("load_model, preset typo", lambda: load_model("induction-2L"), ValueError,
     r"did you mean 'induction-2l'\? the presets are"),
    ("toylab info, preset typo", lambda: _resolve_checkpoint("induction-2L"), ValueError,
     r"unknown preset 'induction-2L'; did you mean 'induction-2l'"),
    ("get_preset, far off", lambda: get_preset("gpt2"), ValueError, r"the presets are \['bigram-0l'"),
    ("toylab train PRESET --jobs 4", lambda: _train_args("induction-2l", "--jobs", "4"), ValueError,
     "--jobs 4 applies only with --all"),
    ("toylab train PRESET --out-dir", lambda: _train_args("induction-2l", "--out-dir", "x"), ValueError,
     "--out-dir x applies only with --all"),
    ("toylab train --all --out", lambda: _train_args("--all", "--out", "x.pt"), ValueError,
     "with --all give --out-dir"),
    ("evaluate, eval batch 0", lambda: evaluate(m2(), make_dataset(get_preset("induction-2l").data), 0, batch=0),
     ValueError, r"TrainConfig.eval_batch\) must be a positive integer"),
]


def _hooked_models():
    return [m2(), m1(), twin(), bigram()]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_sentence(case):
    plt.close("all")
    raises_a_sentence(case, _hooked_models())
    assert plt.get_fignums() == []


def test_the_table_has_distinct_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 55


def test_a_full_disk_leaves_the_page_already_there(tmp_path, monkeypatch):
    path = tmp_path / "page.html"
    viewer().save(path)
    old = path.read_bytes()

    def full_disk(self, data, *args, **kwargs):  # half a page, then the disk is full
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    other = attention_viewer(list("vwxyz"), _pattern(), title="another page")
    with pytest.raises(SaveError, match="No space left on device.*untouched"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # no temporary file left behind


def test_circuits_of_one_model_still_compare_across_graphs_built_twice():
    """A graph built again from the same model (or from the same weights, loaded again) is the same graph."""
    again = Graph(load_model("induction-2l"))
    c = again.circuit(known().edges)
    assert c == known() and tpr_fpr(c, known()) == (1.0, 0.0)
    assert run_circuit(load_model("induction-2l"), g2(), known(), clean(), corr(), kl()) == pytest.approx(
        run_circuit(m2(), g2(), known(), clean(), corr(), kl()))
    assert c != twin_circuit()  # same edge names, another model


def test_a_guarded_hook_may_run_the_model_once_from_inside():
    seen = []

    def hook(act, hook_point):
        if not seen:
            seen.append(1)
            m2()(clean())
    out = m2().run_with_hooks(clean(), fwd_hooks=[("blocks.0.attn.hook_z", hook)])
    plain = m2().run_with_hooks(clean(), fwd_hooks=[("blocks.0.attn.hook_z", lambda act, hook_point: None)])
    assert torch.equal(out, plain) and seen == [1] and not m2().any_hooks()


def test_eval_batch_is_the_evaluation_batch():
    """TrainConfig.eval_batch reaches every evaluation; at the presets' 256 it is what was always used."""
    from toylab.training.train import TrainConfig, train

    data = {"kind": "induction", "d_vocab": 16, "n_ctx": 12, "seed": 0, "min_offset": 2, "max_offset": 5,
            "p_repeat": 1.0, "p_periodic": 0.5, "p_end": 0.1}
    cfg = ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_layers=1, n_heads=2, positional="shortformer")
    small = TrainConfig(steps=4, batch_size=8, eval_every=4, eval_batch=8, warmup_steps=1)
    big = TrainConfig(steps=4, batch_size=8, eval_every=4, warmup_steps=1)
    a, b = train(cfg, data, small, seed=0, progress=False), train(cfg, data, big, seed=0, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    ds = make_dataset(data)
    assert a.metrics["val_loss"] == pytest.approx(evaluate(a.model, ds, 4, batch=8)["val_loss"])
    assert b.metrics["val_loss"] == pytest.approx(evaluate(b.model, ds, 4)["val_loss"])
    assert a.metrics["val_loss"] != b.metrics["val_loss"]
