"""The recorded grokking numbers that chapter "Grokking" reads.

``chapters/data/ch12_grokking.json`` is written by ``benchmarks/record_grokking.py``
(minutes of training, so not rerun here). These checks are cheap: the file has what the
chapter reads, it was made with the preset as it is now, its numbers obey the relations
they must, and seed 0's report is what the shipped checkpoint gives when read again now.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "chapters" / "data" / "ch12_grokking.json"
KEYS = ("memorised_step", "grokked_step", "delay", "circuit_step", "half_step", "key_frequencies", "n_keys",
        "key_share", "embed_gini", "explained", "explained_per_key", "neurons_per_key", "neurons_on_keys",
        "fresh_acc", "fresh_acc_keys_removed", "other_frequencies", "fresh_acc_others_removed")


def _script():
    spec = importlib.util.spec_from_file_location("record_grokking", ROOT / "benchmarks" / "record_grokking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


def test_the_record_has_what_the_chapter_reads(record):
    from toylab.training.presets import get_preset

    assert record["script"] == "benchmarks/record_grokking.py" and record["threads"] == 1
    preset = get_preset(record["preset"])
    assert record["preset_spec"] == json.loads(json.dumps(
        {"model": preset.model.to_dict(), "data": preset.data, "train": preset.train.to_dict()})), \
        "the preset changed since the record was made: rerun benchmarks/record_grokking.py"
    assert [r["seed"] for r in record["reports"]] == [0, 1, 2]
    steps = preset.train.steps
    for r in record["reports"]:
        assert set(KEYS) <= set(r), sorted(set(KEYS) - set(r))
        assert 0 < r["memorised_step"] < r["grokked_step"] <= steps
        assert r["delay"] == r["grokked_step"] - r["memorised_step"]
        assert r["memorised_step"] <= r["circuit_step"] and r["half_step"] <= r["grokked_step"]
        assert r["n_keys"] == len(r["key_frequencies"]) == len(r["other_frequencies"]) >= 1
        assert not set(r["key_frequencies"]) & set(r["other_frequencies"])
        assert sorted(map(int, r["neurons_per_key"])) == sorted(r["key_frequencies"])
        for key in ("key_share", "embed_gini", "explained", "neurons_on_keys", "fresh_acc",
                    "fresh_acc_keys_removed", "fresh_acc_others_removed"):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
        # the cos terms of different frequencies are orthogonal over the grid: their shares add up
        assert sum(r["explained_per_key"].values()) == pytest.approx(r["explained"], abs=1e-6)
        assert r["neurons_on_keys"] * 256 == pytest.approx(sum(r["neurons_per_key"].values()))


def test_seed_0_is_the_shipped_model(record):
    from toylab.data import make_dataset
    from toylab.training.presets import load_shipped

    torch.set_num_threads(1)
    ckpt = load_shipped("grokking-1l")
    now = _script().seed_report(ckpt.model, make_dataset(ckpt.data_spec), ckpt.history, 0)
    r0 = record["reports"][0]
    for key in KEYS:
        if isinstance(now[key], float):
            assert r0[key] == pytest.approx(now[key], abs=1e-6), key
        elif isinstance(now[key], dict):
            assert r0[key].keys() == now[key].keys(), key
            for k in now[key]:
                assert r0[key][k] == pytest.approx(now[key][k], abs=1e-6), (key, k)
        else:
            assert r0[key] == now[key], key
