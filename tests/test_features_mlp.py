"""SAEs on an MLP's activations: the neurons (``mlp.hook_post``, width d_mlp) and the MLP's output
(``hook_mlp_out``, width d_model); splicing at those hooks; a planted dictionary of sparse neuron features."""

import pytest
import torch

from toylab.features.ground_truth import true_features
from toylab.features.metrics import ce_loss_recovered, fraction_variance_explained, mcc
from toylab.features.sae import ReluSAE
from toylab.features.train_sae import gather_activations, hook_width, train_sae
from toylab.model import AttnOnlyTransformer, ModelConfig
from _helpers import identity_sae  # noqa: E402

torch.set_num_threads(1)


def mlp_model(d_mlp=24, seed=0):
    cfg = ModelConfig(d_vocab=16, n_ctx=8, d_model=16, n_layers=2, n_heads=2, d_mlp=d_mlp, biases=True)
    return AttnOnlyTransformer(cfg, seed=seed).eval()


def tokens(n=32, d_vocab=16, seed=1):
    return torch.randint(0, d_vocab, (n, 8), generator=torch.Generator().manual_seed(seed))



@pytest.mark.parametrize("hook,width", [("blocks.1.mlp.hook_post", 24), ("blocks.0.hook_mlp_out", 16),
                                        ("blocks.1.hook_resid_mid", 16)])
def test_gather_mlp_activations(hook, width):
    m, x = mlp_model(), tokens()
    assert hook_width(m, hook) == width
    acts = gather_activations(m, hook, x)
    assert acts.shape == (32 * 7, width)
    _, cache = m.run_with_cache(x)  # every hook attached: the per-head path, equal up to rounding
    torch.testing.assert_close(acts, cache[hook][:, 1:].reshape(-1, width), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[7 * 3 + 2], gather_activations(m, hook, x[3:4])[2])  # sequence by sequence
    if hook.endswith("hook_post"):
        assert float(acts.min()) >= 0  # after the ReLU


def test_mlp_hooks_of_an_attention_only_model_are_unknown():
    m = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=16, n_layers=1, n_heads=2), seed=0)
    with pytest.raises(KeyError, match="unknown hook"):
        gather_activations(m, "blocks.0.mlp.hook_post", tokens())


@pytest.mark.parametrize("hook,width", [("blocks.0.mlp.hook_post", 24), ("blocks.1.hook_mlp_out", 16)])
def test_identity_reconstruction_recovers_all_the_loss(hook, width):
    m, x = mlp_model(), tokens()
    r = ce_loss_recovered(m, identity_sae(width), hook, x)
    assert r["ablated"] != pytest.approx(r["clean"], abs=1e-3)  # zeroing the hook matters, so 1.0 is a claim
    assert r["sae"] == pytest.approx(r["clean"], abs=1e-5)
    assert r["recovered"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="d_in = 16"):
        ce_loss_recovered(m, identity_sae(16), "blocks.0.mlp.hook_post", x)  # the neurons are 24 wide


def test_ground_truth_refuses_the_mlps_hooks_and_keeps_resid_mid():
    m = AttnOnlyTransformer(ModelConfig(d_vocab=16, n_ctx=8, d_model=16, n_layers=2, n_heads=2, d_mlp=24,
                                        positional="shortformer"), seed=0)
    for hook in ("blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post",
                 "blocks.1.hook_resid_pre"):
        with pytest.raises(ValueError, match="nonlinear"):
            true_features(m, hook)
    tf = true_features(m, "blocks.0.hook_resid_mid")  # before the MLP: token + W_E W_OV^h, as without MLPs
    x = tokens()
    _, cache = m.run_with_cache(x)
    A = cache["blocks.0.attn.hook_pattern"]  # [b, h, q, k]
    rebuilt = tf["token"][x] + sum(torch.einsum("bqk,bkd->bqd", A[:, h], tf[f"ov_L0H{h}"][x]) for h in range(2))
    torch.testing.assert_close(cache["blocks.0.hook_resid_mid"], rebuilt, atol=1e-5, rtol=1e-5)


# --- a planted dictionary in the neurons ----------------------------------------------------------------

V, D, K, SUPPORT, ACTIVE = 512, 32, 48, 4, 2


def planted_model(seed=0):
    """A 1-layer model whose neurons ``hook_post`` hold ``K = 48`` known sparse features in ``d_mlp = 32``.

    Feature ``j`` is a unit vector ``F_j >= 0`` over 4 random neurons (weights 0.5..1.5 before
    normalising): more features than neurons, each neuron in about 6 of them (polysemantic). Token ``t``
    activates 2 random features with coefficients 0.5..1.5: ``post_t = c_t F``. The weights put it there
    exactly: the heads write nothing (``W_O = 0``), ``W_in = Q`` (a random rotation), ``b_in = 0`` and
    ``W_E[t] = post_t Q^T``, so ``relu(W_E[t] W_in) = relu(post_t) = post_t``.
    """
    g = torch.Generator().manual_seed(seed)
    F = torch.zeros(K, D)
    for j in range(K):
        F[j, torch.randperm(D, generator=g)[:SUPPORT]] = 0.5 + torch.rand(SUPPORT, generator=g)
    F = F / F.norm(dim=1, keepdim=True)
    codes = torch.zeros(V, K)
    for t in range(V):
        codes[t, torch.randperm(K, generator=g)[:ACTIVE]] = 0.5 + torch.rand(ACTIVE, generator=g)
    post = codes @ F
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    cfg = ModelConfig(d_vocab=V, n_ctx=8, d_model=D, n_layers=1, n_heads=2, d_mlp=D, positional="none")
    m = AttnOnlyTransformer(cfg, seed=seed).eval()
    with torch.no_grad():
        m.blocks[0].attn.W_O.zero_()
        m.blocks[0].mlp.W_in.copy_(Q)
        m.blocks[0].mlp.b_in.zero_()
        m.W_E.copy_(post @ Q.T)
    return m, F, post


def test_an_sae_on_the_neurons_recovers_planted_features():
    """Bound: MCC >= 0.9. For scale, measured in the same test: an untrained SAE's decoder scores about
    0.36 (chance for 64 random directions), and the neurons themselves (each neuron basis vector, every one
    allowed twice so that 64 >= 48 can be matched) about 0.63: a feature spreads over 4 neurons, so a single
    neuron's cosine with it is one weight of a normalised 4-vector. 0.9 lies far above both, and a latent
    that merged two features (pairwise cosines up to 0.86 here) would pull the mean under it."""
    m, F, post = planted_model()
    x = torch.randint(0, V, (256, 8), generator=torch.Generator().manual_seed(1))
    acts = gather_activations(m, "blocks.0.mlp.hook_post", x)
    assert acts.shape == (256 * 7, D)
    torch.testing.assert_close(acts, post[x[:, 1:]].reshape(-1, D), atol=1e-5, rtol=0)  # the plant holds
    neurons = mcc(torch.eye(D).repeat(2, 1), F)
    untrained = mcc(ReluSAE(D, 64, seed=3).directions(), F)
    sae = ReluSAE(D, 64, l1_coefficient=0.5, seed=0)
    train_sae(sae, acts, steps=1200, batch_size=256, resample_every=250, progress=False)
    score = mcc(sae.directions(), F)
    assert neurons < 0.75 and untrained < 0.5
    assert score >= 0.9, (score, neurons, untrained)
    assert fraction_variance_explained(sae, acts) > 0.9
