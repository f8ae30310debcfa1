"""toylab.interop.saelens: a lab SAE in SAELens's files (cfg.json + sae_weights.safetensors)
and back, with the lab's own safetensors writer and reader (no SAELens, no safetensors package)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from toylab.features.sae import ReluSAE
from toylab.features.topk import TopKSAE
from toylab.files import SaveError
from toylab.interop.saelens import (CFG_FILENAME, WEIGHTS_FILENAME, load_saelens, read_safetensors,
                                    safetensors_bytes, save_saelens, write_safetensors)


def _trained_like(sae, seed=0):
    """Random weights (not unit rows), a non-trivial input scale and biases: everything the
    export must carry."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        sae.input_scale.fill_(2.5)
    return sae


def _x(d_in, n=64, seed=1):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) * 0.4


@pytest.mark.parametrize("make", [lambda: ReluSAE(6, 20, l1_coefficient=0.3),
                                  lambda: TopKSAE(6, 20, k=3)], ids=["relu", "topk"])
def test_round_trip_keeps_latents_and_reconstructions(tmp_path, make):
    sae = _trained_like(make())
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    folder = save_saelens(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post", model_name="toy")
    assert sorted(p.name for p in folder.iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    back = load_saelens(folder)
    assert type(back) is type(sae) and back.d_in == 6 and back.d_sae == 20
    x = _x(6)
    torch.testing.assert_close(back.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back(x), sae(x), atol=1e-5, rtol=1e-5)
    assert float(back.input_scale) == 1.0  # the scale lives in the weights now
    for k, v in sae.state_dict().items():
        assert torch.equal(v, before[k]), "save_saelens changed the SAE it saved"
    if isinstance(sae, TopKSAE):
        assert back.k == 3


def test_the_config_and_weight_names_are_saelens(tmp_path):
    sae = _trained_like(TopKSAE(6, 20, k=4))
    folder = save_saelens(sae, tmp_path / "s", hook_name="blocks.1.hook_resid_pre")
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (6, 20, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre"
    weights, meta = read_safetensors(folder / WEIGHTS_FILENAME)
    assert {k: list(v.shape) for k, v in weights.items()} == {
        "W_enc": [6, 20], "b_enc": [20], "W_dec": [20, 6], "b_dec": [6]}
    # the input scale s is folded in: W_enc s, W_dec / s, b_dec / s
    torch.testing.assert_close(weights["W_enc"], sae.W_enc.detach() * 2.5)
    torch.testing.assert_close(weights["W_dec"], sae.W_dec.detach() / 2.5)
    torch.testing.assert_close(weights["b_dec"], sae.b_dec.detach() / 2.5)
    assert json.loads((folder / CFG_FILENAME).read_text())["architecture"] == "topk"
    relu = save_saelens(_trained_like(ReluSAE(6, 20)), tmp_path / "r")
    assert json.loads((relu / CFG_FILENAME).read_text())["architecture"] == "standard"


def test_safetensors_layout_by_hand(tmp_path):
    """The bytes themselves: 8-byte little-endian header length, JSON header, raw data."""
    t = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([7, -1], dtype=torch.int64)}
    data = safetensors_bytes(t, {"note": "x"})
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8:8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "I64", "shape": [2], "data_offsets": [16, 32]}
    assert header["__metadata__"] == {"note": "x"}
    assert struct.unpack("<4f", data[8 + n:8 + n + 16]) == (1.0, 2.0, 3.0, 4.0)
    path = write_safetensors(tmp_path / "t.safetensors", t)
    back, meta = read_safetensors(path)
    assert meta == {} and all(torch.equal(back[k], t[k]) for k in t)
    bf = {"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "h": torch.tensor([0.25], dtype=torch.float16)}
    back, _ = read_safetensors(write_safetensors(tmp_path / "bf.safetensors", bf))
    assert all(back[k].dtype == bf[k].dtype and torch.equal(back[k], bf[k]) for k in bf)


def test_apply_b_dec_to_input_false_is_folded_into_b_enc(tmp_path):
    sae = _trained_like(ReluSAE(5, 12))
    folder = save_saelens(sae, tmp_path / "s")
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    w, _ = read_safetensors(folder / WEIGHTS_FILENAME)
    # the same SAE written the other way: b_enc already holds -b_dec W_enc
    w["b_enc"] = w["b_enc"] - w["b_dec"] @ w["W_enc"]
    cfg["apply_b_dec_to_input"] = False
    write_safetensors(folder / WEIGHTS_FILENAME, w)
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))
    back = load_saelens(folder)
    x = _x(5)
    torch.testing.assert_close(back.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)


def _edit(folder, **changes):
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    cfg.update(changes)
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, match", [
    (dict(architecture="jumprelu"), "architecture 'jumprelu'"),
    (dict(normalize_activations="expected_average_only_in"), "normalize_activations"),
    (dict(reshape_activations="hook_z"), "reshape_activations"),
    (dict(d_in=7), "W_enc has shape"),
    (dict(d_sae=0), "d_sae must be a positive integer"),
])
def test_load_refuses_what_the_lab_cannot_represent(tmp_path, changes, match):
    folder = save_saelens(_trained_like(ReluSAE(5, 12)), tmp_path / "s")
    _edit(folder, **changes)
    with pytest.raises(ValueError, match=match):
        load_saelens(folder)


def test_load_refuses_broken_files(tmp_path):
    folder = save_saelens(_trained_like(TopKSAE(5, 12, k=2)), tmp_path / "s")
    _edit(folder, rescale_acts_by_decoder_norm=True)
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm"):
        load_saelens(folder)
    _edit(folder, rescale_acts_by_decoder_norm=False, k=13)
    with pytest.raises(ValueError, match="k=13 is larger than d_sae=12"):
        load_saelens(folder)
    _edit(folder, k=2)
    w, _ = read_safetensors(folder / WEIGHTS_FILENAME)
    w["W_dec"][0, 0] = float("nan")
    write_safetensors(folder / WEIGHTS_FILENAME, w)
    with pytest.raises(ValueError, match="W_dec"):
        load_saelens(folder)
    (folder / WEIGHTS_FILENAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_saelens(folder)
    (folder / WEIGHTS_FILENAME).unlink()
    with pytest.raises(ValueError, match="has no sae_weights.safetensors"):
        load_saelens(folder)
    with pytest.raises(TypeError, match="ReluSAE or TopKSAE"):
        save_saelens(torch.nn.Linear(2, 2), tmp_path / "x")


def test_a_failed_save_leaves_the_files_there_untouched(tmp_path, monkeypatch):
    folder = save_saelens(_trained_like(ReluSAE(5, 12)), tmp_path / "s")
    old = {p.name: p.read_bytes() for p in folder.iterdir()}
    import toylab.interop.saelens as mod
    monkeypatch.setattr(mod, "safetensors_bytes", lambda *a, **k: b"x")  # a writer that works...
    real = mod.atomic_write_many

    def failing(items, after_write=None):  # ...and a disk that fails on the second file
        def boom(tmp):
            raise OSError(28, "No space left on device")
        return real([items[0], (items[1][0], boom)], after_write)
    monkeypatch.setattr(mod, "atomic_write_many", failing)
    with pytest.raises(SaveError, match="No space left"):
        save_saelens(_trained_like(ReluSAE(5, 12), seed=3), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old
