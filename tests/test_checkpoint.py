"""Checkpoints round-trip, are written atomically, and bad files give clear errors."""

import os
import pickle

import pytest
import torch

from toylab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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
