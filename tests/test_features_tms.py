"""Toy models of superposition: the model, its measures, the phase diagram against the analytic losses."""

import math

import pytest
import torch

from toylab.features.tms import (PlantedFeatures, ToyModel, classify_regime, dimensions_per_feature,
                                 feature_dimensionality, phase_losses, train_toy_model)

torch.set_num_threads(1)


def test_forward_is_the_formula():
    m = ToyModel(5, 2, n_instances=3, importance=0.9 ** torch.arange(5.0), feature_probability=[0.1, 0.5, 1.0])
    with torch.no_grad():
        m.b.normal_()
    x = m.generate_batch(7, torch.Generator().manual_seed(0))
    for i in range(3):
        W, b = m.W[i], m.b[i]
        torch.testing.assert_close(m(x)[:, i], torch.relu(x[:, i] @ W.T @ W + b))
    assert m.importance.shape == (3, 5) and m.feature_probability[:, 0].tolist() == pytest.approx([0.1, 0.5, 1.0])


def test_sparsity_of_generated_features():
    m = ToyModel(4, 2, n_instances=2, feature_probability=[0.05, 0.5])
    x = m.generate_batch(20000, torch.Generator().manual_seed(1))
    on = (x > 0).float().mean((0, 2))
    assert on.tolist() == pytest.approx([0.05, 0.5], abs=0.01)
    assert float(x.max()) <= 1.0


def test_dimensions_per_feature_known_geometries():
    ded = torch.eye(2)[None]  # 2 features, 2 dims, dedicated
    anti = torch.tensor([[[1.0, -1.0]]])  # antipodal pair in 1 dim
    angles = torch.arange(5) * 2 * math.pi / 5
    pent = torch.stack([angles.cos(), angles.sin()])[None]  # pentagon
    assert dimensions_per_feature(ded).item() == pytest.approx(1.0)
    assert dimensions_per_feature(anti).item() == pytest.approx(0.5)
    assert dimensions_per_feature(pent).item() == pytest.approx(0.4)
    assert feature_dimensionality(anti)[0].tolist() == pytest.approx([0.5, 0.5])
    assert feature_dimensionality(pent)[0].tolist() == pytest.approx([0.4] * 5, abs=1e-6)


def test_superposition_appears_as_features_get_sparser():
    """5 features in 2 dimensions (importance 0.9^i): dense -> the 2 most important get a dimension
    each (1 dimension per feature); very sparse -> all 5 share the plane (about 2/5)."""
    m = ToyModel(5, 2, n_instances=2, importance=0.9 ** torch.arange(5.0), feature_probability=[1.0, 0.02],
                 seed=0)
    train_toy_model(m, steps=1500, batch_size=1024, progress=False)
    dense, sparse = dimensions_per_feature(m.W).tolist()
    assert dense == pytest.approx(1.0, abs=0.1)
    assert sparse < 0.5


def test_closed_form_losses_match_monte_carlo():
    """The not-represented and dedicated losses are exact: check them on sampled data."""
    r, p = 0.7, 0.4
    m = ToyModel(2, 1, n_instances=2, importance=[[1.0, r], [1.0, r]], feature_probability=p)
    with torch.no_grad():
        m.W.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        m.b.copy_(torch.tensor([[0.0, p / 2], [p / 2, 0.0]]))
    x = m.generate_batch(400_000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        mc = m.loss(x)
    exact = phase_losses(r, p)
    # standard error of the estimate is below 1e-3 relative at this batch size
    assert float(mc[0]) == pytest.approx(exact["not_represented"], rel=0.01)
    assert float(mc[1]) == pytest.approx(exact["dedicated"], rel=0.01)
    # the antipodal configuration w = [1, -1], b = 0 is an upper bound on the superposed loss
    with torch.no_grad():
        m.W.copy_(torch.tensor([[[1.0, -1.0]], [[1.0, -1.0]]]))
        m.b.zero_()
        ub = float(m.loss(x)[0])
    assert exact["superposed"] <= ub * 1.01


# grid points away from the boundaries; the analytic argmin is computed, not written down
PHASE_POINTS = [(0.3, 0.9), (3.0, 0.9), (0.5, 0.03), (2.0, 0.03), (1.0, 0.1)]


@pytest.mark.slow
def test_phase_diagram_lands_in_the_lowest_loss_regime():
    n_seeds = 8  # small models have local minima (a dedicated dimension, two features on one side): keep the best
    imp = torch.tensor([[1.0, r] for r, p in PHASE_POINTS for _ in range(n_seeds)])
    den = torch.tensor([[p, p] for r, p in PHASE_POINTS for _ in range(n_seeds)])
    m = ToyModel(2, 1, n_instances=len(imp), importance=imp, feature_probability=den, seed=0)
    final = train_toy_model(m, steps=2000, batch_size=1024, progress=False)
    regimes = classify_regime(m.W)
    seen = set()
    for k, (r, p) in enumerate(PHASE_POINTS):
        analytic = phase_losses(r, p)
        want = min(analytic, key=analytic.get)
        seen.add(want)
        best = min(range(k * n_seeds, (k + 1) * n_seeds), key=lambda i: float(final[i]))
        assert regimes[best] == want, (f"at relative importance {r}, density {p}: analytic losses {analytic}, "
                                       f"the best trained instance is {regimes[best]}")
    assert seen == {"not_represented", "dedicated", "superposed"}, "the points should cover all three regimes"


def test_planted_features():
    pf = PlantedFeatures(32, 16, density=0.05, seed=0)
    x, codes = pf.sample(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, codes @ pf.dictionary)
    torch.testing.assert_close(pf.dictionary.norm(dim=1), torch.ones(32))
    assert float((codes > 0).float().sum(1).mean()) == pytest.approx(32 * 0.05, rel=0.15)


def test_bad_inputs():
    with pytest.raises(ValueError, match="feature_probability"):
        ToyModel(5, 2, feature_probability=1.5)
    with pytest.raises(ValueError, match="importance must be"):
        ToyModel(5, 2, n_instances=2, importance=torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        ToyModel(5, 2)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="density"):
        phase_losses(1.0, 0.0)
    with pytest.raises(ValueError, match="density"):
        PlantedFeatures(4, 2, density=2.0)
