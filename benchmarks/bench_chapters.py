"""How long each chapter takes to execute, as the book executes it.

Executes every ``chapters/ch*.ipynb`` (or the ones named), one at a time, with the
call ``.ci/book_execute.py`` makes (jupyter-cache's ``single_nb_execution``, the
notebook's folder as working directory, the timeout of ``_config.yml``), in a kernel
with one thread (``OMP_NUM_THREADS=1``; the chapters also set it themselves). The
executed notebooks are thrown away: nothing in ``chapters/`` changes.

For each chapter it prints the wall time, the CPU time of the kernel (its user +
system time, read from ``getrusage(RUSAGE_CHILDREN)`` once the kernel has exited),
and the wall time as a multiple of a reference workload measured in the same run:
``REF_MATMULS`` float32 ``512 x 512`` matmuls on one thread, timed before and after
the chapters (the mean of the two is the reference). The ratio moves less than the
seconds when the machine is loaded or slower, so it is the number to compare
between runs. The table ends with the totals.

    python benchmarks/bench_chapters.py                       # every chapter
    python benchmarks/bench_chapters.py ch06_superposition_and_saes ch10_text
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
REF_MATMULS = 400
KERNEL_STARTUP_TIMEOUT = 300  # as .ci/book_execute.py


def reference_seconds(n: int = 512, repeats: int = REF_MATMULS) -> float:
    """Wall seconds of ``repeats`` one-thread float32 ``n x n`` matmuls (after a warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(5):
            a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def execute(path: Path, timeout: int) -> dict:
    """Execute one notebook as the book does; ``{"wall", "cpu", "error"}``."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    result = single_nb_execution(nb, cwd=str(path.parent), timeout=timeout, allow_errors=False,
                                 meta_override=True, startup_timeout=KERNEL_STARTUP_TIMEOUT)
    wall = time.perf_counter() - t0
    err = None if result.err is None else f"{type(result.err).__name__}: {str(result.err)[:80]}"
    return {"wall": wall, "cpu": _children_cpu() - cpu0, "error": err}


def main(argv: list[str]) -> int:
    import yaml

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every kernel
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    config = yaml.safe_load((CHAPTERS / "_config.yml").read_text()).get("execute", {})
    timeout = int(config.get("timeout", 30))
    names = argv or sorted(p.stem for p in CHAPTERS.glob("ch*.ipynb"))
    paths = [CHAPTERS / f"{n}.ipynb" for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"bench_chapters: no such chapter: {', '.join(missing)}", file=sys.stderr)
        return 2
    ref_before = reference_seconds()
    rows = []
    for p in paths:
        rows.append((p.stem, execute(p, timeout)))
        print(f"  ran {p.stem}: {rows[-1][1]['wall']:.1f} s", file=sys.stderr, flush=True)
    ref = (ref_before + reference_seconds()) / 2
    print(f"reference: {REF_MATMULS} one-thread 512x512 float32 matmuls, {ref:.2f} s "
          f"(before {ref_before:.2f} s, after {2 * ref - ref_before:.2f} s)")
    print(f"{'chapter':40s} {'wall s':>7s} {'cpu s':>7s} {'x ref':>7s}")
    for name, r in rows:
        flag = "" if r["error"] is None else f"  FAILED {r['error']}"
        print(f"{name:40s} {r['wall']:7.1f} {r['cpu']:7.1f} {r['wall'] / ref:7.1f}{flag}")
    wall, cpu = sum(r["wall"] for _, r in rows), sum(r["cpu"] for _, r in rows)
    print(f"{'total':40s} {wall:7.1f} {cpu:7.1f} {wall / ref:7.1f}")
    return 1 if any(r["error"] for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
