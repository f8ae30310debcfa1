"""Cross-check against TransformerLens: the same weights loaded into a
HookedTransformer give the same logits, OV/QK spectra and composition scores.

Runs only where ``transformer_lens`` is importable, e.g.
``/tmp/venv/tl/bin/python -m pytest tests/test_peer_transformerlens.py``.
"""

import pytest
import torch

tl = pytest.importorskip("transformer_lens", reason="transformer_lens is not installed: "
                         "this peer cross-check runs in an environment that has it")

from toylab.circuits.weights import OV, QK, full_ov  # noqa: E402
from toylab.circuits.composition import composition_scores  # noqa: E402
from toylab.circuits.copying import copying_scores  # noqa: E402
from toylab.model import AttnOnlyTransformer, ModelConfig  # noqa: E402
from toylab.training.presets import load_model  # noqa: E402


TL_POSITIONAL = {"learned": "standard", "shortformer": "shortformer"}


def to_transformer_lens(model):
    """A HookedTransformer holding ``model``'s weights (zero biases)."""
    c = model.cfg
    if c.positional not in TL_POSITIONAL or c.layernorm:
        raise ValueError("only learned/shortformer positions without LayerNorm map onto TransformerLens here")
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads,
        d_vocab=c.d_vocab, attn_only=True, normalization_type=None,
        positional_embedding_type=TL_POSITIONAL[c.positional], act_fn="relu", device="cpu", seed=0)
    ht = tl.HookedTransformer(cfg)
    state = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos, "unembed.W_U": model.W_U,
             "unembed.b_U": torch.zeros(c.d_vocab)}
    for layer, block in enumerate(model.blocks):
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            state[f"blocks.{layer}.attn.{name}"] = getattr(block.attn, name)
        for name in ("b_Q", "b_K", "b_V"):
            state[f"blocks.{layer}.attn.{name}"] = torch.zeros(c.n_heads, c.d_head)
        state[f"blocks.{layer}.attn.b_O"] = torch.zeros(c.d_model)
    missing, unexpected = ht.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    # what is left are TransformerLens's buffers (causal mask, IGNORE value), not weights
    assert all(k.endswith(("mask", "IGNORE")) for k in missing), missing
    ht.eval()
    return ht


def models():
    rand = AttnOnlyTransformer(ModelConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4,
                                           positional="learned"), seed=11)
    return {"induction-2l": load_model("induction-2l"), "random-2l-learned": rand}


@pytest.fixture(scope="module", params=["induction-2l", "random-2l-learned"])
def pair(request):
    m = models()[request.param]
    return m, to_transformer_lens(m)


def test_same_logits(pair):
    m, ht = pair
    toks = torch.randint(1, m.cfg.d_vocab, (8, m.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = 0
    torch.testing.assert_close(ht(toks), m(toks), atol=1e-4, rtol=1e-4)


def test_same_ov_and_qk_spectra(pair):
    m, ht = pair
    for ours, theirs in ((OV(m), ht.OV), (QK(m), ht.QK)):
        torch.testing.assert_close(ours.svd()[1], theirs.S, atol=1e-4, rtol=1e-4)
        ev, tev = ours.eigenvalues, theirs.eigenvalues
        # same multiset: compare sorted by magnitude, then the sums (order of equal magnitudes may differ)
        torch.testing.assert_close(ev.abs(), tev.abs().sort(-1, descending=True).values, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(ev.sum(-1), tev.sum(-1), atol=1e-3, rtol=1e-3)
    # full OV circuit: TransformerLens's W_E @ OV @ W_U, our factored version
    theirs = ht.W_E @ ht.OV @ ht.W_U
    torch.testing.assert_close(full_ov(m).svd()[1], theirs.S, atol=1e-3, rtol=1e-3)
    tev = theirs.eigenvalues
    tscore = tev.sum(-1).real / tev.abs().sum(-1)
    torch.testing.assert_close(copying_scores(m), tscore.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_same_composition_scores(pair, kind):
    m, ht = pair
    ours = composition_scores(m, kind)
    theirs = ht.all_composition_scores(kind)
    defined = ~torch.isnan(ours)
    torch.testing.assert_close(ours[defined], theirs[defined], atol=1e-5, rtol=1e-4)
    assert (theirs[~defined] == 0).all()  # TransformerLens fills undefined pairs with 0, we with NaN
