"""The recorded headline numbers over training seeds that chapters 4-10 read.

``chapters/data/seeds.json`` is written by ``benchmarks/record_seeds.py`` (minutes of training and
SAE fitting, so not rerun here). These checks are cheap: the file has what the chapters read, in
plausible ranges, and seed 0's entries agree with the shipped checkpoint's numbers recomputed now
by the script's own functions (chapter 4's probe and history, chapter 5's interventions, chapter
8's Spearman correlations and AUCs). Also :func:`toylab.suite.report.seed_summary`, which prints them.

Tolerances: the file rounds to 4 decimals (half a unit: 5e-5), and another CPU's kernels move a
forward pass's float32 losses by about 1e-6, so losses, scores and effects are compared to 2e-4.
Spearman's rho over the 37 edges is 1 - 6 sum(d^2) / (37 (37^2 - 1)): two near-tied edges that
swap adjacent ranks move it by 12 / 50616 = 0.0002, so 0.01 allows dozens of such swaps and still
catches a different ranking; the AUCs come from the same edge effects and get the same 0.01.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from toylab.suite.report import seed_summary

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "chapters" / "data" / "seeds.json"
CHAPTERS = ("ch04", "ch05", "ch06", "ch07", "ch08", "ch09", "ch10")


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("record_seeds", ROOT / "benchmarks" / "record_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_record_has_what_the_chapters_read(record):
    assert record["script"] == "benchmarks/record_seeds.py"
    assert record["seeds"] == [0, 1, 2] and record["threads"] == 1
    assert len(record["code_version"]) >= 40 and "settings" in record
    assert sorted(record["chapters"]) == list(CHAPTERS)
    for ch in CHAPTERS:
        assert [r["seed"] for r in record["chapters"][ch]] == [0, 1, 2], ch
    for r in record["chapters"]["ch04"]:
        assert 0 <= r["loss_repeat_2l"] < r["loss_first_2l"] < 6
        assert 0 <= r["induction_score"] <= 1 and 0 <= r["prev_token_score"] <= 1
        assert 0 < r["step_induction_0p5"] <= 1500 and r["steepest_step_2l"] % 50 == 0
    for r in record["chapters"]["ch05"]:
        assert r["clean_loss"] < r["zero_prev"] and -0.1 < r["path_k"] < 1.1
    for r in record["chapters"]["ch06"]:
        for sae in ("relu_lambda3", "topk_k1", "relu_lambda8.24"):
            assert set(r[sae]) == {"l0", "fve", "mcc", "mcc_abs", "ce_recovered"}
            assert -1 <= r[sae]["mcc"] <= r[sae]["mcc_abs"] + 1e-9 <= 1 + 1e-9
    for r in record["chapters"]["ch07"]:
        for site in ("embed", "prev_head_out", "other_head_out", "attn_out0", "resid_post0", "resid_post1"):
            assert 0 <= r[site]["accuracy"] <= 1 and -1 <= r[site]["selectivity"] <= 1
        assert set(r["skiptrigram"]) == {"embed", "attn_out0"}
    for r in record["chapters"]["ch08"]:
        for k in ("eap_spearman_logit_diff", "eap_spearman_loss", "eapig5_spearman_logit_diff",
                  "eapig5_spearman_loss", "eapig5_spearman_kl"):
            assert -1 <= r[k] <= 1
        for k in ("acdc_auc_resample", "acdc_auc_zero", "acdc_auc_zero_with_pos"):
            assert 0 <= r[k] <= 1
        assert r["control_1l"]["edges"] == 13
    for r in record["chapters"]["ch09"]:
        assert len(r["hypotheses"]) == 7
        for h in r["hypotheses"].values():
            assert h["low"] <= h["recovered"] <= h["high"]
    for r in record["chapters"]["ch10"]:
        assert 0 < r["bos_c_kl"] < r["direct_kl"] and 0 <= r["best_induction"] <= 1
        assert set(r["paren_heads"]) <= {"L0H0", "L0H1", "L0H2"}


def test_seed_0_is_the_shipped_model(record, script):
    from toylab.training.presets import load_shipped

    torch.set_num_threads(1)
    ck2, ck1 = load_shipped("induction-2l"), load_shipped("induction-1l")
    with torch.no_grad():
        now = {"ch04": script.ch04(ck2.model, ck2.history, ck1.model, ck1.history),
               "ch05": script.ch05(ck2.model)}
    for ch, got in now.items():
        rec = record["chapters"][ch][0]
        for k, v in got.items():
            if isinstance(v, float):
                assert v == pytest.approx(rec[k], abs=2e-4), (ch, k)
            else:
                assert v == rec[k], (ch, k)


def test_seed_0_of_chapter_8_is_the_shipped_model(record, script):
    from toylab.training.presets import load_shipped

    torch.set_num_threads(1)
    with torch.no_grad():
        got = script.ch08(load_shipped("induction-2l").model)
    rec = record["chapters"]["ch08"][0]
    assert got["known_edges"] == rec["known_edges"]
    for k, v in got.items():
        if isinstance(v, float):
            assert v == pytest.approx(rec[k], abs=0.01), k


def test_steepest_drop_is_chapter_4s_rule(script):
    h = [{"step": 0, "loss_repeat": 5.0}, {"step": 50, "loss_repeat": 4.0}, {"step": 100, "loss_repeat": 1.0},
         {"step": 200, "loss_repeat": 0.0}]
    step, rate = script.steepest_drop(h)
    assert step == 100 and rate == pytest.approx(3.0 / 50)  # per step: 200's fall (1.0 / 100) is slower


def test_seed_summary_prints_seed_0_the_mean_the_spread_and_the_range():
    rows = [{"a": {"b": 0.95}}, {"a": {"b": 0.91}}, {"a": {"b": 0.93}}]
    sd = math.sqrt((0.02 ** 2 + 0.02 ** 2) / 3)  # population standard deviation: 0.0163
    assert seed_summary(rows, "a", "b") == f"0.95   0.93 ± {sd:.2f} (0.91 to 0.95)"
    assert seed_summary(rows, "a", "b", digits=3) == "0.950   0.930 ± 0.016 (0.910 to 0.950)"
    steps = [{"s": 200}, {"s": 150}, {"s": 250}]
    assert seed_summary(steps, "s", digits=0) == "200   200 ± 41 (150 to 250)"
    # a rounded 0 has no sign
    assert seed_summary([{"x": -0.001}, {"x": 0.0}], "x") == "0.00   0.00 ± 0.00 (0.00 to 0.00)"


def test_seed_summary_rejects_bad_input():
    with pytest.raises(TypeError, match="non-empty list of dicts"):
        seed_summary([], "a")
    with pytest.raises(ValueError, match="keys must name"):
        seed_summary([{"a": 1.0}])
    with pytest.raises(ValueError, match=r"row 1 has no entry 'a/b' \(missing 'b'\)"):
        seed_summary([{"a": {"b": 1.0}}, {"a": {}}], "a", "b")
    with pytest.raises(ValueError, match="finite number"):
        seed_summary([{"a": float("nan")}], "a")
    with pytest.raises(ValueError, match="finite number"):
        seed_summary([{"a": True}], "a")
    with pytest.raises(ValueError, match="digits must be an integer"):
        seed_summary([{"a": 1.0}], "a", digits=1.5)
