"""The toylab command line: train, info, models, and clear errors."""

import json

import pytest

from toylab.cli import main
from toylab.presets import PRESETS, get_preset


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["train", "gpt-2"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'gpt-2'" in err and "induction-2l" in err
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("gpt-2")


def test_train_then_info(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    assert main(["train", "bigram-0l", "--steps", "30", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bigram-0l: trained 30 steps" in printed and "KL(truth || model)" in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["seed"] == 3 and meta["train_spec"]["steps"] == 30 and meta["preset"] == "bigram-0l"
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "0 layers" in info and "seed 3" in info


def test_info_on_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["info", str(bad)]) == 2
    assert "not a readable toylab checkpoint" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_models_lists_every_shipped_preset(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for name in PRESETS:
        assert name in table
    assert "not trained" not in table


def test_train_needs_exactly_one_target():
    with pytest.raises(SystemExit):
        main(["train"])
    with pytest.raises(SystemExit):
        main(["train", "bigram-0l", "--all"])


def test_analyze_prints_the_head_report_and_composition(capsys):
    assert main(["analyze", "induction-2l"]) == 0
    out = capsys.readouterr().out
    assert "K-composition" in out and "0.0->1.1" in out and "induction" in out
    assert main(["analyze", "bigram-0l"]) == 0
    assert "bigram table" in capsys.readouterr().out
