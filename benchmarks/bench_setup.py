"""How long a newcomer waits: environment creation, the book, the test suite.

Clones this repository (its committed HEAD) into a fresh temporary folder and
times, each in its own child process:

1. the environment: ``make .venv/.test`` (torch pinned, installed with pip;
   the rest with uv when the Makefile can get it, else pip). ``--installer both``
   does it twice in two clones, once as ``INSTALLER=pip``, for the ratio;
2. the book: ``.ci/book.sh`` from scratch (``BOOK_CLEAN=all``), as ``make book``
   runs it (the model check and the Chromium check not included);
3. the tests: ``make test`` (library tests, graded exercises, nbval).

For each it prints the wall time and the peak resident memory of the largest
process it ran (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, read in a wrapper
process so each step is measured alone). Targets (issue 12): environment
<= 60 s with a warm package cache, book <= 3 min, tests <= 4 min, memory <= 4 GB.

    python benchmarks/bench_setup.py                 # everything (many minutes)
    python benchmarks/bench_setup.py --quick         # environment, one chapter, one test file
    python benchmarks/bench_setup.py --only env --installer both
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs argv, then prints the peak RSS (KiB on Linux) of the largest process it waited for.
_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def timed(argv: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``argv`` in ``cwd``; returns ``{"seconds", "rc", "maxrss_mib"}``. Output goes to ``log``."""
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=out, text=True)
    seconds = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if log is not None:
        log.write_text("\n".join(lines[:-1]) + "\n" + log.read_text())
    try:
        info = json.loads(lines[-1])
    except (IndexError, ValueError):
        info = {"rc": proc.returncode, "maxrss_kib": 0}
    return {"seconds": seconds, "rc": info["rc"], "maxrss_mib": info["maxrss_kib"] / 1024}


def fresh_clone(where: Path, name: str) -> Path:
    dest = where / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def report(label: str, r: dict, target: str = "") -> None:
    status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']})"
    print(f"  {label:36s} {r['seconds']:7.1f} s   peak RSS {r['maxrss_mib']:7.0f} MiB   {status}"
          + (f"   target {target}" if target else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--installer", choices=("auto", "pip", "both"), default="auto",
                        help="auto: uv when the Makefile can get it (default); both: also time pip alone")
    parser.add_argument("--only", choices=("env", "book", "test"), action="append",
                        help="run only these steps (repeatable); default all")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: the environment, the first chapter only, one test file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clones (their logs are there)")
    args = parser.parse_args()
    steps = set(args.only or ("env", "book", "test"))

    tmp = Path(tempfile.mkdtemp(prefix="toylab-setup-"))
    print(f"fresh clones of {ROOT} (HEAD) in {tmp}; logs beside them", flush=True)
    env = dict(os.environ)
    try:
        installers = ["auto", "pip"] if args.installer == "both" else [args.installer]
        clone = None
        for installer in installers:
            c = fresh_clone(tmp, f"clone-{installer}")
            clone = clone or c
            r = timed(["make", ".venv/.test", f"INSTALLER={installer}"], c, env, tmp / f"env-{installer}.log")
            uv = (c / ".venv" / "bin" / "uv").exists() and installer == "auto"
            report(f"environment ({'uv' if uv else 'pip'}{', forced' if installer == 'pip' else ''})", r, "<= 60 s")
            if r["rc"] != 0:
                print(f"  see {tmp / f'env-{installer}.log'}")
                return
        if clone is None:
            return
        py = str(clone / ".venv" / "bin" / "python")

        if "book" in steps:
            r = timed(["make", ".venv/.book"], clone, env, tmp / "book-env.log")
            report("environment for the book (extra)", r)
            if args.quick:
                chapters = sorted((clone / "chapters").glob("ch*.ipynb"))[:1]
                code = ("import sys, nbformat; from nbclient import NotebookClient\n"
                        "for p in sys.argv[1:]:\n"
                        "    nb = nbformat.read(p, as_version=4)\n"
                        "    NotebookClient(nb, timeout=600, kernel_name='python3',\n"
                        "                   resources={'metadata': {'path': str(__import__('pathlib').Path(p).parent)}}).execute()\n")
                r = timed([py, "-c", code, *map(str, chapters)], clone, env, tmp / "book.log")
                report(f"book: execute {chapters[0].name[:5]} only", r)
            else:
                r = timed(["bash", ".ci/book.sh", py], clone, dict(env, BOOK_CLEAN="all"), tmp / "book.log")
                report("book from scratch (.ci/book.sh)", r, "<= 180 s")

        if "test" in steps:
            if args.quick:
                r = timed([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_model.py"], clone, env,
                          tmp / "test.log")
                report("tests: tests/test_model.py only", r)
            else:
                r = timed(["make", "test"], clone, env, tmp / "test.log")
                report("make test (after set-up)", r, "<= 240 s")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
