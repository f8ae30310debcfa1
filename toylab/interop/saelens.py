"""A lab SAE in SAELens's file format: ``cfg.json`` and ``sae_weights.safetensors``.

SAELens (version 6) keeps an SAE in a folder with two files: ``cfg.json`` (the
architecture, ``d_in``, ``d_sae``, dtype, how inputs are treated, and a ``metadata``
object with the hook it reads) and ``sae_weights.safetensors`` holding ``W_enc
[d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``: the
lab's names and shapes. Two things differ:

- the lab multiplies its input by a fixed ``input_scale`` ``s`` first. SAELens has
  no such number in its files, so it is folded into the weights on export::

      ReLU((s x - b_dec) W_enc + b_enc) = ReLU((x - b_dec / s) (s W_enc) + b_enc)
      (f W_dec + b_dec) / s             = f (W_dec / s) + b_dec / s

  and the file says ``normalize_activations = "none"``. The folded SAE computes the
  same latents and reconstructions; its decoder rows are no longer unit vectors
  (they have norm ``1 / s``), and :func:`load_saelens` gives it back with ``s = 1``;
- the lab always subtracts ``b_dec`` before encoding (``apply_b_dec_to_input = true``).
  A file with ``false`` is loaded by moving that term into the encoder's bias,
  ``b_enc <- b_enc + b_dec W_enc``.

Architectures: the ReLU SAE is SAELens's ``"standard"``, the TopK SAE its ``"topk"``
(with ``k``). Others (gated, JumpReLU, ...) are refused when loading.

``safetensors`` is written and read here without the ``safetensors`` package: the
format is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (each
tensor's dtype, shape and ``[begin, end)`` byte offsets into the data that follows,
plus an optional ``__metadata__`` of strings), then the tensors' raw little-endian
bytes. Files are written atomically (:mod:`toylab.files`).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from toylab.features.checks import check_finite
from toylab.features.sae import ReluSAE, SparseAutoencoder
from toylab.features.topk import TopKSAE
from toylab.files import atomic_write, atomic_write_many

__all__ = ["save_saelens", "load_saelens", "saelens_state", "safetensors_bytes", "write_safetensors",
           "read_safetensors", "CFG_FILENAME", "WEIGHTS_FILENAME"]

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
_WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")
# safetensors dtype names <-> torch dtypes (little-endian)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


# ------------------------------------------------------------------ safetensors


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits as int16
        t = t.view(torch.int16)
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a ``.safetensors`` file holding ``tensors`` (name -> tensor of a dtype in
    F64/F32/F16/BF16/I64/I32; written in the dict's order) and ``metadata`` (str -> str, the
    header's ``__metadata__``). The header is padded with spaces to a multiple of 8 bytes."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r} must be a torch.Tensor of one of {sorted(map(str, _NAMES))}")
        blob = _tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                      ) -> Path:
    """Write :func:`safetensors_bytes` of ``tensors`` and ``metadata`` to ``path``, atomically."""
    data = safetensors_bytes(tensors, metadata)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` from a ``.safetensors`` file; a truncated or foreign file is a
    ``ValueError`` that says so."""
    path = Path(path)
    data = path.read_bytes()
    bad = f"{path} is not a safetensors file"
    if len(data) < 8:
        raise ValueError(f"{bad}: it has {len(data)} bytes, fewer than the 8 of the header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(f"{bad}: its header length ({n} bytes) runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{bad}: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: its header is not a JSON object")
    body = data[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{bad}: the header entry of {name!r} lacks a known dtype, a shape or offsets") from None
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(body) or end - begin != size:
            raise ValueError(f"{bad}: {name!r} ({info['dtype']}, shape {shape}) needs {size} bytes, "
                             f"its offsets [{begin}, {end}) give {end - begin} of the {len(body)} there")
        raw = bytearray(body[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else torch.empty(0, dtype=dtype)
        else:
            np_dtype = np.dtype(str(dtype).removeprefix("torch.")).newbyteorder("<")
            t = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("="))) \
                if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape).clone()
    return tensors, {str(k): str(v) for k, v in meta.items()}


# ------------------------------------------------------------------ SAEs


def _check_sae(sae) -> SparseAutoencoder:
    if not isinstance(sae, (ReluSAE, TopKSAE)):
        raise TypeError(f"sae must be a toylab ReluSAE or TopKSAE, got {type(sae).__name__}")
    return sae


@torch.no_grad()
def saelens_state(sae) -> dict[str, torch.Tensor]:
    """The weights SAELens would hold for ``sae`` (copies; ``sae`` is not changed):
    ``W_enc = s W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec = W_dec / s [d_sae, d_in]``,
    ``b_dec = b_dec / s [d_in]``, ``s`` the SAE's ``input_scale``."""
    _check_sae(sae)
    s = sae.input_scale.detach()
    return {"W_enc": sae.W_enc.detach() * s, "b_enc": sae.b_enc.detach().clone(),
            "W_dec": sae.W_dec.detach() / s, "b_dec": sae.b_dec.detach() / s}


def save_saelens(sae, folder: str | Path, hook_name: str | None = None, model_name: str | None = None,
                 ) -> Path:
    """Write ``sae`` (a :class:`~toylab.features.sae.ReluSAE` or
    :class:`~toylab.features.topk.TopKSAE`) into ``folder`` as SAELens's ``cfg.json`` and
    ``sae_weights.safetensors`` (both written atomically, together); returns ``folder``.

    ``hook_name`` (e.g. ``"blocks.0.hook_resid_post"``) and ``model_name`` go into the
    config's ``metadata``. The input scale is folded into the weights (module docstring).
    """
    _check_sae(sae)
    for name, value in (("hook_name", hook_name), ("model_name", model_name)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    state = saelens_state(sae)
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    cfg = {"architecture": "topk" if isinstance(sae, TopKSAE) else "standard",
           "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": dtype, "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none"}
    if isinstance(sae, TopKSAE):
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {"hook_name": hook_name, "model_name": model_name, "hook_head_index": None}
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is a file: SAELens keeps an SAE in a folder of two files")
    data = safetensors_bytes({k: v.cpu() for k, v in state.items()}, {"format": "pt"})
    text = json.dumps(cfg, indent=2) + "\n"
    atomic_write_many([(folder / WEIGHTS_FILENAME, lambda tmp: Path(tmp).write_bytes(data)),
                       (folder / CFG_FILENAME, lambda tmp: Path(tmp).write_text(text))])
    return folder


def _cfg_get(cfg: dict, name: str, kind, where: str):
    if name not in cfg:
        raise ValueError(f"{where} has no {name!r}: it is not an SAELens config")
    value = cfg[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


@torch.no_grad()
def load_saelens(folder: str | Path) -> SparseAutoencoder:
    """A toylab SAE from an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    ``"standard"`` gives a :class:`~toylab.features.sae.ReluSAE`, ``"topk"`` a
    :class:`~toylab.features.topk.TopKSAE` with the file's ``k``; ``input_scale`` is 1 (the
    file's weights already include any scale). The result's ``encode``/``decode`` equal
    SAELens's on the same weights. Refused with a ``ValueError`` naming the field: another
    architecture, ``normalize_activations`` other than ``"none"``, a reshaped (``hook_z``)
    input, TopK with ``rescale_acts_by_decoder_norm``, weights of the wrong shape, missing
    or non-finite.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ValueError(f"{folder} has no {p.name}: an SAELens SAE is a folder with {CFG_FILENAME} "
                             f"and {WEIGHTS_FILENAME}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path} is not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} is not a JSON object")
    where = str(cfg_path)
    arch = _cfg_get(cfg, "architecture", str, where)
    if arch not in ("standard", "topk"):
        raise ValueError(f"{where}: architecture {arch!r} has no toylab SAE; expected 'standard' (ReLU) or 'topk'")
    d_in, d_sae = _cfg_get(cfg, "d_in", int, where), _cfg_get(cfg, "d_sae", int, where)
    for name, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(name, "none") != ok:
            raise ValueError(f"{where}: {name}={cfg[name]!r} is not supported; the lab's SAE reads its input "
                             f"as it is ({name}='none'). Fold the normalisation into the weights first")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{where}: rescale_acts_by_decoder_norm=true is not supported by the lab's TopK SAE")
    weights, _ = read_safetensors(w_path)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in shapes.items():
        if name not in weights:
            raise ValueError(f"{w_path} has no {name!r}; expected {list(_WEIGHTS)}")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{w_path}: {name} has shape {list(weights[name].shape)}, expected {list(shape)} "
                             f"for d_in={d_in}, d_sae={d_sae}")
        check_finite(weights[name], f"{name} in {w_path}")
    dtype = weights["W_enc"].dtype
    if not cfg.get("apply_b_dec_to_input", True):  # the lab subtracts b_dec first: move it into b_enc
        weights["b_enc"] = weights["b_enc"] + (weights["b_dec"].double() @ weights["W_enc"].double()).to(dtype)
    if arch == "topk":
        k = _cfg_get(cfg, "k", int, where)
        if k > d_sae:
            raise ValueError(f"{where}: k={k} is larger than d_sae={d_sae}")
        sae = TopKSAE(d_in, d_sae, k=k)
    else:
        sae = ReluSAE(d_in, d_sae)
    sae = sae.to(dtype)
    for name in _WEIGHTS:
        getattr(sae, name).copy_(weights[name])
    sae.input_scale.fill_(1.0)
    return sae
