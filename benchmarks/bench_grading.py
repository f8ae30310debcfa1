"""Grading speed: the contained worker against the in-process grader it replaced, in the same run.

    python benchmarks/bench_grading.py [--class-size 30] [--broken 3] [--jobs 2] [--class-chapter N] [--skip-class]

Prints

1. the whole course (all 12 chapters of ``solutions/``, copied to a temporary folder) graded by
   ``toylab.course.grading.grade``, the student's code in the contained worker; and the same
   graded tests run the old way, in one pytest process that imports the answers itself (the
   grader's own child, ``grading._child_main``, on the trusted ``solutions/``: exactly what
   ``toylab grade`` did before the worker). Their ratio (goal: at most 1.5).
2. a class of ``--class-size`` copies of ``solutions/`` of which ``--broken`` are broken (one
   answer that crashes its process, one wrong answer, one file that does not import), graded by
   ``grade-class`` with ``--jobs``: the wall time, the time per student and the scores.
   ``--class-chapter N`` grades only chapter N per student (a full course per student takes
   about as long as step 1).

The machine's load changes both numbers; run it on an idle machine for timings to quote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toylab.course import grading  # noqa: E402
from toylab.course.answers import ANSWERS_ENV, ISOLATE_ENV, TIMEOUT_ENV  # noqa: E402
from toylab.course.classroom import grade_class  # noqa: E402

CHAPTERS = sorted(p.name for p in (ROOT / "solutions").glob("ch*.py"))


def copy_solutions(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in CHAPTERS:
        shutil.copy(ROOT / "solutions" / name, folder / name)
    return folder


def in_process(timeout: float) -> tuple[float, int, int]:
    """The old way: one pytest process that imports solutions/ itself; (seconds, passed, tests)."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        args = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(ROOT), "-W", "ignore",
                *map(str, grading.graded_test_files(None, ROOT))]
        env = dict(os.environ, **{ANSWERS_ENV: str(ROOT / "solutions"), TIMEOUT_ENV: str(timeout),
                                  "PYTHONDONTWRITEBYTECODE": "1"})
        env.pop(ISOLATE_ENV, None)
        code = f"import sys, toylab.course.grading as g; sys.exit(g._child_main({str(events)!r}, {args!r}))"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        took = time.perf_counter() - t0
        results = [json.loads(x) for x in events.read_text().splitlines() if '"result"' in x]
    return took, sum(r["passed"] for r in results), len(results)


def break_copies(folders: list[Path]) -> None:
    crash = "\n\ndef top_k_successors(table, token, k):\n    import os\n    os._exit(3)\n"
    wrong = "\n\ndef top_k_successors(table, token, k):\n    return table[token].argsort()[:k]\n"
    for folder, tail in zip(folders, (crash, wrong, None)):
        f = folder / "ch01_zero_layers.py"
        f.write_text(f.read_text() + tail if tail else "def broken(:\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--class-size", type=int, default=30)
    ap.add_argument("--broken", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--class-chapter", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--skip-class", action="store_true")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        folder = copy_solutions(tmp / "solutions-copy")
        t0 = time.perf_counter()
        g = grading.grade(folder, timeout=args.timeout)
        worker_s = time.perf_counter() - t0
        old_s, passed, n = in_process(args.timeout)
        print(f"\n1. the whole course ({len(CHAPTERS)} chapters, {len(g.tests)} graded tests) of solutions/")
        print(f"   in the contained worker : {worker_s:7.1f} s   {g.earned}/{g.max_points} points")
        print(f"   in-process (old grader) : {old_s:7.1f} s   {passed}/{n} tests passed")
        print(f"   ratio worker / old      : {worker_s / old_s:7.2f}   (goal <= 1.5)")
        print(f"   {g.note}")
        if args.skip_class:
            return
        subs = tmp / "class"
        students = [copy_solutions(subs / f"student{i:02d}") for i in range(args.class_size)]
        break_copies(students[: args.broken])
        what = f"chapter {args.class_chapter}" if args.class_chapter is not None else "the whole course"
        t0 = time.perf_counter()
        book = grade_class(subs, jobs=args.jobs, progress=False, echo=None, chapter=args.class_chapter,
                           timeout=args.timeout)
        wall = time.perf_counter() - t0
        per = [s.seconds for s in book.students]
        print(f"\n2. a class of {args.class_size} copies of solutions/ ({args.broken} broken), {what} each, "
              f"--jobs {args.jobs}")
        print(f"   wall {wall:.1f} s, {wall / len(per):.1f} s per student of wall time; each student's own grading "
              f"{min(per):.1f} .. {max(per):.1f} s (mean {sum(per) / len(per):.1f} s)")
        full = sorted({(s.earned, s.max_points) for s in book.students[args.broken:]})
        print(f"   scores: intact students {full}; broken ones "
              f"{[(s.student, s.earned, s.max_points) for s in book.students[: args.broken]]}")


if __name__ == "__main__":
    main()
