"""SAE metrics and dictionary matching, against brute force and exact constructions."""

import itertools

import numpy as np
import pytest
import torch

from toylab.data import InductionData
from toylab.features.metrics import (ce_loss_recovered, cosine_matrix, dead_and_dense, firing_frequency,
                                     fraction_variance_explained, hungarian, l0, mcc, mmcs)
from toylab.features.sae import ReluSAE
from toylab.training.presets import load_model
from _helpers import identity_sae  # noqa: E402

torch.set_num_threads(1)



@pytest.mark.parametrize("n,m", [(1, 1), (3, 3), (4, 6), (5, 5), (6, 7), (2, 8)])
def test_hungarian_matches_brute_force(n, m):
    rng = np.random.default_rng(n * 10 + m)
    for trial in range(15):
        a = rng.normal(size=(n, m)) if trial % 3 else rng.integers(0, 3, size=(n, m)).astype(float)  # ties too
        col = hungarian(a)
        assert len(set(col.tolist())) == n
        best = min(sum(a[r, p[r]] for r in range(n)) for p in itertools.permutations(range(m), n))
        assert abs(a[np.arange(n), col].sum() - best) < 1e-9


def test_hungarian_bad_input():
    with pytest.raises(ValueError, match="n_rows <= n_cols"):
        hungarian(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        hungarian(np.array([[np.nan]]))


def test_mmcs_and_mcc_on_known_dictionaries():
    g = torch.Generator().manual_seed(0)
    T = torch.randn(10, 6, generator=g)
    perm = torch.randperm(10, generator=g)
    learned = 3.0 * T[perm]  # same directions, other order and scale
    assert mmcs(learned, T) == pytest.approx(1.0)
    assert mcc(learned, T) == pytest.approx(1.0)
    # one latent copied for every feature: MMCS is fooled only where it matches, MCC is not
    dup = torch.cat([T[:1].repeat(9, 1), T[:1]])
    assert mcc(dup, T) <= mmcs(dup, T) + 1e-12
    C = cosine_matrix(torch.cat([T, torch.randn(5, 6, generator=g)]), T)
    assert C.shape == (15, 10) and bool((C.abs() <= 1 + 1e-12).all())
    with pytest.raises(ValueError, match="only 3 latents"):
        mcc(T[:3], T)
    with pytest.raises(ValueError, match="d = 5"):
        mmcs(torch.randn(4, 5), T)


def test_l0_fve_dead_dense_exact():
    sae = identity_sae(4)
    x = torch.tensor([[1.0, 0, 0, 0], [0, -2.0, 0, 0], [3.0, 0, 0, 1.0], [1.0, 0, 0, 0]])
    assert l0(sae, x) == pytest.approx(5 / 4)
    assert fraction_variance_explained(sae, x) == pytest.approx(1.0)
    freq = firing_frequency(sae, x)
    assert freq.tolist() == [0.75, 0, 0, 0.25, 0, 0.25, 0, 0]
    assert dead_and_dense(sae, x, dense_threshold=0.5) == {"dead": 5, "dense": 1}
    zero = ReluSAE(4, 8, l1_coefficient=0.0)
    with torch.no_grad():
        zero.b_enc.fill_(-1e3)
    assert fraction_variance_explained(zero, x) < 0.0  # predicting 0 is worse than the mean


@pytest.fixture(scope="module")
def model():
    return load_model("induction-2l")


@pytest.fixture(scope="module")
def tokens():
    return InductionData(d_vocab=128, n_ctx=32).sample(64, torch.Generator().manual_seed(5))


def test_ce_recovered_identity_is_one(model, tokens):
    r = ce_loss_recovered(model, identity_sae(64), "blocks.0.hook_resid_post", tokens)
    assert r["sae"] == pytest.approx(r["clean"], abs=1e-5)
    assert r["recovered"] == pytest.approx(1.0, abs=1e-4)


def test_per_head_sae_ablates_only_its_own_head(model, tokens):
    """The SAELens regression: the baseline of head L1H1's SAE zeroes head L1H1, not the whole layer."""
    r = ce_loss_recovered(model, identity_sae(32), "blocks.1.attn.hook_z", tokens, head=1)

    @torch.no_grad()
    def zero_heads(heads):
        def fn(z, hook):
            z = z.clone()
            z[:, :, heads] = 0.0
            return z
        return float(model.run_with_hooks(tokens, [("blocks.1.attn.hook_z", fn)], return_type="loss"))

    assert r["ablated"] == pytest.approx(zero_heads([1]), abs=1e-6)
    assert r["ablated"] != pytest.approx(zero_heads([0, 1]), abs=1e-3)
    assert r["recovered"] == pytest.approx(1.0, abs=1e-4)
    # a useless SAE (always 0) recovers nothing
    zero = identity_sae(32)
    with torch.no_grad():
        zero.b_enc.fill_(-1e3)
    assert ce_loss_recovered(model, zero, "blocks.1.attn.hook_z", tokens, head=1)["recovered"] == \
        pytest.approx(0.0, abs=1e-4)


def test_ce_recovered_bad_inputs(model, tokens):
    with pytest.raises(ValueError, match="d_in = 64"):
        ce_loss_recovered(model, identity_sae(64), "blocks.1.attn.hook_z", tokens, head=0)
    with pytest.raises(KeyError, match="unknown hook"):
        ce_loss_recovered(model, identity_sae(64), "blocks.9.hook_resid_post", tokens)
