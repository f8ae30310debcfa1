"""The grader's side of the worker: start it contained, call into it, stop it and all it started.

(What containment means in detail, uids, mount namespace and limits, is :mod:`toylab.course.contain`.)

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

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from toylab.course import wire
from toylab.course.contain import (PIDS_ENV, Limits, exposures, kill_uid, namespaces_available, preexec,
                                   session_of, state_of, uid_processes)

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
        self._thread: threading.Thread | None = None
        self.closed = False
        self.handle_factory = None

    # ----------------------------------------------------------- life
    def start(self) -> None:
        """Have a started worker (waiting for one :meth:`prestart` began); the test's alarm is paused
        meanwhile: starting Python and torch is not the student's time."""
        paused = None
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            paused = signal.setitimer(signal.ITIMER_REAL, 0)[0]
        try:
            thread, self._thread = self._thread, None
            if thread is not None:
                thread.join()
            if self.proc is None:
                self._start()
        finally:
            if paused:
                signal.setitimer(signal.ITIMER_REAL, paused)

    def ready(self) -> None:
        """Make sure a worker is started (and no background start is still under way)."""
        if self._thread is not None or self.proc is None:
            self.start()

    def prestart(self) -> None:
        """Start a worker in the background, so that the next call finds it ready."""
        if self.proc is None and self._thread is None and not self.closed:
            def run():
                try:
                    self._start()
                except AssertionError:
                    pass  # the next call starts one itself and reports what goes wrong

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop for good (no background restart)."""
        self.closed = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.stop()

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
        try:
            self.proc = subprocess.Popen([sys.executable, *flags, "-c", code], cwd=self.scratch, env=env,
                                         stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                         pass_fds=(req_r, resp_w), start_new_session=True,
                                         preexec_fn=preexec(self.limits, self.uid, self.hide, self.expose))
        except (OSError, subprocess.SubprocessError) as e:  # nothing started: leave nothing behind
            import shutil

            for fd in (req_r, resp_w, self.req_w, self.resp_r):
                os.close(fd)
            self.log.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise AssertionError(f"the process that runs your code could not be started: {e}") from None
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

    def _still_running(self, grace_s: float = 2.0) -> bool:
        """Whether the worker is alive ``grace_s`` after its pipe closed (a process that is
        exiting closes its pipes a moment before it can be reaped: wait for that moment)."""
        if self.proc is None:
            return False
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return True
        return False

    def _log_tail(self) -> str:
        try:
            self.log.seek(0, 2)
            size = self.log.tell()
            self.log.seek(max(0, size - 400))
            return self.log.read().decode(errors="replace").strip().replace("\n", " | ")
        except (OSError, ValueError):
            return ""

    def stop(self, restart: bool = False) -> None:
        """Kill the worker's session (and, as root, every process of its uid); remove its scratch.
        ``restart``: start the next worker in the background at once."""
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
        if restart:
            self.prestart()

    def _strays(self) -> list[int]:
        if self.proc is None:
            return []
        me = self.proc.pid
        if self.uid is not None:
            return [p for p in uid_processes(self.uid) if p != me]
        return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me and session_of(int(n)) == me
                and state_of(int(n)) != "Z"]

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
        self.ready()
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
                    self.stop(restart=True)
                    raise AssertionError("your code started another process that was still running after the "
                                         "call (fork/subprocess), which grading does not allow; it was stopped")
            return reply
        except wire.WorkerLate:
            self.stop(restart=True)
            raise AssertionError(f"timed out after {self.call_timeout:g} s") from None
        except wire.WorkerGone as e:
            if str(e) == "garbage":
                why = "the process running your code sent an answer the grader cannot read"
            elif self._still_running():
                why = "the process running your code stopped answering (it closed its pipe to the grader)"
            else:
                why = self._death()
            self.stop(restart=True)
            raise AssertionError(why) from None
        except AssertionError:
            raise
        except BaseException:  # the test's alarm, Ctrl-C, an undecodable answer: the worker cannot go on
            if gen == self.generation:
                self.stop(restart=True)
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
        """The grader's stand-in for callable ``ident`` of the worker (``handle_factory``, set by
        :mod:`toylab.course.remote`, builds it)."""
        return self.handle_factory(self, ident)
