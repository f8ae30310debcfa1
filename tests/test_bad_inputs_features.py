"""Bad inputs to toylab.features and the sentence each gets (issue 20, section 2).

One row per case: (id, call, expected exception, a regex its message must match).
Run with ``-s`` to print the table of messages. Every call must raise; no call may
leave a hook attached to a model, or change torch's grad mode (conftest checks that).
"""

import copy
import functools
import math
import re
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from toylab.data import InductionData, repeated_tokens
from toylab.features import ground_truth, metrics, probes, steering, tms
from toylab.features.checks import check_finite, check_int, check_number
from toylab.features.sae import ReluSAE, SparseAutoencoder, check_activations, resample_dead_latents
from toylab.features.topk import TopKSAE
from toylab.features.train_sae import check_hook, flatten_activation, gather_activations, hook_width, load_sae, \
    save_sae, train_sae
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.training.presets import load_model
from _helpers import raises_a_sentence  # noqa: E402

NAN, INF = float("nan"), float("inf")
RESID = "blocks.1.hook_resid_post"  # d_model = 64 in induction-2l


@functools.lru_cache(maxsize=None)
def m2():
    return load_model("induction-2l")


@functools.lru_cache(maxsize=None)
def nan_model():
    """induction-2l with one NaN in a layer-0 value weight (as if a hook or an edit had put it there)."""
    m = copy.deepcopy(m2())
    with torch.no_grad():
        m.blocks[0].attn.W_V[0, 0, 0] = NAN
    return m


@functools.lru_cache(maxsize=None)
def ln_model():
    return AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=2, n_heads=2,
                                           layernorm=True), seed=0)


def models():
    return [m2(), nan_model(), ln_model()]


@functools.lru_cache(maxsize=None)
def toks():
    return repeated_tokens(8, 15, 2, torch.Generator().manual_seed(0))  # [2, 31]


@functools.lru_cache(maxsize=None)
def batch():
    return InductionData(d_vocab=128, n_ctx=32).sample_batch(4, torch.Generator().manual_seed(3))


def sae():
    return ReluSAE(64, 32, seed=0)


def x(n=10, d=64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def with_nan(t, value=NAN):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def acts():
    return x(40, 8)


def labels():
    return torch.arange(40) % 2


def vec():
    return torch.randn(64, generator=torch.Generator().manual_seed(1))


_TMP = tempfile.TemporaryDirectory()


def sae_file(edit) -> Path:
    """A valid SAE file, loaded back raw, changed by ``edit(payload)`` and written again."""
    path = Path(_TMP.name) / "edited.pt"
    save_sae(path, ReluSAE(8, 4))
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def _set(*keys, value):
    def edit(payload):
        d = payload
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _nan_weight(payload):
    payload["state_dict"]["W_enc"][0, 0] = NAN


def _garbage():
    path = Path(_TMP.name) / "garbage.pt"
    path.write_text("not a torch file")
    return path


def _nan_sae():
    s = ReluSAE(8, 4)
    with torch.no_grad():
        s.W_dec.fill_(NAN)
    return s


CASES = [
    # --- SAE forward, loss and maps: non-finite, dtype, device, shape
    ("ReluSAE forward, NaN activations", lambda: sae()(with_nan(x())), ValueError,
     r"activations: 1 of its 640 values are non-finite \(1 NaN, 0 inf\)"),
    ("ReluSAE loss, NaN activations", lambda: sae().loss(with_nan(x())), ValueError, "1 NaN, 0 inf"),
    ("TopKSAE forward, inf activations", lambda: TopKSAE(64, 32, k=4)(with_nan(x(), INF)), ValueError,
     r"non-finite \(0 NaN, 1 inf\)"),
    ("TopKSAE loss, NaN activations", lambda: TopKSAE(64, 32, k=4).loss(with_nan(x())), ValueError, "non-finite"),
    ("TopKSAE fired, NaN activations", lambda: TopKSAE(64, 32, k=4).fired(with_nan(x())), ValueError, "non-finite"),
    ("ReluSAE float64 activations", lambda: sae()(x().double()), TypeError,
     r"dtype torch.float64 but the SAE's weights are torch.float32.*x.to\(torch.float32\)"),
    ("TopKSAE loss, float64 activations", lambda: TopKSAE(64, 32, k=4).loss(x().double()), TypeError,
     "dtype torch.float64"),
    ("ReluSAE meta-device activations", lambda: sae()(torch.empty(3, 64, device="meta")), ValueError,
     "on the meta device"),
    ("ReluSAE integer activations", lambda: sae()(x().long()), TypeError,
     "must be floating point, got dtype torch.int64"),
    ("ReluSAE a list", lambda: sae()([[0.0] * 64]), TypeError, r"torch.Tensor of shape \[batch, 64\], got list"),
    ("ReluSAE one vector, not a batch", lambda: sae()(x()[0]), ValueError, r"\[batch, d_in=64\], got \[64\]"),
    ("ReluSAE mismatched d_in", lambda: sae()(x(4, 8)), ValueError, "d_in must match the hook's activation size"),
    ("ReluSAE empty batch", lambda: sae()(x(0)), ValueError, "is empty"),
    ("decode NaN latents", lambda: sae().decode(torch.full((3, 32), NAN)), ValueError, "latents: 96 of its 96"),
    ("decode float64 latents", lambda: sae().decode(torch.rand(3, 32).double()), TypeError,
     "latents have dtype torch.float64"),
    ("decode integer latents", lambda: sae().decode(torch.ones(3, 32, dtype=torch.long)), TypeError,
     "latents have dtype torch.int64"),
    ("decode wrong width", lambda: sae().decode(torch.rand(3, 5)), ValueError, r"\[batch, d_sae=32\], got \[3, 5\]"),
    ("ReluSAE on the meta device", lambda: ReluSAE(4, 4).to("meta")(torch.randn(2, 4)), ValueError,
     "the weights to apply to activations are on the meta device"),
    ("the SparseAutoencoder base class", lambda: SparseAutoencoder(4, 4)(torch.randn(2, 4)), NotImplementedError,
     "build a ReluSAE .* or a TopKSAE"),
    ("pre_acts, NaN activations", lambda: sae().pre_acts(with_nan(x())), ValueError, "1 NaN"),
    ("TopKSAE encode, float64", lambda: TopKSAE(64, 32, k=4).encode(x().double()), TypeError, "dtype torch.float64"),
    ("check_activations, NaN", lambda: check_activations(with_nan(x()), 64, "rows"), ValueError,
     "rows: 1 of its 640 values are non-finite"),
    ("check_activations, a numpy array", lambda: check_activations(x().numpy(), 64), TypeError,
     "must be a torch.Tensor"),
    ("set_input_scale, one NaN", lambda: sae().set_input_scale(with_nan(x())), ValueError, "1 NaN"),
    # --- SAE constructors
    ("ReluSAE d_in=0", lambda: ReluSAE(0, 4), ValueError, "d_in must be a positive integer, got 0"),
    ("ReluSAE float d_sae", lambda: ReluSAE(4, 4.0), ValueError,
     r"d_sae must be a positive integer, got 4.0 \(float\)"),
    ("ReluSAE string seed", lambda: ReluSAE(4, 4, seed="a"), ValueError, "seed must be an integer, got 'a'"),
    ("ReluSAE float seed", lambda: ReluSAE(4, 4, seed=1.5), ValueError, "seed must be an integer, got 1.5"),
    ("ReluSAE NaN l1_coefficient", lambda: ReluSAE(4, 4, l1_coefficient=NAN), ValueError,
     "l1_coefficient must be a finite number >= 0"),
    ("TopKSAE k > d_sae", lambda: TopKSAE(8, 4, k=5), ValueError, "1 <= k <= d_sae = 4, got 5"),
    ("TopKSAE float k", lambda: TopKSAE(8, 4, k=2.0), ValueError, "k must be an integer"),
    ("TopKSAE k_aux > d_sae", lambda: TopKSAE(8, 4, k=2, k_aux=100), ValueError, "1 <= k_aux <= d_sae = 4, got 100"),
    ("TopKSAE NaN aux_coefficient", lambda: TopKSAE(8, 4, aux_coefficient=NAN), ValueError,
     "aux_coefficient must be a finite number"),
    ("TopKSAE dead_after=0", lambda: TopKSAE(8, 4, dead_after=0), ValueError, "dead_after must be a positive integer"),
    # --- resampling
    ("resample, generator None", lambda: resample_dead_latents(sae(), x(), torch.ones(32, dtype=torch.bool), None),
     TypeError, "generator must be a torch.Generator"),
    ("resample, dead of wrong length", lambda: resample_dead_latents(sae(), x(), torch.ones(3, dtype=torch.bool),
                                                                     torch.Generator()), ValueError,
     r"dead must be a bool tensor of shape \[32\]"),
    ("resample, NaN encoder_scale", lambda: resample_dead_latents(sae(), x(), torch.ones(32, dtype=torch.bool),
                                                                  torch.Generator(), encoder_scale=NAN), ValueError,
     "encoder_scale must be a finite positive number"),
    ("resample, optimizer a string", lambda: resample_dead_latents(sae(), x(), torch.ones(32, dtype=torch.bool),
                                                                   torch.Generator(), optimizer="adam"), TypeError,
     "optimizer must be None or a torch.optim.Optimizer"),
    ("resample, NaN inputs", lambda: resample_dead_latents(sae(), with_nan(x()), torch.ones(32, dtype=torch.bool),
                                                           torch.Generator()), ValueError, "x: 1 of its"),
    ("resample, a model as sae", lambda: resample_dead_latents(m2(), x(), torch.ones(32, dtype=torch.bool),
                                                               torch.Generator()), TypeError,
     "sae must be a SparseAutoencoder"),
    # --- train_sae
    ("train_sae, one NaN (not 'all zero')", lambda: train_sae(sae(), with_nan(x()), steps=2, progress=False),
     ValueError, r"acts: 1 of its 640 values are non-finite \(1 NaN"),
    ("train_sae, inf activations", lambda: train_sae(sae(), with_nan(x(), INF), steps=2, progress=False),
     ValueError, r"\(0 NaN, 1 inf\)"),
    ("train_sae, float64 activations", lambda: train_sae(sae(), x().double(), steps=2, progress=False), TypeError,
     "acts have dtype torch.float64"),
    ("train_sae, lr=nan", lambda: train_sae(sae(), x(), steps=2, lr=NAN, progress=False), ValueError,
     "lr must be a finite positive number, got nan"),
    ("train_sae, lr=inf", lambda: train_sae(sae(), x(), steps=2, lr=INF, progress=False), ValueError,
     "lr must be a finite positive number, got inf"),
    ("train_sae, lr=True", lambda: train_sae(sae(), x(), steps=2, lr=True, progress=False), ValueError,
     r"got True \(bool\)"),
    ("train_sae, steps=0", lambda: train_sae(sae(), x(), steps=0, progress=False), ValueError,
     "steps must be a positive integer"),
    ("train_sae, string seed", lambda: train_sae(sae(), x(), steps=2, seed="x", progress=False), ValueError,
     "seed must be an integer"),
    ("train_sae, resample_every=True", lambda: train_sae(sae(), x(), steps=2, resample_every=True, progress=False),
     ValueError, "resample_every must be None or a positive integer"),
    ("train_sae, unknown init_b_dec", lambda: train_sae(sae(), x(), steps=2, init_b_dec="median", progress=False),
     ValueError, "init_b_dec must be 'zero' or 'mean'"),
    ("train_sae, progress a string", lambda: train_sae(sae(), x(), steps=2, progress="no"), TypeError,
     "progress must be True or False"),
    ("train_sae, a model as sae", lambda: train_sae(m2(), x(), steps=2, progress=False), TypeError,
     "sae must be a SparseAutoencoder, got AttnOnlyTransformer"),
    ("train_sae, all-zero activations", lambda: train_sae(sae(), torch.zeros(5, 64), steps=2, progress=False),
     ValueError, "the activations are all zero"),
    ("train_sae diverging (lr=1e30)", lambda: train_sae(ReluSAE(64, 8), x(), steps=30, lr=1e30, progress=False),
     ValueError, r"training diverged at step \d+: the loss is nan"),
    # --- gather_activations, hooks
    ("gather_activations, 1-token sequences", lambda: gather_activations(m2(), "blocks.0.hook_resid_post",
                                                                         toks()[:, :1]), ValueError,
     "1 position.*skip_first=True drops position 0, which leaves no rows"),
    ("gather_activations, batch_size=0", lambda: gather_activations(m2(), RESID, toks(), batch_size=0), ValueError,
     "batch_size must be a positive integer, got 0"),
    ("gather_activations, batch_size=-1", lambda: gather_activations(m2(), RESID, toks(), batch_size=-1), ValueError,
     "batch_size must be a positive integer, got -1"),
    ("gather_activations, batch_size=2.5", lambda: gather_activations(m2(), RESID, toks(), batch_size=2.5),
     ValueError, "batch_size must be a positive integer, got 2.5"),
    ("gather_activations, skip_first a string", lambda: gather_activations(m2(), RESID, toks(), skip_first="no"),
     TypeError, "skip_first must be True or False"),
    ("gather_activations, unknown hook", lambda: gather_activations(m2(), "blocks.9.hook_resid_post", toks()),
     KeyError, r"^unknown hook 'blocks.9.hook_resid_post'; this model's hooks are:\n  hook_embed"),
    ("gather_activations, a pattern hook", lambda: gather_activations(m2(), "blocks.0.attn.hook_pattern", toks()),
     ValueError, "an SAE needs a vector-valued activation"),
    ("gather_activations, head on a residual hook", lambda: gather_activations(m2(), RESID, toks(), head=0),
     ValueError, "head=0 only makes sense for a per-head hook"),
    ("gather_activations, head out of range", lambda: gather_activations(m2(), "blocks.0.attn.hook_z", toks(),
                                                                         head=5), ValueError,
     r"head must be an integer in \[0, 2\), got 5"),
    ("gather_activations, a string as model", lambda: gather_activations("model", RESID, toks()), TypeError,
     "gather_activations needs a toylab model"),
    ("gather_activations, hook missing in a 0-layer model",
     lambda: gather_activations(load_model("bigram-0l"), "blocks.0.hook_resid_post", toks()), KeyError,
     "unknown hook 'blocks.0.hook_resid_post'"),
    ("gather_activations, a model with a NaN weight", lambda: gather_activations(nan_model(), RESID, toks()),
     ValueError, r"the activations at 'blocks.1.hook_resid_post': \d+ of its \d+ values are non-finite"),
    ("check_hook, bool head", lambda: check_hook(m2(), "blocks.0.attn.hook_z", head=True), ValueError,
     r"head must be an integer in \[0, 2\), got True"),
    ("check_hook, a scores hook", lambda: check_hook(m2(), "blocks.0.attn.hook_attn_scores"), ValueError,
     "vector-valued"),
    ("hook_width, an SAE as model", lambda: hook_width(sae(), "hook_embed"), TypeError,
     "hook_width needs a toylab model"),
    ("hook_width, int hook", lambda: hook_width(m2(), 3), TypeError, "hook must be a hook name"),
    ("flatten_activation, 2-D act", lambda: flatten_activation(torch.randn(3, 4), RESID), ValueError,
     r"must have shape \[batch, pos, d\], got \[3, 4\]"),
    ("flatten_activation, head out of range", lambda: flatten_activation(torch.randn(3, 4, 2, 5),
                                                                         "blocks.0.attn.hook_z", head=9),
     ValueError, r"head must be an integer in \[0, 1\]"),
    ("flatten_activation, int hook", lambda: flatten_activation(torch.randn(3, 4, 5), 3), TypeError,
     "hook must be a hook name"),
    # --- save_sae / load_sae
    ("save_sae, a model", lambda: save_sae(Path(_TMP.name) / "m.pt", m2()), TypeError, "save_sae needs one of"),
    ("save_sae, meta a list", lambda: save_sae(Path(_TMP.name) / "s.pt", sae(), meta=[1]), TypeError,
     "meta must be a dict"),
    ("save_sae, a tensor in meta", lambda: save_sae(Path(_TMP.name) / "s.pt", sae(), meta={"a": torch.ones(2)}),
     ValueError, r"meta\['a'\] is a torch.Tensor"),
    ("save_sae, NaN weights", lambda: save_sae(Path(_TMP.name) / "n.pt", _nan_sae()), ValueError,
     "the SAE's W_dec: 32 of its 32 values are non-finite"),
    ("save_sae, an SAE on the meta device", lambda: save_sae(Path(_TMP.name) / "m.pt", ReluSAE(4, 4).to("meta")),
     ValueError, "the SAE's W_dec is on the meta device"),
    ("save_sae, path None", lambda: save_sae(None, sae()), TypeError, "path must be a file path"),
    ("load_sae, NaN weights", lambda: load_sae(sae_file(_nan_weight)), ValueError,
     r"weight W_enc: 1 of its 32 values are non-finite.*did training diverge"),
    ("load_sae, unknown config key", lambda: load_sae(sae_file(_set("config", "foo", value=1))), ValueError,
     r"config has key\(s\) \['foo'\] that a relu SAE does not take"),
    ("load_sae, bad config value", lambda: load_sae(sae_file(_set("config", "d_sae", value=-1))), ValueError,
     "the stored config does not make a relu SAE: d_sae must be a positive integer"),
    ("load_sae, config a list", lambda: load_sae(sae_file(_set("config", value=[1]))), ValueError,
     "the stored config is a list"),
    ("load_sae, tensor of the wrong shape", lambda: load_sae(sae_file(_set("state_dict", "W_enc",
                                                                            value=torch.zeros(3, 3)))),
     ValueError, r"the stored W_enc has shape \[3, 3\] but the stored config .* needs \[8, 4\]"),
    ("load_sae, state_dict a list", lambda: load_sae(sae_file(_set("state_dict", value=[1]))), ValueError,
     "the stored state_dict is not a dict of tensors"),
    ("load_sae, meta a string", lambda: load_sae(sae_file(_set("meta", value="x"))), ValueError,
     "the stored meta is a str"),
    ("load_sae, not a torch file", lambda: load_sae(_garbage()), ValueError, "is not a toylab SAE file"),
    ("load_sae, a model checkpoint", lambda: load_sae(Path(__file__).resolve().parents[1] / "toylab" / "models"
                                                      / "induction-2l.pt"), ValueError,
     "is not a toylab SAE file"),
    ("load_sae, a folder", lambda: load_sae(_TMP.name), FileNotFoundError, "no SAE file at"),
    ("load_sae, int path", lambda: load_sae(3), TypeError, "path must be a file path"),
    # --- metrics
    ("l0, a model as sae", lambda: metrics.l0(m2(), x()), TypeError, "l0 needs a SparseAutoencoder"),
    ("l0, NaN activations", lambda: metrics.l0(sae(), with_nan(x())), ValueError, "non-finite"),
    ("fraction_variance_explained, NaN", lambda: metrics.fraction_variance_explained(sae(), with_nan(x())),
     ValueError, "x: 1 of its 640 values"),
    ("fraction_variance_explained, constant", lambda: metrics.fraction_variance_explained(sae(), torch.ones(5, 64)),
     ValueError, "zero variance"),
    ("firing_frequency, mismatched d_in", lambda: metrics.firing_frequency(sae(), x(4, 8)), ValueError,
     r"\[batch, d_in=64\], got \[4, 8\]"),
    ("dead_and_dense, threshold a string", lambda: metrics.dead_and_dense(sae(), x(), "0.1"), ValueError,
     r"dense_threshold must be in \(0, 1\)"),
    ("dead_and_dense, NaN threshold", lambda: metrics.dead_and_dense(sae(), x(), NAN), ValueError,
     r"dense_threshold must be in \(0, 1\), got nan"),
    ("ce_loss_recovered, mismatched d_in", lambda: metrics.ce_loss_recovered(m2(), ReluSAE(8, 4), RESID, toks()),
     ValueError, "the SAE has d_in = 8 but 'blocks.1.hook_resid_post' has width 64"),
    ("ce_loss_recovered, a string as sae", lambda: metrics.ce_loss_recovered(m2(), "sae", RESID, toks()), TypeError,
     "ce_loss_recovered needs a SparseAutoencoder"),
    ("ce_loss_recovered, a string as model", lambda: metrics.ce_loss_recovered("m", sae(), RESID, toks()), TypeError,
     "ce_loss_recovered needs a toylab model"),
    ("ce_loss_recovered, NaN model", lambda: metrics.ce_loss_recovered(nan_model(), sae(), RESID, toks()), ValueError,
     "the clean next-token loss is nan"),
    ("ce_loss_recovered, head of a z hook of other width",
     lambda: metrics.ce_loss_recovered(m2(), sae(), "blocks.0.attn.hook_z", toks(), head=0), ValueError,
     "head 0 has width 32"),
    ("cosine_matrix, NaN directions", lambda: metrics.cosine_matrix(torch.full((2, 3), NAN), torch.randn(2, 3)),
     ValueError, "learned: 6 of its 6 values are non-finite"),
    ("cosine_matrix, 1-D", lambda: metrics.cosine_matrix(torch.randn(3), torch.randn(2, 3)), ValueError,
     r"learned must be a non-empty 2-D tensor \[n, d\] of directions, got \[3\]"),
    ("cosine_matrix, d = 0", lambda: metrics.cosine_matrix(torch.zeros(3, 0), torch.zeros(2, 0)), ValueError,
     r"got \[3, 0\]"),
    ("cosine_matrix, bool", lambda: metrics.cosine_matrix(torch.ones(3, 4, dtype=torch.bool), torch.randn(2, 4)),
     TypeError, "must hold real numbers"),
    ("cosine_matrix, d mismatch", lambda: metrics.cosine_matrix(torch.randn(3, 4), torch.randn(2, 3)), ValueError,
     "learned directions have d = 4 but true ones have d = 3"),
    ("mmcs, inf true features", lambda: metrics.mmcs(torch.randn(3, 4), torch.full((2, 4), INF)), ValueError,
     r"true: 8 of its 8 values are non-finite \(0 NaN, 8 inf\)"),
    ("mcc, NaN (not an internal helper's name)", lambda: metrics.mcc(torch.full((3, 4), NAN), torch.randn(2, 4)),
     ValueError, r"^learned: 12 of its 12 values are non-finite"),
    ("mcc, fewer latents than features", lambda: metrics.mcc(torch.randn(2, 4), torch.randn(3, 4)), ValueError,
     "only 2 latents"),
    ("mcc, meta-device directions", lambda: metrics.mcc(torch.empty(3, 4, device="meta"), torch.randn(2, 4)),
     ValueError, "learned is on the meta device"),
    ("hungarian, strings", lambda: metrics.hungarian([["a"]]), ValueError, "hungarian needs a 2-D array of numbers"),
    ("hungarian, ragged rows", lambda: metrics.hungarian([[1.0, 2.0], [1.0]]), ValueError,
     "hungarian needs a 2-D array of numbers"),
    # --- the shared checks themselves
    ("check_int, a bool", lambda: check_int("n", True, minimum=1), ValueError,
     r"n must be a positive integer, got True \(bool\)"),
    ("check_number, inf", lambda: check_number("lr", INF, positive=True), ValueError,
     "lr must be a finite positive number, got inf"),
    ("check_finite, counts NaN and inf", lambda: check_finite(torch.tensor([NAN, INF, -INF, 1.0]), "v"), ValueError,
     r"v: 3 of its 4 values are non-finite \(1 NaN, 2 inf\)"),
    # --- toy models of superposition
    ("ToyModel, inf importance", lambda: tms.ToyModel(5, 2, importance=INF), ValueError,
     r"importance: 5 of its 5 values are non-finite \(0 NaN, 5 inf\)"),
    ("ToyModel, NaN importance", lambda: tms.ToyModel(5, 2, importance=NAN), ValueError, "importance: 5 of its 5"),
    ("ToyModel, importance a string", lambda: tms.ToyModel(5, 2, importance="high"), ValueError,
     "importance must be a number or a tensor"),
    ("ToyModel, feature_probability None", lambda: tms.ToyModel(5, 2, feature_probability=None), ValueError,
     "feature_probability must be a number"),
    ("ToyModel, float seed", lambda: tms.ToyModel(5, 2, seed=0.5), ValueError, "seed must be an integer, got 0.5"),
    ("ToyModel forward, int input", lambda: tms.ToyModel(5, 2)(torch.ones(3, 1, 5, dtype=torch.long)), TypeError,
     "x must be a floating-point tensor"),
    ("ToyModel forward, float64 input", lambda: tms.ToyModel(5, 2)(torch.ones(3, 1, 5, dtype=torch.float64)),
     TypeError, "x has dtype torch.float64 but the model's W is torch.float32"),
    ("ToyModel loss, NaN input", lambda: tms.ToyModel(5, 2).loss(torch.full((3, 1, 5), NAN)), ValueError,
     "x: 15 of its 15 values are non-finite"),
    ("ToyModel forward, empty batch", lambda: tms.ToyModel(5, 2)(torch.ones(0, 1, 5)), ValueError, "x is empty"),
    ("generate_batch, batch_size=0", lambda: tms.ToyModel(5, 2).generate_batch(0, torch.Generator()), ValueError,
     "batch_size must be a positive integer"),
    ("generate_batch, a seed as generator", lambda: tms.ToyModel(5, 2).generate_batch(4, 0), TypeError,
     "generator must be a torch.Generator"),
    ("train_toy_model, lr=nan", lambda: tms.train_toy_model(tms.ToyModel(5, 2), steps=2, lr=NAN, progress=False),
     ValueError, "lr must be a finite positive number, got nan"),
    ("train_toy_model, lr=0", lambda: tms.train_toy_model(tms.ToyModel(5, 2), steps=2, lr=0, progress=False),
     ValueError, "lr must be a finite positive number, got 0"),
    ("train_toy_model, a transformer", lambda: tms.train_toy_model(m2(), steps=2, progress=False), TypeError,
     "train_toy_model needs a ToyModel"),
    ("train_toy_model, eval_batch_size=0", lambda: tms.train_toy_model(tms.ToyModel(5, 2), steps=2,
                                                                       eval_batch_size=0, progress=False),
     ValueError, "eval_batch_size must be a positive integer"),
    ("train_toy_model diverging (lr=1e30)", lambda: tms.train_toy_model(tms.ToyModel(5, 2), steps=50, lr=1e30,
                                                                        progress=False),
     ValueError, "training diverged at step"),
    ("dimensions_per_feature, all zeros", lambda: tms.dimensions_per_feature(torch.zeros(2, 2, 5)), ValueError,
     r"W of instance\(s\) \[0, 1\] is all zero: it represents no feature"),
    ("dimensions_per_feature, NaN", lambda: tms.dimensions_per_feature(with_nan(torch.randn(3, 2, 5))), ValueError,
     "W: 1 of its 30 values are non-finite"),
    ("dimensions_per_feature, 2-D", lambda: tms.dimensions_per_feature(torch.randn(2, 5)), ValueError,
     r"W must have shape \[n_instances, n_hidden, n_features\], got \[2, 5\]"),
    ("dimensions_per_feature, int", lambda: tms.dimensions_per_feature(torch.ones(1, 2, 5, dtype=torch.long)),
     TypeError, "floating-point"),
    ("feature_dimensionality, NaN", lambda: tms.feature_dimensionality(with_nan(torch.randn(3, 2, 5))), ValueError,
     "non-finite"),
    ("feature_dimensionality, a list", lambda: tms.feature_dimensionality([[[1.0]]]), ValueError, "got list"),
    ("phase_losses, bool importance", lambda: tms.phase_losses(True, 0.5), ValueError,
     "relative_importance must be a positive number, got True"),
    ("phase_losses, density a string", lambda: tms.phase_losses(1.0, "0.5"), ValueError,
     r"density must be in \(0, 1\]"),
    ("phase_diagram, a string", lambda: tms.phase_diagram("1", [0.5]), ValueError,
     "relative_importances must be a list of numbers, got str"),
    ("phase_diagram, a bare number", lambda: tms.phase_diagram(1.0, [0.5]), ValueError, "must be a list of numbers"),
    ("phase_diagram, a string element", lambda: tms.phase_diagram([1.0, "a"], [0.5]), ValueError,
     "got an element 'a'"),
    ("classify_regime, NaN", lambda: tms.classify_regime(torch.full((3, 1, 2), NAN)), ValueError, "non-finite"),
    ("classify_regime, negative threshold", lambda: tms.classify_regime(torch.randn(3, 1, 2), threshold=-1),
     ValueError, "threshold must be a finite positive number"),
    ("PlantedFeatures, bool density", lambda: tms.PlantedFeatures(4, 2, density=True), ValueError,
     r"density must be in \(0, 1\], got True"),
    ("PlantedFeatures.sample, generator None", lambda: tms.PlantedFeatures(4, 2, density=0.1).sample(5, None),
     TypeError, "generator must be a torch.Generator"),
    # --- ground truth
    ("true_features, a string as model", lambda: ground_truth.true_features("m", "hook_embed"), TypeError,
     "true_features needs an AttnOnlyTransformer"),
    ("true_features, a list as hook", lambda: ground_truth.true_features(m2(), ["hook_embed"]), TypeError,
     "hook must be a hook name"),
    ("true_features, unknown hook", lambda: ground_truth.true_features(m2(), "blocks.5.hook_resid_post"), KeyError,
     "unknown hook"),
    ("true_features, LayerNorm model", lambda: ground_truth.true_features(ln_model(), "blocks.0.hook_resid_post"),
     ValueError, "has LayerNorm"),
    ("true_features, bool head", lambda: ground_truth.true_features(m2(), "blocks.0.attn.hook_z", head=True),
     ValueError, "head must be None or an integer"),
    ("true_features, a pattern hook", lambda: ground_truth.true_features(m2(), "blocks.0.attn.hook_pattern"),
     ValueError, "is not a vector-valued activation"),
    ("true_features, after layer 0", lambda: ground_truth.true_features(m2(), "blocks.1.hook_attn_out"), ValueError,
     "the heads compose"),
    ("random_init_control, string seed", lambda: ground_truth.random_init_control(m2(), seed="1"), ValueError,
     "seed must be an integer"),
    # --- probes
    ("fit_probe, NaN activations", lambda: probes.fit_probe(with_nan(acts()), labels()), ValueError,
     r"acts: 1 of its 320 values are non-finite \(1 NaN"),
    ("fit_probe, inf activations", lambda: probes.fit_probe(acts() * INF, labels()), ValueError, "320 inf"),
    ("fit_probe, a single class", lambda: probes.fit_probe(acts(), torch.zeros(40, dtype=torch.long)), ValueError,
     "every labelled row has class 0: a probe needs at least 2 classes"),
    ("fit_probe, one class in the training split",
     lambda: probes.fit_probe(acts(), (torch.arange(40) >= 30).long(), groups=(torch.arange(40) >= 30).long(),
                              test_frac=0.5), ValueError, "the training split holds only class"),
    ("fit_probe, max_iter=0", lambda: probes.fit_probe(acts(), labels(), max_iter=0), ValueError,
     "max_iter must be a positive integer, got 0"),
    ("fit_probe, weight_decay=nan", lambda: probes.fit_probe(acts(), labels(), weight_decay=NAN), ValueError,
     "weight_decay must be a finite number >= 0"),
    ("fit_probe, negative weight_decay", lambda: probes.fit_probe(acts(), labels(), weight_decay=-1.0), ValueError,
     "weight_decay must be a finite number >= 0"),
    ("fit_probe, test_frac=nan", lambda: probes.fit_probe(acts(), labels(), test_frac=NAN), ValueError,
     r"test_frac must be in \(0, 1\)"),
    ("fit_probe, float labels", lambda: probes.fit_probe(acts(), labels().float()), ValueError,
     "labels must be a 1-D integer tensor"),
    ("fit_probe, labels below -1", lambda: probes.fit_probe(acts(), labels() - 2), ValueError, "labels must be >= 0"),
    ("fit_probe, integer activations", lambda: probes.fit_probe(acts().long(), labels()), ValueError,
     r"acts must be a floating tensor of shape \[N, d\], got torch.int64"),
    ("fit_probe, meta-device activations", lambda: probes.fit_probe(torch.empty(40, 8, device="meta"), labels()),
     ValueError, "acts is on the meta device"),
    ("fit_probe, zero features", lambda: probes.fit_probe(torch.empty(40, 0), labels()), ValueError,
     "a probe needs d >= 1"),
    ("fit_probe, one group", lambda: probes.fit_probe(acts(), labels(), groups=torch.zeros(40, dtype=torch.long)),
     ValueError, "at least 2 groups"),
    ("fit_probe, string seed", lambda: probes.fit_probe(acts(), labels(), seed="0"), ValueError,
     "seed must be an integer"),
    ("control_labels, every label ignored", lambda: probes.control_labels(torch.arange(5), torch.full((5,), -1)),
     ValueError, "every label is -1"),
    ("control_labels, float labels", lambda: probes.control_labels(torch.arange(5), torch.rand(5)), ValueError,
     "labels must be an integer tensor"),
    ("control_labels, float types", lambda: probes.control_labels(torch.rand(5), torch.arange(5)), ValueError,
     "types must be a 1-D integer tensor"),
    ("induction_variables, a tensor", lambda: probes.induction_variables(toks()), TypeError,
     "induction_variables needs an InductionBatch"),
    ("skip_trigram_variables, float tokens", lambda: probes.skip_trigram_variables(
        toks().float(), type("L", (), {"rules": [(1, 2, 3)], "active_rules": None})()), ValueError,
     r"tokens must be a non-empty \[batch, pos\] integer tensor"),
    ("probe_with_control, NaN activations", lambda: probes.probe_with_control(with_nan(acts()), labels(),
                                                                              torch.arange(40)),
     ValueError, "non-finite"),
    ("probe_across_hooks, hooks a string", lambda: probes.probe_across_hooks(m2(), batch(), "is_repeat",
                                                                             hooks="hook_embed"),
     ValueError, r"a single name: write \['hook_embed'\]"),
    ("probe_across_hooks, a string as model", lambda: probes.probe_across_hooks("m", batch(), "is_repeat"),
     TypeError, "probe_across_hooks needs a toylab model"),
    ("probe_across_hooks, unknown variable", lambda: probes.probe_across_hooks(m2(), batch(), "colour"), ValueError,
     "unknown variable 'colour'"),
    ("probe_across_hooks, NaN model", lambda: probes.probe_across_hooks(nan_model(), batch(), "is_repeat"),
     ValueError, "are its weights finite"),
    # --- steering
    ("run_with_steering, NaN vector", lambda: steering.run_with_steering(m2(), toks(), RESID, torch.full((64,), NAN)),
     ValueError, r"the steering vector: 64 of its 64 values are non-finite \(64 NaN"),
    ("run_with_steering, coeff=nan", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), coeff=NAN),
     ValueError, "coeff must be a finite number, got nan"),
    ("run_with_steering, coeff=inf", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), coeff=INF),
     ValueError, "coeff must be a finite number, got inf"),
    ("run_with_steering, coeff a string", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), coeff="2"),
     ValueError, "coeff must be a finite number"),
    ("run_with_steering, from_pos=999", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), from_pos=999),
     ValueError, "from_pos=999 is past the last position of these 31-token sequences: nothing would be steered"),
    ("run_with_steering, to_pos=999", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), to_pos=999),
     ValueError, "to_pos=999 is past the end"),
    ("run_with_steering, from_pos=-1", lambda: steering.run_with_steering(m2(), toks(), RESID, vec(), from_pos=-1),
     ValueError, "from_pos must be an integer >= 0"),
    ("run_with_steering, a z hook", lambda: steering.run_with_steering(m2(), toks(), "blocks.0.attn.hook_z", vec()),
     ValueError, "not one of the residual hooks"),
    ("run_with_steering, unknown hook", lambda: steering.run_with_steering(m2(), toks(), "blocks.7.hook_resid_post",
                                                                           vec()),
     KeyError, "^unknown hook 'blocks.7.hook_resid_post'"),
    ("run_with_steering, vector of wrong width", lambda: steering.run_with_steering(m2(), toks(), RESID,
                                                                                    torch.randn(16)),
     ValueError, r"must have shape \[64\] or \[batch, 64\]"),
    ("run_with_steering, int vector", lambda: steering.run_with_steering(m2(), toks(), RESID,
                                                                         torch.ones(64, dtype=torch.long)),
     TypeError, "must be a floating tensor"),
    ("run_with_steering, meta vector", lambda: steering.run_with_steering(m2(), toks(), RESID,
                                                                          torch.empty(64, device="meta")),
     ValueError, "the steering vector is on the meta device"),
    ("run_with_steering, 5 vectors for 2 sequences", lambda: steering.run_with_steering(m2(), toks(), RESID,
                                                                                        torch.randn(5, 64)),
     ValueError, "got 5 vectors for a batch of 2"),
    ("run_with_steering, a string as model", lambda: steering.run_with_steering("m", toks(), RESID, vec()), TypeError,
     "run_with_steering needs a toylab model"),
    ("steering_hooks(from_pos=999), run by hand",
     lambda: m2().run_with_hooks(toks(), steering.steering_hooks(m2(), RESID, vec(), from_pos=999)), ValueError,
     "nothing would be steered"),
    ("predicted_logit_shift, LayerNorm", lambda: steering.predicted_logit_shift(ln_model(), RESID, torch.randn(16)),
     ValueError, "with LayerNorm"),
    ("predicted_logit_shift, coeff=nan", lambda: steering.predicted_logit_shift(m2(), RESID, vec(), coeff=NAN),
     ValueError, "coeff must be a finite number"),
    ("predicted_logit_shift, before attention", lambda: steering.predicted_logit_shift(m2(), "blocks.0.hook_resid_post",
                                                                                       vec()),
     ValueError, "no exact formula holds"),
    ("vector_from_prompts, pos out of range", lambda: steering.vector_from_prompts(m2(), RESID, toks(), toks(),
                                                                                   pos=99),
     ValueError, r"pos must be an integer in \[-31, 30\], got 99"),
    ("vector_from_prompts, NaN model", lambda: steering.vector_from_prompts(nan_model(), RESID, toks(), toks()),
     ValueError, "the prompt-pair vector: 64 of its 64 values are non-finite"),
    ("vector_from_sae, a model", lambda: steering.vector_from_sae(m2(), 0), TypeError,
     "vector_from_sae needs a SparseAutoencoder"),
    ("vector_from_sae, latent out of range", lambda: steering.vector_from_sae(sae(), 32), ValueError,
     r"latent must be an integer in \[0, 32\)"),
    ("vector_from_weights, head a list", lambda: steering.vector_from_weights(m2(), 3, head=[0, 0]), ValueError,
     r"head must be a \(layer, head\) pair"),
    ("vector_from_weights, float layer", lambda: steering.vector_from_weights(m2(), 3, head=(0.0, 1)), ValueError,
     r"head must be a \(layer, head\) pair"),
    ("vector_from_weights, an SAE as model", lambda: steering.vector_from_weights(sae(), 3), TypeError,
     "vector_from_weights needs a toylab model"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_sentence(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a NaN model may warn about its logits before the refusal
        raises_a_sentence(case, models())


def test_the_cases_are_many_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 55


def test_a_diverging_sae_run_stops_at_the_bad_step_and_leaves_eval_mode():
    s = ReluSAE(64, 8)
    with pytest.raises(ValueError, match=r"training diverged at step (\d+)") as info:
        train_sae(s, x(), steps=30, lr=1e30, progress=False)
    assert not s.training
    assert 0 <= int(re.search(r"step (\d+)", str(info.value)).group(1)) < 30


def test_unknown_hook_messages_print_as_written():
    with pytest.raises(KeyError) as info:
        gather_activations(m2(), "blocks.9.hook_resid_post", toks())
    text = str(info.value)
    assert text.startswith("unknown hook 'blocks.9.hook_resid_post'") and "\n  hook_embed" in text


def test_valid_calls_next_to_the_refused_ones_still_work():
    # the edges of what is allowed: 2-token sequences, to_pos at the end, k_aux = d_sae, float64 into the metric
    rows = gather_activations(m2(), RESID, toks()[:, :2])
    assert rows.shape == (2, 64)
    v = vec()
    out = steering.run_with_steering(m2(), toks(), RESID, v, coeff=1.0, from_pos=30, to_pos=31)
    assert out.shape == (2, 31, 128)
    assert TopKSAE(8, 4, k=2, k_aux=4).k_aux == 4
    assert TopKSAE(64, 16).k_aux == 16  # the default d_in // 2 = 32 is lowered to d_sae
    fve = metrics.fraction_variance_explained(sae(), x().double())
    assert math.isfinite(fve)
    assert steering.run_with_steering(m2(), toks(), RESID, v, coeff=torch.tensor(0.5)).shape == (2, 31, 128)
    # finite values whose float32 sum overflows are finite: the cheap sum test falls back to looking at each
    big = torch.full((4, 64), 3e38)
    assert check_finite(big, "big") is big
    assert sae().check_input(big) is big


def test_integers_of_other_kinds_are_taken_as_integers():
    import numpy as np
    assert steering.vector_from_weights(m2(), np.int64(9)).shape == (64,)
    assert steering.vector_from_weights(m2(), torch.tensor(9), head=(np.int64(0), 1)).shape == (64,)
    assert TopKSAE(8, np.int64(4), k=np.int64(2)).config()["k"] == 2
    assert type(tms.ToyModel(np.int64(5), 2).n_features) is int
    assert list(ground_truth.true_features(m2(), "blocks.0.attn.hook_z", head=np.int64(1))) == ["v_L0H1"]
