"""ModularAddition: the full grid, the rule, a seeded disjoint split, the spec round trip, bad input."""

import json

import pytest
import torch

from toylab.data import DATASETS, make_dataset
from toylab.data.modular import ModularAddition, is_prime


def test_grid_tokens_and_answers_follow_the_rule():
    d = ModularAddition(p=7, train_frac=0.5, seed=0)
    assert (d.d_vocab, d.n_ctx, d.equals_token) == (8, 3, 7)
    assert d.tokens.shape == (49, 3) and d.answers.shape == (49,)
    for i in range(49):
        a, b, eq = d.tokens[i].tolist()
        assert (a, b, eq) == (i // 7, i % 7, 7)
        assert int(d.answers[i]) == (a + b) % 7
    assert torch.equal(d.answers.reshape(7, 7)[3, 5], torch.tensor(1))
    assert torch.equal(d.answer(d.tokens), d.answers)


def test_split_is_disjoint_covers_the_grid_and_has_the_asked_size():
    d = ModularAddition(p=31, train_frac=0.3, seed=4)
    assert d.n_train == round(0.3 * 961) == len(d.train_idx)
    both = torch.cat([d.train_idx, d.test_idx])
    assert torch.equal(both.sort().values, torch.arange(961))
    tok, ans = d.split("train")
    assert torch.equal(tok, d.tokens[d.train_idx]) and torch.equal(ans, (tok[:, 0] + tok[:, 1]) % 31)
    tok, ans = d.split("test")
    assert len(tok) == 961 - d.n_train and torch.equal(ans, d.answer(tok))
    assert torch.equal(d.split("all")[1], d.answers)


def test_fresh_test_pairs_are_those_whose_swap_is_unseen():
    d = ModularAddition(p=13, train_frac=0.4, seed=2)
    train = set(map(tuple, d.split("train")[0][:, :2].tolist()))
    test = d.split("test")[0][:, :2].tolist()
    want = [(a, b) for a, b in test if (b, a) not in train]
    assert [tuple(r) for r in d.split("fresh_test")[0][:, :2].tolist()] == want
    assert 0 < len(want) < len(test)
    assert set(d.fresh_test_idx.tolist()) <= set(d.test_idx.tolist())


def test_split_depends_on_the_seed_only():
    a, b = ModularAddition(p=23, train_frac=0.4, seed=1), ModularAddition(p=23, train_frac=0.4, seed=1)
    c = ModularAddition(p=23, train_frac=0.4, seed=2)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a.train_idx, b.train_idx)
    assert not torch.equal(a.train_idx, c.train_idx)
    # a larger fraction of the same seed contains the smaller one's training pairs
    big = ModularAddition(p=23, train_frac=0.6, seed=1)
    assert set(a.train_idx.tolist()) <= set(big.train_idx.tolist())


def test_sample_draws_training_pairs_from_the_generator():
    d = ModularAddition(p=11, train_frac=0.3, seed=0)
    x = d.sample(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 3)
    train_rows = set(map(tuple, d.split("train")[0].tolist()))
    assert set(map(tuple, x.tolist())) <= train_rows
    assert len(set(map(tuple, x.tolist()))) == len(train_rows)  # 500 draws hit all 36 pairs
    assert torch.equal(x, d.sample(500, torch.Generator().manual_seed(0)))


def test_spec_round_trip_and_registration():
    d = ModularAddition(p=13, train_frac=0.25, seed=-3)
    spec = json.loads(json.dumps(d.spec))
    assert spec == {"kind": "modular_addition", "p": 13, "train_frac": 0.25, "seed": -3}
    assert DATASETS["modular_addition"] is ModularAddition
    again = make_dataset(spec)
    assert isinstance(again, ModularAddition) and again.spec == d.spec
    assert torch.equal(again.train_idx, d.train_idx) and torch.equal(again.tokens, d.tokens)


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


@pytest.mark.parametrize("kwargs, message", [
    (dict(p=9), "p must be a prime"),
    (dict(p=2), "p must be >= 3"),
    (dict(p=7.0), "p must be an int"),
    (dict(p=True), "p must be an int"),
    (dict(train_frac=0.0), "strictly between 0 and 1"),
    (dict(train_frac=1.0), "strictly between 0 and 1"),
    (dict(train_frac=float("nan")), "strictly between 0 and 1"),
    (dict(train_frac="0.3"), "strictly between 0 and 1"),
    (dict(p=3, train_frac=0.01), "at least one pair"),
    (dict(p=3, train_frac=0.99), "at least one pair"),
    (dict(seed=1.5), "seed must be an int"),
])
def test_bad_arguments_raise_sentences(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModularAddition(**kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.answer(torch.zeros(2, 3)), "integer torch.Tensor"),
    (lambda d: d.answer([[0, 1, 7]]), "integer torch.Tensor"),
    (lambda d: d.answer(torch.zeros(2, 4, dtype=torch.long)), r"shape \[batch, 3\]"),
    (lambda d: d.answer(torch.tensor([[0, 7, 7]])), "residues 0..6"),
    (lambda d: d.answer(torch.tensor([[0, 1, 2]])), "'=' token 7"),
    (lambda d: d.split("val"), "'train', 'test', 'fresh_test' or 'all'"),
    (lambda d: d.sample(0, torch.Generator()), "batch_size"),
    (lambda d: d.sample(4, None), "torch.Generator"),
    (lambda d: make_dataset({"kind": "modular_addition", "p": 7}), "must have the fields"),
])
def test_bad_calls_raise_sentences(call, message):
    with pytest.raises(ValueError, match=message):
        call(ModularAddition(p=7, train_frac=0.5, seed=0))
