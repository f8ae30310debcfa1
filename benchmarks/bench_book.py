"""How long the textbook takes to build, from scratch and cached.

Runs ``.ci/book.sh`` three ways in one session and prints the wall times
next to the sum of the chapters' own execution times (each notebook run once
with nbclient, the floor for a from-scratch build):

1. from scratch (``BOOK_CLEAN=all``: no notebook cache, no HTML),
2. a cached rebuild after removing the HTML (``BOOK_CLEAN=1``),
3. a cached rebuild with nothing removed.

Targets (issue 5): from scratch <= 5 min, cached <= 30 s, on a 2-core machine.

    python benchmarks/bench_book.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(clean: str) -> float:
    env = dict(os.environ, BOOK_CLEAN=clean)
    t0 = time.perf_counter()
    subprocess.run(["bash", str(ROOT / ".ci" / "book.sh"), sys.executable], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def execute_notebooks() -> dict[str, float]:
    import nbformat
    from nbclient import NotebookClient

    times = {}
    for path in sorted((ROOT / "chapters").glob("ch*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        times[path.name] = time.perf_counter() - t0
    return times


def main() -> None:
    per_nb = execute_notebooks()
    for name, sec in per_nb.items():
        print(f"  {name:40s} {sec:6.1f} s to execute")
    floor = sum(per_nb.values())
    scratch = build("all")
    cached_html = build("1")
    cached = build("0")
    print(f"\nsum of notebook execution times      {floor:6.1f} s")
    print(f"from scratch (BOOK_CLEAN=all)         {scratch:6.1f} s  ({scratch / floor:.2f}x the notebooks; target <= 300 s)")
    print(f"cached, HTML removed (BOOK_CLEAN=1)   {cached_html:6.1f} s  (target <= 30 s)")
    print(f"cached, nothing removed               {cached:6.1f} s  (target <= 30 s)")


if __name__ == "__main__":
    main()
