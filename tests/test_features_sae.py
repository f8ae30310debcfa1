"""SAEs: the maps, the unit-norm decoder, the L1/Adam interaction, TopK, training, save/load."""

import pytest
import torch

from toylab.data import InductionData
from toylab.features.sae import ReluSAE, resample_dead_latents
from toylab.features.tms import PlantedFeatures
from toylab.features.topk import TopKSAE
from toylab.features.train_sae import gather_activations, hook_width, load_sae, save_sae, train_sae
from toylab.training.optim import Adam
from toylab.training.presets import load_model
from _helpers import identity_sae  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def tokens():
    return InductionData(d_vocab=128, n_ctx=32).sample(64, torch.Generator().manual_seed(0))


def sparse_data(n=4096, d=16, n_feat=32, p=0.05, seed=0):
    """TMS-style planted features: 32 unit directions in 16 dimensions, each on with probability p."""
    planted = PlantedFeatures(n_feat, d, density=p, seed=seed)
    x, _ = planted.sample(n, torch.Generator().manual_seed(seed + 100))
    return x, planted.dictionary



def test_maps_follow_the_formula():
    sae = ReluSAE(8, 12, seed=3)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
        sae.input_scale.fill_(2.0)
    x = torch.randn(5, 8)
    f = torch.relu((2 * x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x), (f @ sae.W_dec + sae.b_dec) / 2)
    x2 = torch.randn(7, 5)
    torch.testing.assert_close(identity_sae(5)(x2), x2)


def test_decoder_gradient_projection_and_norm():
    sae = ReluSAE(8, 12, seed=0)
    x = torch.randn(32, 8)
    sae.loss(x)[0].backward()
    sae.project_decoder_grad()
    along = (sae.W_dec.grad * sae.directions()).sum(1)
    assert along.abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))


def test_l1_coefficient_is_not_normalised_away_by_adam():
    """A larger coefficient gives a smaller L0 (Adam sees the ratio of the two terms)."""
    x, _ = sparse_data()
    l0s = []
    for lam in (0.01, 0.3, 3.0):
        sae = ReluSAE(16, 64, l1_coefficient=lam, seed=0)
        train_sae(sae, x, steps=150, batch_size=512, progress=False)
        l0s.append(float((sae.encode(x) > 0).float().sum(1).mean()))
    assert l0s[0] > l0s[1] > l0s[2], f"L0 should fall as the L1 coefficient grows, got {l0s}"


def test_scaling_the_whole_loss_is_what_adam_ignores():
    """The same loss times 100: Adam's steps are unchanged (up to eps), so the decoders agree.
    This is the normalisation a coefficient must not fall under."""
    x, _ = sparse_data(n=1024)
    saes = []
    for factor in (1.0, 100.0):
        sae = ReluSAE(16, 32, l1_coefficient=0.3, seed=0)
        sae.set_input_scale(x)
        opt = Adam(sae.parameters(), lr=1e-3, eps=1e-12)
        for i in range(20):
            loss = factor * sae.loss(x[i * 50:(i + 1) * 50])[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        saes.append(sae.W_dec.detach())
    torch.testing.assert_close(saes[0], saes[1], atol=1e-4, rtol=0)


def test_topk_keeps_k_and_aux_loss_revives():
    sae = TopKSAE(8, 16, k=3, dead_after=1, seed=0)
    x = torch.randn(2, 8)  # at most 6 of the 16 latents can fire
    f = sae.encode(x)
    assert int((f > 0).sum(1).max()) <= 3
    pre = sae.pre_acts(x)
    kept = f > 0
    # every kept value is among the 3 largest pre-activations of its row
    third = pre.topk(3, dim=1).values[:, -1:]
    assert bool((pre[kept.nonzero(as_tuple=True)] >= third.expand_as(pre)[kept]).all())
    sae.train()
    sae.loss(x)  # marks fired latents; others become dead (dead_after=1)
    assert int(sae.dead.sum()) > 0
    loss, terms = sae.loss(x)
    assert terms["aux"] > 0
    loss.backward()
    dead_cols = sae.dead.nonzero().squeeze(1)
    assert sae.W_enc.grad[:, dead_cols].abs().sum() > 0, "AuxK must give dead latents a gradient"


def test_resampling_revives_dead_latents():
    x, _ = sparse_data(n=512)
    sae = ReluSAE(16, 32, l1_coefficient=0.1, seed=0)
    sae.set_input_scale(x)
    with torch.no_grad():
        sae.b_enc[:8] = -1e3  # 8 latents that can never fire
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:8] = True
    n = resample_dead_latents(sae, x, dead, torch.Generator().manual_seed(0))
    assert n == 8
    assert float(sae.b_enc.detach()[:8].abs().max()) == 0.0
    torch.testing.assert_close(sae.W_dec[:8].norm(dim=1), torch.ones(8))
    assert bool((sae.encode(x)[:, :8] > 0).any())


def test_training_is_deterministic_and_recovers_planted_tms_features():
    from toylab.features.metrics import mmcs
    x, D = sparse_data(n=16384, p=0.03)
    runs = []
    for steps in (50, 1500):
        sae = ReluSAE(16, 64, l1_coefficient=3.0, seed=1)
        train_sae(sae, x, steps=steps, batch_size=512, lr=1e-2, seed=2, resample_every=100, progress=False)
        runs.append(sae)
    again = ReluSAE(16, 64, l1_coefficient=3.0, seed=1)
    train_sae(again, x, steps=50, batch_size=512, lr=1e-2, seed=2, resample_every=100, progress=False)
    assert torch.equal(runs[0].W_dec, again.W_dec), "same seed, same data: bit-identical SAE"
    assert mmcs(runs[1].directions(), D) >= 0.99


@pytest.mark.parametrize("hook,head,width", [
    ("hook_embed", None, 64), ("blocks.0.hook_resid_pre", None, 64), ("blocks.1.hook_resid_post", None, 64),
    ("blocks.0.attn.hook_z", 1, 32), ("blocks.0.attn.hook_z", None, 64), ("blocks.1.hook_attn_out", None, 64)])
def test_gather_any_hook(model, tokens, hook, head, width):
    acts = gather_activations(model, hook, tokens, head=head)
    assert acts.shape == (64 * 31, width) and hook_width(model, hook, head) == width
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    ref = cache[hook][:, 1:]
    ref = ref[:, :, head] if head is not None else ref.flatten(2) if ref.ndim == 4 else ref
    torch.testing.assert_close(acts, ref.reshape(-1, width))


def test_bad_inputs(model, tokens):
    with pytest.raises(ValueError, match="l1_coefficient"):
        ReluSAE(8, 16, l1_coefficient=-1.0)
    with pytest.raises(ValueError, match="l1_coefficient"):
        ReluSAE(8, 16, l1_coefficient=float("nan"))
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(8, 16, k=0)
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(8, 16, k=17)
    with pytest.raises(ValueError, match="d_in"):
        ReluSAE(32, 64)(torch.randn(4, 64))
    with pytest.raises(ValueError, match="d_in"):
        train_sae(ReluSAE(32, 64), gather_activations(model, "hook_embed", tokens), steps=1, progress=False)
    with pytest.raises(KeyError, match="unknown hook"):
        gather_activations(model, "blocks.7.hook_resid_pre", tokens)
    with pytest.raises(ValueError, match="vector-valued"):
        gather_activations(model, "blocks.0.attn.hook_pattern", tokens)
    with pytest.raises(ValueError, match="head"):
        gather_activations(model, "blocks.0.attn.hook_z", tokens, head=2)


def test_save_load_roundtrip(tmp_path):
    for sae in (ReluSAE(8, 16, l1_coefficient=0.5, seed=4), TopKSAE(8, 16, k=2, seed=4)):
        with torch.no_grad():
            sae.input_scale.fill_(1.7)
        path = save_sae(tmp_path / f"{sae.kind}.pt", sae, {"hook": "hook_embed"})
        back, meta = load_sae(path)
        assert type(back) is type(sae) and meta == {"hook": "hook_embed"} and back.config() == sae.config()
        for (k, v), (k2, v2) in zip(sae.state_dict().items(), back.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a toylab SAE"):
        load_sae(tmp_path / "junk.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "relu.pt", "topk.pt"]
