"""Files written atomically: a temporary file in the same folder, then a rename.

An interrupted or failed write (a full disk, a read-only folder, a folder at the path)
never leaves a half-written file, and the file already at the path survives it: the
failure is a :class:`SaveError` that says what went wrong. Temporary files
``.NAME.PID.XXXX.tmp`` that a killed write left behind are removed by the next write
into the same folder (when their process is gone, or they are over an hour old).
Checkpoints, SAEs, the attention viewer's pages and the grader's files are all written
this way.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

STALE_TMP_SECONDS = 3600  # a temporary file this old is left from a killed save


class SaveError(OSError):
    """A checkpoint (or other file) could not be written; any existing file at the path is untouched."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def check_writable(path: str | os.PathLike, example: str = "model.pt") -> Path:
    """Raise :class:`SaveError` now if ``path`` cannot be written as a file (a folder,
    a read-only or missing-and-uncreatable folder); used before long work."""
    path = Path(path)
    if path.is_dir():
        raise SaveError(errno.EISDIR, f"{path} is a folder; give a file path such as {path / example}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SaveError(errno.ENOTDIR, f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SaveError(errno.EACCES, f"cannot write {path}: the folder {parent} is not writable")
    if path.exists() and not os.access(path.parent, os.W_OK):
        raise SaveError(errno.EACCES, f"cannot write {path}: the folder {path.parent} is not writable")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def clean_stale_tmp(path: str | os.PathLike, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove the temporary files ``.NAME.*.tmp`` that killed saves of ``path`` left.

    A file is stale when the process id in its name is not running, or (for
    names without a pid) it is older than ``max_age`` seconds. Returns the
    removed paths; errors while cleaning are ignored (cleaning is best effort).
    """
    path = Path(path)
    removed = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        middle = tmp.name[len(path.name) + 2:-len(".tmp")]
        pid_part = middle.split(".", 1)[0]
        try:
            if pid_part.isdigit() and "." in middle:
                stale = int(pid_part) != os.getpid() and not _pid_alive(int(pid_part))
            else:
                stale = False
            stale = stale or now - tmp.stat().st_mtime > max_age
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def error_reason(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    elif "enforce fail" in text or "inline_container" in text:  # torch's zip writer on a full disk
        text = f"torch could not write the file (full disk?): {text.splitlines()[0][:120]}"
    return text.splitlines()[0] if text else type(e).__name__


def _make_tmp(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; clean up on failure.

    Any failure (a folder at ``path``, a read-only folder, a full disk) raises
    :class:`SaveError` saying what went wrong; the file already at ``path`` is
    then untouched.
    """
    return atomic_write_many([(Path(path), write)])[0]


def atomic_write_many(items: list[tuple[Path, Callable[[str], object]]],
                      after_write: Callable[[list[str]], None] | None = None) -> list[Path]:
    """Write every ``(path, write)`` to a temporary file first, then rename them all.

    ``after_write(tmp_paths)`` runs once every temporary file is complete and
    before the first rename (it may write more into the later ones: this is how
    a metadata file records the hash of the checkpoint's exact bytes).
    """
    paths = [check_writable(Path(p)) for p, _ in items]
    tmps: list[str] = []
    try:
        for path, (_, write) in zip(paths, items):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                clean_stale_tmp(path)
                tmps.append(_make_tmp(path))
                write(tmps[-1])
            except SaveError:
                raise
            except Exception as e:
                raise SaveError(getattr(e, "errno", None) or errno.EIO,
                                f"could not write {path}: {error_reason(e)} (an existing file there is untouched)") from e
        if after_write is not None:
            try:
                after_write(tmps)
            except Exception as e:
                raise SaveError(getattr(e, "errno", None) or errno.EIO,
                                f"could not write {paths[-1]}: {error_reason(e)} (existing files are untouched)") from e
        for path, tmp in zip(paths, tmps):
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise SaveError(e.errno, f"could not write {path}: {error_reason(e)}") from e
    except BaseException:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return paths


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
