"""Saving and loading toylab checkpoints.

A checkpoint is one ``torch.save`` file holding plain data only (tensors,
dicts, lists, strings, numbers), so it loads with ``weights_only=True`` and
no pickled code ever runs:

``{"format": "toylab-checkpoint", "format_version": 1, "toylab_version",
"torch_version", "config", "data_spec", "train_spec", "seed", "history",
"metrics", "state_dict", "prefix_state"}``

Files are written atomically (a temporary file in the same folder, then a
rename), so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toylab import __version__
from toylab.model import AttnOnlyTransformer, ModelConfig

FORMAT = "toylab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable toylab checkpoint."""


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


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; clean up on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


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
) -> Path:
    """Write ``model`` and its training record to ``path`` atomically; returns the path."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toylab_version": __version__,
        "torch_version": str(torch.__version__),
        "config": model.cfg.to_dict(),
        "data_spec": data_spec,
        "train_spec": train_spec,
        "seed": int(seed),
        "history": history or [],
        "metrics": metrics or {},
        "state_dict": _plain_state(model.state_dict()),
        "prefix_state": _plain_state(prefix_state) if prefix_state is not None else None,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError`
    for a corrupt, truncated or foreign one, saying what was expected.
    """
    path = Path(path)
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
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    model = AttnOnlyTransformer(cfg, seed=None)
    _load_state(model, payload["state_dict"], path)
    return Checkpoint(
        model=model.eval(),
        data_spec=payload["data_spec"],
        train_spec=payload["train_spec"],
        seed=payload["seed"],
        history=payload.get("history") or [],
        metrics=payload.get("metrics") or {},
        prefix_state=payload.get("prefix_state"),
        toylab_version=payload.get("toylab_version", ""),
        torch_version=payload.get("torch_version", ""),
        path=path,
    )


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
    model.load_state_dict(state)
