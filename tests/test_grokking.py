"""The grokking-1l recipe groks at another seed (marker ``recipes``: minutes, ``make test-recipes``)."""

import pytest

from toylab.data import make_dataset
from toylab.training.presets import PRESETS, load_shipped
from toylab.training.train import train


@pytest.mark.slow
@pytest.mark.recipes
def test_the_grokking_recipe_groks_at_another_seed_with_as_many_key_frequencies():
    from test_shipped_models import check_grokking_model, grokking_summary
    from toylab.neurons.fourier import embedding_spectrum, key_frequencies

    p = PRESETS["grokking-1l"]
    result = train(p.model, p.data, p.train, seed=1, progress=False)
    data = make_dataset(p.data)
    keys, _ = check_grokking_model(result.model, data)          # fresh-test accuracy > 0.99, 2..6 keys
    memorised, last_chance, grokked = grokking_summary(result.history)
    assert grokked is not None and last_chance is not None, (memorised, last_chance, grokked)
    assert last_chance - memorised >= 500, (
        f"fresh-test accuracy was near chance only until step {last_chance}, {last_chance - memorised} steps "
        f"after training accuracy reached 1 (step {memorised}): no delay, not grokking")
    shipped = key_frequencies(embedding_spectrum(load_shipped("grokking-1l").model.W_E.detach(), data.p))
    assert abs(len(keys) - len(shipped)) <= 2, f"seed 1 has key frequencies {keys}, the shipped model {shipped}"
