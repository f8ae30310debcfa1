"""The fact-table language: its samples follow its documented rule, and its truth is the table."""

import json

import pytest
import torch

from toylab.data import BOS, DATASETS, FactLanguage, make_dataset


def gen(seed):
    return torch.Generator().manual_seed(seed)


def small(**kw):
    args = dict(n_subjects=12, n_attributes=4, n_filler=5, n_ctx=10, seed=3, p_fact=0.5)
    args.update(kw)
    return FactLanguage(**args)


def test_registered_and_vocabulary_layout():
    assert DATASETS["facts"] is FactLanguage
    lang = small()
    assert lang.d_vocab == 1 + 12 + 4 + 5
    assert lang.subjects.tolist() == list(range(1, 13))
    assert lang.attributes.tolist() == list(range(13, 17))
    assert lang.filler.tolist() == list(range(17, 22))


def test_the_table_is_balanced_and_seeded():
    lang = small()
    counts = torch.bincount(lang.attribute_of - 13, minlength=4)
    assert counts.tolist() == [3, 3, 3, 3]
    assert lang.table == dict(zip(range(1, 13), lang.attribute_of.tolist()))
    assert torch.equal(small().attribute_of, lang.attribute_of)
    assert not torch.equal(small(seed=4).attribute_of, lang.attribute_of)
    uneven = FactLanguage(n_subjects=10, n_attributes=4, n_filler=3, n_ctx=8)
    assert sorted(torch.bincount(uneven.attribute_of - 11, minlength=4).tolist()) == [2, 2, 3, 3]


def test_every_subject_is_followed_by_its_attribute():
    lang = small()
    toks = lang.sample(2000, gen(0))
    assert toks.shape == (2000, 10) and (toks[:, 0] == BOS).all() and (toks[:, 1:] != BOS).all()
    mask = lang.is_subject(toks[:, :-1])
    assert mask.sum() > 1000
    assert torch.equal(toks[:, 1:][mask], lang.attribute_of[toks[:, :-1][mask] - 1])
    # a subject never sits at the last position, and attributes appear only after subjects
    assert not lang.is_subject(toks[:, -1]).any()
    is_attr = (toks >= 13) & (toks <= 16)
    assert torch.equal(is_attr[:, 1:], lang.is_subject(toks[:, :-1]))


def test_fresh_tokens_follow_p_fact():
    lang = small(p_fact=0.3)
    toks = lang.sample(4000, gen(1))
    prev_free = ~lang.is_subject(toks[:, 1:-2])  # predecessor not a subject; positions 2..n-2
    fresh = toks[:, 2:-1][prev_free]
    frac = lang.is_subject(fresh).double().mean().item()
    assert abs(frac - 0.3) < 0.02, frac
    # subjects are uniform
    c = torch.bincount(fresh[lang.is_subject(fresh)] - 1, minlength=12).double()
    assert (c / c.sum() - 1 / 12).abs().max() < 0.02


def test_next_token_probs_are_the_rule():
    lang = small()
    toks = lang.sample(64, gen(2))
    p = lang.next_token_probs(toks)
    assert p.shape == (64, 10, lang.d_vocab) and p.dtype == torch.float64
    assert torch.allclose(p.sum(-1), torch.ones(64, 10, dtype=torch.float64))
    # every sampled next token has positive probability
    nxt = p[:, :-1].gather(-1, toks[:, 1:, None]).squeeze(-1)
    assert (nxt > 0).all()
    mask = lang.fact_positions(toks)
    assert (p[mask].max(-1).values == 1).all()
    assert torch.equal(p[mask].argmax(-1), lang.attribute_of[toks[mask] - 1])
    # at a non-subject position t = n_ctx - 2 the next (last) token is uniform filler
    free = ~lang.is_subject(toks[:, 8])
    assert torch.allclose(p[free, 8][:, lang.filler], torch.full((int(free.sum()), 5), 0.2, dtype=torch.float64))
    # elsewhere: p_fact / S on subjects
    free = ~lang.is_subject(toks[:, 3])
    assert torch.allclose(p[free, 3][:, lang.subjects], torch.full((int(free.sum()), 12), 0.5 / 12,
                                                                   dtype=torch.float64))


def test_fact_positions_and_subject_index():
    lang = small()
    toks = torch.tensor([[0, 1, lang.table[1], 17, 5, lang.table[5], 17, 18, 19, 2]])
    assert lang.fact_positions(toks).nonzero()[:, 1].tolist() == [1, 4]  # the last position is no fact position
    assert lang.subject_index(toks)[0].tolist() == [-1, 0, -1, -1, 4, -1, -1, -1, -1, 1]


def test_spec_round_trip_and_determinism():
    lang = small()
    spec = json.loads(json.dumps(lang.spec))
    again = make_dataset(spec)
    assert isinstance(again, FactLanguage) and again.spec == lang.spec
    assert torch.equal(again.attribute_of, lang.attribute_of)
    assert torch.equal(again.sample(16, gen(5)), lang.sample(16, gen(5)))
    assert not torch.equal(lang.sample(16, gen(5)), lang.sample(16, gen(6)))
    assert "FactLanguage(n_subjects=12" in repr(lang)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_subjects=0), "n_subjects must be >= 1"),
    (dict(n_attributes=13), "n_attributes must be <= n_subjects"),
    (dict(n_filler=0), "n_filler must be >= 1"),
    (dict(n_ctx=2), "n_ctx must be >= 3"),
    (dict(p_fact=0.0), "p_fact must be > 0"),
    (dict(p_fact=1.5), r"p_fact must be a probability"),
    (dict(seed=1.0), "seed must be an int"),
    (dict(n_subjects=True), "n_subjects must be an int"),
])
def test_bad_arguments_get_a_sentence(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


def test_bad_tokens_and_specs_get_a_sentence():
    lang = small()
    with pytest.raises(ValueError, match="LongTensor"):
        lang.next_token_probs(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \[batch, n\]"):
        lang.fact_positions(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="more than the language's n_ctx=10"):
        lang.next_token_probs(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids in \[0, 21\]"):
        lang.next_token_probs(torch.tensor([[0, 22]]))
    with pytest.raises(ValueError, match="start with BOS"):
        lang.next_token_probs(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        lang.sample(0, gen(0))
    with pytest.raises(ValueError, match="torch.Generator"):
        lang.sample(2, 0)
    spec = lang.spec
    del spec["p_fact"]
    with pytest.raises(ValueError, match=r"missing \['p_fact'\]"):
        make_dataset(spec)
