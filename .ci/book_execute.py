"""Execute the book's notebooks in parallel into jupyter-book's execution cache.

    python .ci/book_execute.py CHAPTERS_DIR [JOBS]

jupyter-book 1.x (myst-nb, ``execute_notebooks: cache``) executes the notebooks
one after another while it builds, so a 2-core machine leaves a core idle for
most of a from-scratch build. This runs first, from ``.ci/book.sh``: every
chapter notebook that has no matching record in ``CHAPTERS_DIR/_build/.jupyter_cache``
is executed in its own process (``JOBS`` at a time, default: the number of
CPUs) with the same call myst-nb makes (jupyter-cache's ``single_nb_execution``,
the notebook's folder as the working directory, the timeout of
``_config.yml``), and the executed notebook is stored in the cache the way
myst-nb stores it. The build then finds every notebook in the cache and
executes none. A notebook that fails here is not cached; the build executes it
again and reports the error as it always does (warnings are errors there).
Outputs are the same either way: the notebooks are seeded and set their own
thread counts.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution

# seconds a kernel may take to start; see the Makefile's NBVAL_OPTS, which allow the same
KERNEL_STARTUP_TIMEOUT = 300


def _execute(path: str, timeout: int) -> tuple[str, str | None, float, str | None]:
    """Run one notebook; returns (path, executed notebook as JSON or None, seconds, error)."""
    nb = nbformat.read(path, as_version=4)
    # startup_timeout: nbclient waits 60 s for a new kernel by default, which a machine busy with
    # other work (CI's kernel passes run beside the book) can exceed; KERNEL_STARTUP_TIMEOUT allows more.
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False,
                                 meta_override=True, startup_timeout=KERNEL_STARTUP_TIMEOUT)
    if result.err is not None:
        return path, None, result.time, f"{type(result.err).__name__}: {result.err}"
    return path, nbformat.writes(nb), result.time, None


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    book = Path(sys.argv[1]).resolve()
    jobs = sys.argv[2] if len(sys.argv) == 3 else str(os.cpu_count() or 1)
    if not jobs.isdigit() or int(jobs) < 1:
        print(f"book_execute: JOBS (BOOK_JOBS) must be a positive integer, got {jobs!r}", file=sys.stderr)
        return 2
    jobs = int(jobs)
    config = yaml.safe_load((book / "_config.yml").read_text()).get("execute", {})
    if config.get("execute_notebooks") != "cache" or config.get("run_in_temp"):
        print("book_execute: _config.yml does not use the execution cache in place; nothing to do")
        return 0
    timeout = int(config.get("timeout", 30))
    cache = get_cache(str(book / "_build" / ".jupyter_cache"))
    todo = []
    for path in sorted(book.glob("*.ipynb")):
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:  # no executed notebook with these code cells in the cache
            todo.append(str(path))
    print(f"== executing {len(todo)} notebooks, {jobs} at a time, into the build's cache")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for path, executed, seconds, error in pool.map(_execute, todo, [timeout] * len(todo)):
            name = Path(path).name
            if error is not None:
                print(f"   {name}: failed after {seconds:.1f} s ({error}); the build will run it again")
                continue
            record = cache.add_nb_to_project(path)
            cache.cache_notebook_bundle(CacheBundleIn(nbformat.reads(executed, as_version=4), record.uri,
                                                      data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            print(f"   {name}: {seconds:.1f} s")
    print(f"== notebooks executed in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
