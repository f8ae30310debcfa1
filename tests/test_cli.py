"""The toylab command line: train, info, models, and clear errors."""

import json

import pytest

from toylab.cli import main
from toylab.training.presets import PRESETS, get_preset


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


def test_train_all_in_parallel_writes_what_one_at_a_time_writes(tmp_path, capsys):
    # every preset in its own process (spawned: this test pays their imports), two at a time
    import torch

    from toylab.training.checkpoint import load_checkpoint

    args = ["train", "--all", "--steps", "3", "--quiet"]
    assert main([*args, "--out-dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main([*args, "--out-dir", str(tmp_path / "two"), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 at a time" in printed
    for name in PRESETS:
        assert f"{name}: trained 3 steps" in printed  # each run's summary comes back to this process
        one = load_checkpoint(tmp_path / "one" / f"{name}.pt")
        two = load_checkpoint(tmp_path / "two" / f"{name}.pt")
        a, b = one.model.state_dict(), two.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert one.history == [{**e, "seconds": h["seconds"]} for e, h in zip(two.history, one.history)]


def test_train_all_in_parallel_reports_a_worker_error(tmp_path, capsys):
    # the error is raised in a worker process; it reaches the command's error line, and no preset
    # starts after it (all of them fail the same way here, before writing anything)
    assert main(["train", "--all", "--steps", "2", "--threads", "0", "--jobs", "2", "--out-dir", str(tmp_path)]) == 2
    assert "threads must be a positive integer, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_train_all_refuses_a_bad_jobs_count(jobs, tmp_path, capsys):
    assert main(["train", "--all", "--jobs", jobs, "--out-dir", str(tmp_path)]) == 2
    assert "give a positive number of processes, or auto" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_analyze_prints_the_head_report_and_composition(capsys):
    assert main(["analyze", "induction-2l"]) == 0
    out = capsys.readouterr().out
    assert "K-composition" in out and "L0H0->L1H1" in out and "induction" in out
    assert main(["analyze", "bigram-0l"]) == 0
    assert "bigram table" in capsys.readouterr().out


# --- the output path: refused before training, and a good file always survives ------------------

import errno  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

from toylab.training import checkpoint as ckpt_mod  # noqa: E402
from toylab.training.checkpoint import load_checkpoint  # noqa: E402

TINY = ["train", "bigram-0l", "--steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "model.pt"
    assert main(TINY + ["--seed", "3", "--out", str(out)]) == 0
    return out


def copy_good(good_model, tmp_path):
    for suffix in (".pt", ".json"):
        (tmp_path / f"model{suffix}").write_bytes(good_model.with_suffix(suffix).read_bytes())
    return tmp_path / "model.pt"


def test_out_ending_in_json_is_refused(good_model, tmp_path, capsys):
    out = copy_good(good_model, tmp_path)
    before = out.with_suffix(".json").read_bytes()
    assert main(TINY + ["--out", str(out.with_suffix(".json"))]) == 2
    assert "must not end in .json" in capsys.readouterr().err
    assert out.with_suffix(".json").read_bytes() == before and load_checkpoint(out).seed == 3


def test_out_on_a_folder_is_refused(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path)]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err


def test_out_in_a_read_only_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ckpt_mod.os, "access", lambda p, mode: False)  # root ignores permission bits
    assert main(TINY + ["--out", str(tmp_path / "m.pt")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_out_on_a_full_disk_keeps_the_good_file(good_model, tmp_path, monkeypatch, capsys):
    out = copy_good(good_model, tmp_path)
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()

    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert main(TINY + ["--seed", "9", "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt"]


def test_ctrl_c_saves_a_partial_checkpoint_beside_the_target(good_model, tmp_path, monkeypatch, capsys):
    import dataclasses

    import toylab.cli as cli
    import toylab.training.train as train_mod

    out = copy_good(good_model, tmp_path)
    before = out.read_bytes()
    real_train = train_mod.train

    def interrupt(entry):
        if entry["step"] >= 4:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during step 5

    def train_with_ctrl_c(model_cfg, data_spec, train_cfg, **k):
        train_cfg = dataclasses.replace(train_cfg, eval_every=2)  # a callback at steps 2, 4, ...
        return real_train(model_cfg, data_spec, train_cfg, **{**k, "callback": interrupt})

    monkeypatch.setattr(cli, "train", train_with_ctrl_c)
    code = main(["train", "bigram-0l", "--steps", "40", "--quiet", "--out", str(out)])
    assert code == 130
    err = capsys.readouterr().err
    partial = tmp_path / "model.partial.pt"
    assert "interrupted at step 4 of 40" in err and str(partial) in err
    assert out.read_bytes() == before  # the target is untouched
    ckpt = load_checkpoint(partial)
    assert ckpt.metrics["partial"] is True and ckpt.metrics["step"] == 4 and ckpt.metrics["steps_planned"] == 40
    assert ckpt_mod.check_metadata(partial) is None
    assert main(["info", str(partial)]) == 0
    assert "PARTIAL: training was interrupted at step 4 of 40" in capsys.readouterr().out


def test_info_detects_metadata_of_another_checkpoint(good_model, tmp_path, capsys):
    out = copy_good(good_model, tmp_path)
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    out.with_suffix(".json").write_text(json.dumps(meta))
    assert main(["info", str(out)]) == 1
    captured = capsys.readouterr()
    assert "seed 3" in captured.out and "describes another checkpoint" in captured.err


def test_info_on_a_checkpoint_whose_record_lacks_fields(good_model, tmp_path, capsys):
    out = copy_good(good_model, tmp_path)
    payload = torch.load(out, weights_only=True)
    payload["data_spec"] = {}
    payload["metrics"] = {"step": 4}
    del payload["train_spec"]["lr"]
    torch.save(payload, out)
    out.with_suffix(".json").unlink()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr None" in printed and "validation loss        - nats" in printed


def test_models_survives_records_without_metrics(monkeypatch, capsys):
    import toylab.cli as cli

    real = cli.load_checkpoint

    def no_metrics(path):
        ckpt = real(path)
        ckpt.metrics = {}
        return ckpt

    monkeypatch.setattr(cli, "load_checkpoint", no_metrics)
    assert main(["models"]) == 0
    assert "induction-2l" in capsys.readouterr().out


def test_analyze_a_layernorm_model_says_why_composition_is_not_shown(tmp_path, capsys):
    from toylab.training.checkpoint import save_checkpoint
    from toylab.model import AttnOnlyTransformer, ModelConfig

    cfg = ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_layers=2, n_heads=2, layernorm=True,
                      positional="shortformer")
    path = save_checkpoint(tmp_path / "ln.pt", AttnOnlyTransformer(cfg, seed=0),
                           data_spec={"kind": "induction", "n_ctx": 12}, train_spec={}, seed=0)
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "this model has LayerNorm" in out and "Q-composition" not in out
