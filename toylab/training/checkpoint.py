"""Saving and loading toylab checkpoints.

A checkpoint is one ``torch.save`` file holding plain data only (tensors,
dicts, lists, strings, numbers), so it loads with ``weights_only=True`` and
no pickled code ever runs:

``{"format": "toylab-checkpoint", "format_version": 1, "toylab_version",
"torch_version", "config", "data_spec", "train_spec", "seed", "history",
"metrics", "state_dict", "prefix_state"}``

Files are written atomically (a temporary file ``.NAME.PID.XXXX.tmp`` in the
same folder, then a rename), so an interrupted save never leaves a
half-written checkpoint, and an existing file at the path survives every
failed save. Temporary files that a killed save left behind are removed by
the next save into the same folder (when their process is gone, or they are
over an hour old).

A checkpoint may have a metadata file beside it (``NAME.json``, written by
``toylab train``). Its ``sha256`` is the hash of the exact bytes of the
checkpoint it was written with (hashed from the temporary file, before
either rename), so a ``.json`` left from another save (an interrupted pair
of renames, two writers) is detected by :func:`check_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toylab import __version__
from toylab.files import atomic_write, atomic_write_many, error_reason, file_sha256
from toylab.model import AttnOnlyTransformer, ModelConfig

FORMAT = "toylab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable toylab checkpoint (or a spec that cannot be saved in one)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and everything recorded about its training."""

    model: AttnOnlyTransformer
    data_spec: dict
    train_spec: dict
    seed: int
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    prefix_state: dict[str, torch.Tensor] | None = None
    toylab_version: str = ""
    torch_version: str = ""
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def _plain_state(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().clone().contiguous().cpu()
        _check_finite(k, v, what)
        out[k] = v
    return out


def _check_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            n_nan, n_bad = int(torch.isnan(tensor).sum()), int(bad.sum())
            raise CheckpointError(
                f"{where}: weight {name} has {n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} inf) "
                f"of {tensor.numel()}; a model with NaN/inf weights gives NaN everywhere (did training diverge?)"
            )


def json_like(obj, name: str):
    """A copy of ``obj`` as plain JSON-like data (dict with str keys, list, str, int,
    float, bool, None; tuples stay tuples), or a ``CheckpointError`` naming the
    first part that is not (a set, a tensor, a numpy int, a class instance)."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{name} has the key {k!r} ({type(k).__name__}); keys must be strings")
            out[k] = json_like(v, f"{name}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [json_like(v, f"{name}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise CheckpointError(
        f"{name} is a {type(obj).__module__}.{type(obj).__name__}; a checkpoint stores only JSON-like data "
        f"(dict, list, str, int, float, bool, None): convert it first (e.g. .tolist(), int(x))"
    )


def save_checkpoint(
    path: str | os.PathLike,
    model: AttnOnlyTransformer,
    *,
    data_spec: dict,
    train_spec: dict,
    seed: int,
    history: list[dict] | None = None,
    metrics: dict | None = None,
    prefix_state: dict[str, torch.Tensor] | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` and its training record to ``path`` atomically; returns the path.

    The specs, history and metrics must be JSON-like (else ``CheckpointError``
    now, not a file that cannot be loaded), the data spec must agree with the model's
    config (its vocabulary and sequence length); weights must be finite. With
    ``metadata``, also write ``path.with_suffix(".json")`` holding it plus
    ``file`` and ``sha256`` (the hash of the checkpoint bytes written). A
    failed save raises :class:`SaveError` and leaves existing files untouched.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if metadata is not None and meta_path == path:
        raise CheckpointError(f"{path}: a checkpoint path must not end in .json (its metadata goes to NAME.json)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CheckpointError(f"seed must be an integer, got {seed!r}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toylab_version": __version__,
        "torch_version": str(torch.__version__),
        "config": model.cfg.to_dict(),
        "data_spec": json_like(data_spec, "data_spec"),
        "train_spec": json_like(train_spec, "train_spec"),
        "seed": int(seed),
        "history": json_like(history or [], "history"),
        "metrics": json_like(metrics or {}, "metrics"),
        "state_dict": _plain_state(model.state_dict(), "save_checkpoint"),
        "prefix_state": _plain_state(prefix_state, "save_checkpoint (prefix_state)") if prefix_state is not None
        else None,
    }
    _check_data_spec(model.cfg, payload["data_spec"], "save_checkpoint")
    if metadata is None:
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))
    meta = json_like(metadata, "metadata")

    def write_meta(tmps: list[str]) -> None:
        digest = hashlib.sha256(Path(tmps[0]).read_bytes()).hexdigest()
        full = {**meta, "file": path.name, "sha256": digest}
        Path(tmps[1]).write_text(json.dumps(full, indent=1) + "\n")

    atomic_write_many([(path, lambda tmp: torch.save(payload, tmp)), (meta_path, lambda tmp: None)],
                      after_write=write_meta)
    return path


def check_metadata(path: str | os.PathLike) -> str | None:
    """``None`` when ``path``'s ``.json`` metadata (if any) describes this very file,
    else a sentence saying what is wrong (another checkpoint's hash, unreadable)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if meta_path == path or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        return f"the metadata {meta_path} is unreadable ({error_reason(e)})"
    if not isinstance(meta, dict) or "sha256" not in meta:
        return f"the metadata {meta_path} records no sha256, so it cannot be matched to {path.name}"
    if meta.get("file", path.name) != path.name:
        return f"the metadata {meta_path} describes {meta['file']!r}, not {path.name!r}"
    if meta["sha256"] != file_sha256(path):
        return (f"the metadata {meta_path} describes another checkpoint (its sha256 does not match "
                f"{path.name}: an interrupted save or two writers); the .pt itself is self-contained, "
                f"re-save it or delete the stale .json")
    return None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError`
    for a corrupt, truncated or foreign one, one with NaN/inf weights, or one whose
    data spec contradicts its config (another vocabulary, longer sequences than
    ``n_ctx``), saying what was expected.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for bad bytes
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable toylab checkpoint (corrupt, truncated, or not written by "
            f"toylab.save_checkpoint): {reason[:200]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a toylab checkpoint: expected format {FORMAT!r}, found {found!r}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this toylab reads versions <= {FORMAT_VERSION}"
        )
    missing = [k for k in ("config", "state_dict", "data_spec", "train_spec", "seed") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing the field(s) {missing} of a toylab checkpoint")
    for key in ("data_spec", "train_spec"):
        if not isinstance(payload[key], dict):
            raise CheckpointError(f"{path}: {key} is a {type(payload[key]).__name__}, expected a dict")
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    _check_data_spec(cfg, payload["data_spec"], path)
    model = AttnOnlyTransformer(cfg, seed=None)
    _load_state(model, payload["state_dict"], path)
    prefix = payload.get("prefix_state")
    if isinstance(prefix, dict):
        for name, t in prefix.items():
            if isinstance(t, torch.Tensor):
                _check_finite(name, t, f"{path} (prefix_state)")
    metrics = payload.get("metrics") or {}
    history = payload.get("history") or []
    return Checkpoint(
        model=model.eval(),
        data_spec=payload["data_spec"],
        train_spec=payload["train_spec"],
        seed=payload["seed"],
        history=history if isinstance(history, list) else [],
        metrics=metrics if isinstance(metrics, dict) else {},
        prefix_state=prefix,
        toylab_version=payload.get("toylab_version", ""),
        torch_version=payload.get("torch_version", ""),
        path=path,
    )


def _check_data_spec(cfg: ModelConfig, spec: dict, path) -> None:
    """``CheckpointError`` where the data spec contradicts the model config: a different vocabulary
    (``d_vocab``, or an alphabet of another size than ``d_vocab - 1``, id 0 being BOS), sequences
    longer than the context (``n_ctx``), a kind that is not a name. Fields it lacks are not checked
    (an older or trimmed record still loads)."""
    kind = spec.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise CheckpointError(f"{path}: the data spec's kind is {kind!r}, expected the name of a language")
    problems = []
    d_vocab, n_ctx, alphabet = spec.get("d_vocab"), spec.get("n_ctx"), spec.get("alphabet")
    if d_vocab is not None and d_vocab != cfg.d_vocab:
        problems.append(f"its data has a vocabulary of {d_vocab!r} tokens but the model d_vocab = {cfg.d_vocab}")
    if isinstance(alphabet, str) and len(alphabet) + 1 != cfg.d_vocab:
        problems.append(f"its data's alphabet has {len(alphabet)} characters (+ BOS = {len(alphabet) + 1} ids) "
                        f"but the model d_vocab = {cfg.d_vocab}")
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 1 <= n_ctx <= cfg.n_ctx):
        problems.append(f"its data has sequences of {n_ctx!r} tokens but the model reads at most n_ctx = {cfg.n_ctx}")
    if problems:
        raise CheckpointError(f"{path}: the data spec contradicts the model config: " + "; ".join(problems)
                              + " (a hand-edited or mixed-up checkpoint?)")


def _load_state(model: AttnOnlyTransformer, state: dict, path: Path) -> None:
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict is a {type(state).__name__}, expected a dict of tensors")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config: missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
            got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{path}: {name} has shape {got}, the config expects {list(expected[name].shape)}")
        _check_finite(name, tensor, str(path))
    model.load_state_dict(state)
