"""The grader's side of the worker: start it contained, call into it, stop it and all it started.

:func:`remote_answers` returns a :class:`RemoteModule`: its functions send ``(name, args)`` to
a :class:`Worker`, the only process that imports the student's file (:mod:`toylab.course.worker`),
and decode the answer as plain data (:mod:`toylab.course.wire`). A worker is started

- in its own session and process group, with a scrubbed environment, a scratch working
  folder, umask 077, and resource limits (:class:`Limits`: CPU seconds, address space,
  file size, processes) plus a time limit on every call;
- when the grader is root: as an unused uid/gid (no passwd entry, no groups), in its own
  mount namespace in which every top-level entry of the repository except ``toylab/`` and the
  virtual environment (``solutions/``, ``tests/``, ``.git``, ...), the git folder of a
  worktree, the answers folder and anything in ``TOYLAB_HIDE`` is covered by an empty
  read-only tmpfs, and ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are private tmpfs. Where no
  mount namespace can be made, the uid is still dropped and :func:`containment_note` says what
  stays readable. Not root: none of this is possible and the note says so.

A worker that dies, hangs, answers garbage or leaves a process behind is killed (its session,
and as root every process of its uid) and the call fails with a sentence; the next call
starts a fresh worker.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from toylab.course import wire

LIMITS_ENV = "TOYLAB_WORKER_LIMITS"  # e.g. "cpu=60,mem=4096,fsize=16,nproc=64" (s, MiB, MiB, count)
UID_ENV = "TOYLAB_WORKER_UID"
HIDE_ENV = "TOYLAB_HIDE"
PIDS_ENV = "TOYLAB_WORKER_PIDS"  # the grader appends each worker's pid here, so its parent can end its session
_UID_BASE = 61000


@dataclasses.dataclass
class Limits:
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
                if os.stat(f"/proc/{name}").st_uid == uid and _state(int(name)) != "Z":
                    out.append(int(name))
            except OSError:
                pass
    return out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _session(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return -1


_uid_lock = threading.Lock()
_uids_taken: set[int] = set()


def pick_uid() -> int:
    """An unused uid (no passwd entry, no running process) for one grading's workers."""
    import pwd

    with _uid_lock:
        start = _UID_BASE + (os.getpid() * 7) % 3000
        for k in range(3000):
            uid = _UID_BASE + (start - _UID_BASE + k) % 3000
            if uid in _uids_taken:
                continue
            try:
                pwd.getpwuid(uid)
                continue
            except KeyError:
                pass
            if uid_processes(uid):
                continue
            _uids_taken.add(uid)
            return uid
    raise RuntimeError("no free uid for the grading worker")


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


def exposures(root: Path) -> list[tuple[str, str]]:
    """``(folder, entry)`` pairs the worker needs through a folder others may not enter (a Python
    under ``/root``): in its mount namespace each such folder becomes a tmpfs holding only ``entry``."""
    needed = {os.path.realpath(p) for p in (sys.executable, sys.prefix, sys.base_prefix, str(Path(root) / "toylab"),
                                            *[q for q in sys.path if q and os.path.isdir(q)])}
    out = []
    for p in sorted(needed):
        parts = Path(p).parts
        for i in range(1, len(parts)):
            d = os.path.join(*parts[:i])
            try:
                if not os.stat(d).st_mode & 0o001:
                    out.append((d, parts[i]))
                    break
            except OSError:
                break
    return list(dict.fromkeys(out))


def containment_note(uid: int | None) -> str:
    """One sentence on what the worker is kept from (printed by ``toylab grade``)."""
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


def _contain(limits: Limits, uid: int | None, hide: list[str], expose: list[tuple[str, str]]):
    import resource

    def setup():  # pragma: no cover - runs in the forked child, before exec
        os.umask(0o077)
        if uid is not None and hide is not None:
            libc = _libc()
            if libc.unshare(CLONE_NEWNS) == 0:
                _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
                fds = [(d, e, os.open(os.path.join(d, e), os.O_PATH)) for d, e in expose]
                for d in dict.fromkeys(d for d, _, _ in fds):
                    _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
                for d, e, fd in fds:
                    target = os.path.join(d, e)
                    if os.path.isdir(f"/proc/self/fd/{fd}"):
                        os.makedirs(target, exist_ok=True)
                    else:
                        open(target, "w").close()
                    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
                    os.close(fd)
                for p in hide:
                    if os.path.isdir(p):
                        _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
                    else:
                        _mount("/dev/null", p, None, MS_BIND, None)
                for p in ("/tmp", "/var/tmp", "/dev/shm"):
                    if os.path.isdir(p):
                        _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
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


_SIGNALS = {signal.SIGXCPU: "it used up its CPU time ({cpu} s)", signal.SIGXFSZ:
            "it wrote more than {fsize} MiB (printing too much?)", signal.SIGSEGV: "segmentation fault",
            signal.SIGKILL: "killed (SIGKILL: out of memory, or stopped from outside)",
            signal.SIGABRT: "aborted (SIGABRT)"}


class Worker:
    """One contained worker process, started lazily and again after it was stopped."""

    def __init__(self, limits: Limits | None = None, uid: int | None = None, hide: list[str] | None = None,
                 call_timeout: float = 60.0):
        self.limits = limits or Limits.from_env()
        self.uid, self.hide, self.call_timeout = uid, hide, call_timeout
        root = Path(__file__).resolve().parents[2]
        self.expose = exposures(root) if uid is not None and namespaces_available() else []
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.callbacks: dict[int, object] = {}
        self.depth = 0

    # ----------------------------------------------------------- life
    def start(self) -> None:
        """Start a fresh worker; the test's alarm is paused meanwhile (starting is not the student's time)."""
        paused = None
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            paused = signal.setitimer(signal.ITIMER_REAL, 0)[0]
        try:
            self._start()
        finally:
            if paused:
                signal.setitimer(signal.ITIMER_REAL, paused)

    def _start(self) -> None:
        root = Path(__file__).resolve().parents[2]
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        self.scratch = tempfile.mkdtemp(prefix="toylab-worker-")
        self.log = tempfile.TemporaryFile()
        if self.uid is not None:
            os.chown(self.scratch, self.uid, self.uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.scratch, "TMPDIR": self.scratch
               if not (self.uid is not None and namespaces_available()) else "/tmp", "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        code = (f"import sys; sys.path.insert(0, {str(root)!r}); import toylab.course.worker as w; "
                f"w.main({req_r}, {resp_w})")
        flags = ["-I", "-B"]
        if os.environ.get("PYTHONPYCACHEPREFIX"):
            flags += ["-X", f"pycache_prefix={os.environ['PYTHONPYCACHEPREFIX']}"]
        self.proc = subprocess.Popen([sys.executable, *flags, "-c", code], cwd=self.scratch, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     pass_fds=(req_r, resp_w), start_new_session=True,
                                     preexec_fn=_contain(self.limits, self.uid, self.hide, self.expose))
        os.close(req_r)
        os.close(resp_w)
        self.generation += 1
        pids = os.environ.get(PIDS_ENV)
        if pids:
            with open(pids, "a") as f:
                f.write(f"{self.proc.pid}\n")
        try:
            hello = wire.loads_plain(wire.recv_frame(self.resp_r, time.monotonic() + self.limits.startup_s,
                                                     self._alive))
        except (wire.WorkerGone, wire.WorkerLate, Exception) as e:
            tail = self._log_tail()
            self.stop()
            raise AssertionError(f"the process that runs your code did not start ({type(e).__name__}: {e}) "
                                 f"{tail}") from None
        if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
            self.stop()
            raise AssertionError("the process that runs your code did not start properly")

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            self.log.seek(0, 2)
            size = self.log.tell()
            self.log.seek(max(0, size - 400))
            return self.log.read().decode(errors="replace").strip().replace("\n", " | ")
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Kill the worker's session (and, as root, every process of its uid); remove its scratch."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:
            kill_uid(self.uid)
        self.proc.wait()
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)
        self.proc = None
        self.callbacks.clear()

    def _strays(self) -> list[int]:
        if self.proc is None:
            return []
        me = self.proc.pid
        if self.uid is not None:
            return [p for p in uid_processes(self.uid) if p != me]
        return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me and _session(int(n)) == me
                and _state(int(n)) != "Z"]

    def _death(self) -> str:
        code = self.proc.wait() if self.proc is not None else None
        if code is not None and code < 0:
            why = _SIGNALS.get(-code, f"signal {-code}").format(cpu=self.limits.cpu_s, fsize=self.limits.fsize_mib)
            return f"crashed: the process running your code was killed ({why}) while running it"
        return f"crashed: the process running your code exited with code {code} while running it"

    # ----------------------------------------------------------- calls
    def _callback_id(self, fn) -> int:
        for k, v in self.callbacks.items():
            if v is fn:
                return k
        k = len(self.callbacks) + 1
        self.callbacks[k] = fn
        return k

    def request(self, msg):
        """Send ``msg``, serve the worker's callbacks, return its ``("ok", ...)`` or ``("error", ...)``."""
        if self.proc is None:
            self.start()
        gen = self.generation
        self.depth += 1
        try:
            wire.send_frame(self.req_w, wire.dumps_to_worker(msg, self._callback_id))
            deadline = time.monotonic() + self.call_timeout
            while True:
                data = wire.recv_frame(self.resp_r, deadline, self._alive)
                try:
                    reply = wire.loads_plain(data)
                except Exception:  # noqa: BLE001 - not plain data (a pickle that would run code, garbage)
                    raise wire.WorkerGone("garbage") from None
                if not isinstance(reply, tuple) or not reply or reply[0] not in ("ok", "error", "callback"):
                    raise wire.WorkerGone("garbage")
                if reply[0] != "callback":
                    break
                self._serve_callback(reply)
            if self.depth == 1:
                strays = self._strays()
                if strays:
                    self.stop()
                    raise AssertionError("your code started another process that was still running after the "
                                         "call (fork/subprocess), which grading does not allow; it was stopped")
            return reply
        except wire.WorkerLate:
            self.stop()
            raise AssertionError(f"timed out after {self.call_timeout:g} s") from None
        except wire.WorkerGone as e:
            if str(e) == "garbage":
                why = "the process running your code sent an answer the grader cannot read"
            elif self._alive():
                why = "the process running your code stopped answering (it closed its pipe to the grader)"
            else:
                why = self._death()
            self.stop()
            raise AssertionError(why) from None
        except AssertionError:
            raise
        except BaseException:  # the test's alarm, Ctrl-C, an undecodable answer: the worker cannot go on
            if gen == self.generation:
                self.stop()
            raise
        finally:
            self.depth -= 1

    def _serve_callback(self, reply) -> None:
        _, ident, args, kwargs = reply
        fn = self.callbacks.get(int(ident))
        try:
            if fn is None:
                raise RuntimeError("the grader's function is no longer available")
            value = fn(*wire.decode(args, self.handle), **wire.decode(kwargs, self.handle))
            out = ("return", value)
        except Exception as e:  # noqa: BLE001 - the test's own function failed: the student's code sees it
            out = ("raise", type(e).__name__, str(e))
        wire.send_frame(self.req_w, wire.dumps_to_worker(out, self._callback_id))

    def handle(self, ident: int):
        from toylab.course.remote import RemoteFunction

        return RemoteFunction(self, ("handle", ident), f"<a function your code returned (#{ident})>")
