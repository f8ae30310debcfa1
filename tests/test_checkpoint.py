"""Checkpoints round-trip, are written atomically, and bad files give clear errors."""

import os
import pickle

import pytest
import torch

from toylab.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toylab.model import AttnOnlyTransformer, ModelConfig

CFG = ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=2, n_heads=2, positional="shortformer")


def save(path, model=None, **kw):
    model = model or AttnOnlyTransformer(CFG, seed=2)
    return save_checkpoint(path, model, data_spec={"kind": "bigram"}, train_spec={"steps": 3}, seed=2,
                           history=[{"step": 3, "val_loss": 1.5}], metrics={"val_loss": 1.5}, **kw)


def test_round_trip(tmp_path):
    model = AttnOnlyTransformer(CFG, seed=2)
    save(tmp_path / "m.pt", model, prefix_state=model.state_dict())
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.config == CFG and ckpt.seed == 2 and ckpt.history == [{"step": 3, "val_loss": 1.5}]
    assert ckpt.data_spec == {"kind": "bigram"} and ckpt.train_spec == {"steps": 3}
    for name, p in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], p)
        assert torch.equal(ckpt.prefix_state[name], p)
    tokens = torch.tensor([[0, 1, 2, 3]])
    assert torch.equal(ckpt.model(tokens), model(tokens))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save(path)
    good = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save(path)
    assert path.read_bytes() == good  # the old file is untouched
    assert os.listdir(tmp_path) == ["m.pt"]  # and no temporary file is left behind


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save(tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a readable toylab checkpoint"):
        load_checkpoint(path)


def test_foreign_torch_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a toylab checkpoint: expected format 'toylab-checkpoint'"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="found 'Tensor'"):
        load_checkpoint(tmp_path / "tensor.pt")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"format": "toylab-checkpoint", "x": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint("evil.pt")
    assert not os.path.exists("PWNED")


def test_weights_that_do_not_match_the_config(tmp_path):
    path = save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["W_E"] = torch.zeros(3, 3)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"W_E has shape \[3, 3\], the config expects \[10, 8\]"):
        load_checkpoint(path)
    del payload["state_dict"]["W_E"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"missing \['W_E'\]"):
        load_checkpoint(path)


def test_newer_format_and_bad_config(tmp_path):
    path = save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    torch.save({**payload, "config": {**payload["config"], "n_heads": 3}}, path)
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(path)


# --- failed saves never lose the good file; the .pt/.json pair is self-checking -------------------

import errno  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

from toylab import files as files_mod  # noqa: E402
from toylab.training import checkpoint as ckpt_mod  # noqa: E402
from toylab.files import SaveError, clean_stale_tmp  # noqa: E402
from toylab.training.checkpoint import check_metadata  # noqa: E402


def save_pair(path, seed=2, meta=None):
    model = AttnOnlyTransformer(CFG, seed=seed)
    return save_checkpoint(path, model, data_spec={"kind": "bigram"}, train_spec={"steps": 3}, seed=seed,
                           metadata=meta if meta is not None else {"preset": "test", "seed": seed})


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_pair(tmp_path / "m.pt")
    good_pt, good_json = path.read_bytes(), path.with_suffix(".json").read_bytes()

    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SaveError, match=r"could not write .*m\.pt: No space left on device .*untouched"):
        save_pair(path, seed=5)
    assert path.read_bytes() == good_pt and path.with_suffix(".json").read_bytes() == good_json
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pt"]


def test_torch_zip_writer_failure_is_reworded(tmp_path, monkeypatch):
    def enforce_fail(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", enforce_fail)
    with pytest.raises(SaveError, match="full disk"):
        save(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_metadata_write_failure_keeps_both_old_files(tmp_path, monkeypatch):
    path = save_pair(tmp_path / "m.pt")
    good_pt, good_json = path.read_bytes(), path.with_suffix(".json").read_bytes()
    real_write_text = type(path).write_text

    def failing_write_text(self, *a, **k):
        if self.name.endswith(".tmp") and ".m.json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(type(path), "write_text", failing_write_text)
    with pytest.raises(SaveError, match="No space left"):
        save_pair(path, seed=5)
    assert path.read_bytes() == good_pt and path.with_suffix(".json").read_bytes() == good_json
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pt"]


def test_a_folder_at_the_path_is_refused(tmp_path):
    (tmp_path / "m.pt").mkdir()
    with pytest.raises(SaveError, match="is a folder; give a file path"):
        save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        load_checkpoint(tmp_path / "m.pt")


def test_read_only_folder(tmp_path, monkeypatch):
    path = save_pair(tmp_path / "m.pt")
    good = path.read_bytes()
    # root ignores permission bits, so the refusal is simulated where the OS would give it
    monkeypatch.setattr(ckpt_mod.os, "access", lambda p, mode: False)
    with pytest.raises(SaveError, match="is not writable"):
        save_pair(path, seed=5)
    monkeypatch.undo()

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", denied)
    with pytest.raises(SaveError, match="Permission denied"):
        save_pair(path, seed=5)
    assert path.read_bytes() == good


def test_metadata_records_the_hash_of_the_bytes_written(tmp_path):
    path = save_pair(tmp_path / "m.pt")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["file"] == "m.pt" and meta["sha256"] == files_mod.file_sha256(path) and meta["preset"] == "test"
    assert check_metadata(path) is None


def test_interruption_between_the_two_renames_is_detected(tmp_path, monkeypatch):
    path = save_pair(tmp_path / "m.pt", seed=2)
    old_json = path.with_suffix(".json").read_text()
    real_replace = os.replace
    calls = []

    def die_after_first_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped between the .pt and the .json rename
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", die_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_pair(path, seed=7)
    monkeypatch.undo()
    assert path.with_suffix(".json").read_text() == old_json  # the old metadata beside the new .pt
    assert load_checkpoint(path).seed == 7  # the .pt itself is complete and self-contained
    problem = check_metadata(path)
    assert problem is not None and "describes another checkpoint" in problem
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pt"]  # no temporary file left
    save_pair(path, seed=7)  # the next save repairs the pair
    assert check_metadata(path) is None


def test_stale_temp_files_are_cleaned_on_the_next_save(tmp_path):
    dead_pid = 2**22 + 12345  # above the default pid_max, so no such process
    dead = tmp_path / f".m.pt.{dead_pid}.abcd.tmp"
    old = tmp_path / ".m.pt.k3j4h5.tmp"  # the old naming (no pid): cleaned by age
    fresh = tmp_path / ".m.pt.x9y8z7.tmp"  # a young file of unknown origin: kept
    alive = tmp_path / f".m.pt.{os.getppid()}.abcd.tmp"  # a running writer: kept
    for f in (dead, old, fresh, alive):
        f.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    other = tmp_path / ".n.pt.1.abcd.tmp"  # another file's temp: not ours to judge
    other.write_bytes(b"x")
    save(tmp_path / "m.pt")
    left = set(os.listdir(tmp_path))
    assert dead.name not in left and old.name not in left
    assert {fresh.name, alive.name, other.name, "m.pt"} <= left
    assert clean_stale_tmp(tmp_path / "m.pt") == []


def test_specs_that_are_not_json_like_are_refused_at_save(tmp_path):
    import numpy as np

    for bad, match in [({"kind": "bigram", "alphabet": {"a", "b"}}, r"data_spec\['alphabet'\] is a builtins.set"),
                       ({"kind": "bigram", "n": np.int64(3)}, r"data_spec\['n'\] is a numpy.int64"),
                       ({"kind": "bigram", "w": torch.zeros(2)}, r"data_spec\['w'\] is a torch.Tensor"),
                       ({1: "x"}, "has the key 1 .int.; keys must be strings"),
                       ({"kind": Evil()}, r"data_spec\['kind'\] is a test_checkpoint.Evil")]:
        with pytest.raises(CheckpointError, match=match):
            save_checkpoint(tmp_path / "m.pt", AttnOnlyTransformer(CFG, seed=0), data_spec=bad, train_spec={},
                            seed=0)
        assert not (tmp_path / "m.pt").exists()
    # numpy floats are floats: stored as plain floats, so the file loads with weights_only
    save_checkpoint(tmp_path / "m.pt", AttnOnlyTransformer(CFG, seed=0), data_spec={"kind": "bigram"},
                    train_spec={}, seed=0, metrics={"val_loss": np.float64(1.25)})
    assert load_checkpoint(tmp_path / "m.pt").metrics == {"val_loss": 1.25}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(tmp_path, value):
    path = save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["blocks.1.attn.W_V"][0, 3, 1] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"weight blocks.1.attn.W_V has 1 non-finite value"):
        load_checkpoint(path)
    model = AttnOnlyTransformer(CFG, seed=1)
    with torch.no_grad():
        model.W_E[0, 0] = value
    with pytest.raises(CheckpointError, match="weight W_E has 1 non-finite"):
        save(tmp_path / "n.pt", model)
    assert not (tmp_path / "n.pt").exists()


def test_shipped_format_1_checkpoints_still_load():
    from toylab.training.presets import PRESETS, shipped_path

    for name in PRESETS:
        path = shipped_path(name)
        if path.is_file():
            assert load_checkpoint(path).config.d_vocab > 0
            assert check_metadata(path) is None, name
