"""head_report: scores, labels and the printed table on the shipped models."""

import functools
import math

import pytest
import torch

from toylab.data import repeated_tokens
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.presets import load_model
from toylab.report import THRESHOLDS, head_report, positional_scores
from toylab.scores import head_detector_scores



@functools.lru_cache(maxsize=None)
def model(name):
    return load_model(name)


def test_induction_model_heads_are_labelled():
    rep = head_report(model("induction-2l"))
    print(rep)
    assert len(rep) == 4
    assert rep[0, 0]["label"] == "previous-token"
    assert rep[1, 0]["label"] == rep[1, 1]["label"] == "induction"
    assert "copying" in rep[1, 1]["tags"] and "copying" in rep[1, 0]["tags"]
    assert rep[0, 0]["positional"] >= 0.9          # a previous-token head attends by position
    assert rep[1, 1]["positional"] < 0.6            # an induction head attends by content
    assert rep[0, 1]["label"] not in ("induction", "previous-token")
    table = str(rep)
    assert table.splitlines()[0].split()[:3] == ["head", "label", "prev"]
    assert "1.1" in table and "induction" in table
    assert rep.scores["induction"].shape == (2, 2)


def test_control_model_has_no_induction_head():
    rep = head_report(model("induction-1l"))
    assert all("induction" not in r["tags"] for r in rep)


def test_report_matches_the_detectors_on_given_tokens():
    m = model("induction-2l")
    toks = repeated_tokens(128, 10, 16, torch.Generator().manual_seed(3))
    rep = head_report(m, toks)
    det = head_detector_scores(m, toks)
    for r in rep:
        assert r["induction"] == pytest.approx(det["induction"][r["layer"], r["head"]].item())
        assert r["label"] in list(THRESHOLDS) + ["other"] or r["label"].startswith("positional (")


def test_positional_score():
    m = model("induction-2l")
    toks = repeated_tokens(128, 10, 8, torch.Generator().manual_seed(0))
    s = positional_scores(m, toks)
    assert s.shape == (2, 2) and ((s >= 0) & (s <= 1 + 1e-6)).all()
    # a model whose heads ignore tokens (zero W_E in Q and K) is purely positional
    cfg = ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=1, n_heads=1, positional="shortformer")
    pm = AttnOnlyTransformer(cfg, seed=0)
    pm.W_E.data.zero_()
    toks = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(0))
    assert positional_scores(pm, toks).item() == pytest.approx(1.0, abs=1e-5)
    nm = AttnOnlyTransformer(ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=1, positional="none"))
    assert math.isnan(positional_scores(nm, toks).item())


def test_bad_input():
    m = model("induction-2l")
    no_repeats = torch.arange(0, 32)[None]                 # every token distinct
    with pytest.raises(ValueError, match="repeat"):
        head_report(m, no_repeats)
    with pytest.raises(ValueError, match="0 layers"):
        head_report(model("bigram-0l"))
    with pytest.raises(ValueError, match="longer than"):
        head_report(m, torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(KeyError, match="no head"):
        head_report(m)[2, 0]
