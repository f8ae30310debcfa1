"""Containment of the grading worker: who it runs as, what it can see, its limits, how it ends.

- :func:`worker_uid` / :func:`pick_uid`: an unused uid (no passwd entry) for one grading when the
  grader is root, ``None`` when it is not;
- :func:`hidden_paths`, :func:`exposures`, :func:`namespaces_available`: the worker's mount
  namespace (the repository hidden except ``toylab/`` and the virtual environment; folders others
  cannot enter that hold the interpreter re-exposed alone; private ``/tmp``);
- :func:`preexec`: what the forked worker does before ``exec`` (umask, namespace, rlimits,
  dropping to the uid), with :class:`Limits`;
- :func:`kill_uid`, :func:`kill_session`, :func:`uid_processes`: ending the worker and anything
  it started; :func:`containment_note`: the sentence ``toylab grade`` prints.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

LIMITS_ENV = "TOYLAB_WORKER_LIMITS"  # e.g. "cpu=60,mem=4096,fsize=16,nproc=64" (s, MiB, MiB, count)
UID_ENV = "TOYLAB_WORKER_UID"
HIDE_ENV = "TOYLAB_HIDE"
PIDS_ENV = "TOYLAB_WORKER_PIDS"  # the grader appends each worker's pid here, so its parent can end its session
_UID_BASE = 61000


@dataclasses.dataclass
class Limits:
    """The worker's resource limits (per process: CPU seconds over its life, address space, file size;
    processes of its uid), read from ``$TOYLAB_WORKER_LIMITS`` by :meth:`from_env`."""
    cpu_s: int = 900
    memory_mib: int = 6144
    fsize_mib: int = 16
    nproc: int = 64
    startup_s: float = 120.0

    @classmethod
    def from_env(cls) -> "Limits":
        lim = cls()
        for part in filter(None, os.environ.get(LIMITS_ENV, "").split(",")):
            key, _, val = part.partition("=")
            field = {"cpu": "cpu_s", "mem": "memory_mib", "fsize": "fsize_mib", "nproc": "nproc"}.get(key.strip())
            if field:
                setattr(lim, field, int(val))
        return lim


# ------------------------------------------------------------ who the worker runs as
def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def uid_processes(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and state_of(int(name)) != "Z":
                    out.append(int(name))
            except OSError:
                pass
    return out


def state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def session_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return -1


_uid_lock = threading.Lock()
_uids_taken: dict[int, int] = {}  # uid -> the fd of its lock file, held while a grading uses it


def pick_uid() -> int:
    """An unused uid (no passwd entry, no running process) for one grading's workers, locked
    (``/tmp/toylab-uid-N.lock``, flock) so that two gradings at once never share one."""
    import fcntl
    import pwd

    with _uid_lock:
        start = (os.getpid() * 7) % 3000
        for k in range(3000):
            uid = _UID_BASE + (start + k) % 3000
            if uid in _uids_taken:
                continue
            try:
                pwd.getpwuid(uid)
                continue
            except KeyError:
                pass
            fd = os.open(f"/tmp/toylab-uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if uid_processes(uid):
                os.close(fd)
                continue
            _uids_taken[uid] = fd
            return uid
    raise RuntimeError("no free uid for the grading worker")


def release_uid(uid: int) -> None:
    """Give back a uid from :func:`pick_uid` (after :func:`kill_uid`)."""
    with _uid_lock:
        fd = _uids_taken.pop(uid, None)
    if fd is not None:
        os.close(fd)


def worker_uid(root: Path) -> int | None:
    """The uid a grading's workers run as: a fresh unused one when the grader is root (``$TOYLAB_WORKER_UID``
    if set), ``None`` when it is not, or when the worker could not even start Python as another user
    (an interpreter in a folder others cannot enter, and no mount namespace to expose it)."""
    if not is_root():
        return None
    if os.environ.get(UID_ENV):
        return int(os.environ[UID_ENV])
    if not namespaces_available() and exposures(root):
        return None
    return pick_uid()


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def kill_uid(uid: int, rounds: int = 5) -> None:
    """SIGKILL every process of ``uid`` (as that uid: ``kill(-1)``), until none is left."""
    for _ in range(rounds):
        if not uid_processes(uid):
            return
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.02)


_LIBC = None
CLONE_NEWNS, MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 1, 2, 4, 4096, 16384, 1 << 18


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_ns_ok: bool | None = None


def namespaces_available() -> bool:
    """Whether this process may make a mount namespace (root with CAP_SYS_ADMIN; cached)."""
    global _ns_ok
    if _ns_ok is None:
        if not is_root() or not sys.platform.startswith("linux"):
            _ns_ok = False
        else:
            libc = _libc()
            pid = os.fork()
            if pid == 0:  # pragma: no cover
                os._exit(0 if libc.unshare(CLONE_NEWNS) == 0 else 1)
            _ns_ok = os.waitpid(pid, 0)[1] == 0
    return _ns_ok


def hidden_paths(root: Path, extra=()) -> list[str]:
    """What the worker must not see: the repository's top-level entries except ``toylab`` and the
    virtual environment, a worktree's git folder, ``extra`` and ``$TOYLAB_HIDE``."""
    root = Path(root).resolve()
    keep = {root / "toylab"}
    for prefix in {sys.prefix, sys.base_prefix, sys.executable}:
        p = Path(prefix).resolve()
        if root in p.parents:
            keep.add(root / p.relative_to(root).parts[0])
    out = [str(p) for p in sorted(root.iterdir()) if p not in keep and not p.is_symlink()]
    git = root / ".git"
    if git.is_file():
        text = git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            gd = Path(text.split(":", 1)[1].strip())
            common = gd.parent.parent if gd.parent.name == "worktrees" else gd
            out.append(str(common.resolve()))
    out += [str(Path(p).resolve()) for p in extra]
    out += [p for p in os.environ.get(HIDE_ENV, "").split(os.pathsep) if p]
    return [p for p in dict.fromkeys(out) if os.path.exists(p)]


PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def exposures(root: Path) -> list[str]:
    """What the worker needs (the interpreter, its prefixes, ``sys.path``, ``toylab/``) that its mount
    namespace would otherwise hide: paths under the private ``/tmp`` and friends, or under a folder
    others may not enter (a Python in ``/root``). Each is bound back alone (see :func:`preexec`)."""
    needed = {os.path.realpath(p) for p in (sys.executable, sys.prefix, sys.base_prefix, str(Path(root) / "toylab"),
                                            *[q for q in sys.path if q and os.path.isdir(q)])}
    out = []
    for p in sorted(needed):
        if any(p == d or p.startswith(d + "/") for d in PRIVATE_DIRS):
            out.append(p)
            continue
        parts = Path(p).parts
        for i in range(1, len(parts)):
            try:
                if not os.stat(os.path.join(*parts[:i])).st_mode & 0o001:
                    out.append(p)
                    break
            except OSError:
                break
    # a path inside another one already bound needs nothing more
    return [p for p in out if not any(p != q and p.startswith(q + "/") for q in out)]


def _bind_back(path: str, fd: int, covered: set) -> None:
    """In the namespace: make ``path`` exist (folders others cannot enter become a tmpfs) and bind ``fd`` to it."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        d = os.path.join(*parts[:i])
        if not os.path.exists(d):
            os.mkdir(d)
            os.chmod(d, 0o755)  # the umask is 077 by now
        elif d not in covered and not os.stat(d).st_mode & 0o001:
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
            covered.add(d)
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
        open(path, "w").close()
    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)


def containment_note(uid: int | None) -> str:
    """One sentence on what the worker is kept from (printed by ``toylab grade``)."""
    if uid is None and is_root():
        return ("note: the worker running the answers could not drop its privileges (Python lies in a folder other "
                "users cannot enter, and no mount namespace could be made to expose it): it runs as root and can read "
                "and write what the grader can; only a session, limits and a time limit contain it")
    if uid is None:
        return ("note: the grader is not root, so the worker running the answers could not drop its privileges: "
                "it runs as you and can read solutions/ and the hidden tests and write what you can (a session, "
                "limits and a time limit are all that contain it; grade as root, e.g. in a container, to protect them)")
    if not namespaces_available():
        return (f"note: the worker runs as uid {uid} (unprivileged), but no mount namespace could be made, so it "
                "can read world-readable files, solutions/ and the hidden tests among them")
    return (f"the worker runs as uid {uid} (unprivileged) in its own mount namespace: solutions/, tests/ and the "
            "submissions are hidden from it, /tmp is private to it")


def _mount(src, target, fstype, flags, data) -> None:
    libc = _libc()
    r = libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags,
                   data and data.encode())
    if r != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def preexec(limits: Limits, uid: int | None, hide: list[str] | None, expose: list[str]):
    """The function the forked worker runs before ``exec``."""
    import resource

    def setup():  # pragma: no cover - runs in the forked child, before exec
        os.umask(0o077)
        if uid is not None and hide is not None:
            libc = _libc()
            if libc.unshare(CLONE_NEWNS) == 0:
                _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
                fds = [(p, os.open(p, os.O_PATH)) for p in expose]
                for d in PRIVATE_DIRS:
                    if os.path.isdir(d):
                        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
                covered: set = set(PRIVATE_DIRS)
                for p, fd in fds:
                    _bind_back(p, fd, covered)
                    os.close(fd)
                for p in hide:
                    if not os.path.lexists(p):
                        continue  # under a private folder now: not there at all
                    if os.path.isdir(p):
                        _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
                    else:
                        _mount("/dev/null", p, None, MS_BIND, None)
        mib = 1 << 20
        for res, val in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_AS, limits.memory_mib * mib),
                         (resource.RLIMIT_FSIZE, limits.fsize_mib * mib), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (val, val))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return setup
