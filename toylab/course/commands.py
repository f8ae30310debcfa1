"""The course's commands: ``toylab grade`` (argument parsing, the score table, the JSON file),
``toylab grade-class`` (a class into a gradebook) and ``toylab release`` (the students' copy).

    toylab grade [--chapter N] [--json [FILE]] [--format toylab|gradescope] [--timeout S] [PATH]
    toylab grade-class SUBMISSIONS [--jobs N] [--out DIR] [--chapter N] [--timeout S]
    toylab release OUT

The grading itself is :func:`toylab.course.grading.grade`; this module turns a command
line into a call of it and writes what it returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from toylab.course.answers import repo_root
from toylab.course.grading import DEFAULT_TIMEOUT, check_timeout, grade
from toylab.course.scores import GRADESCOPE_VISIBILITY
from toylab.files import atomic_write, check_writable


def add_grade_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``grade`` command to an ``argparse`` subparsers object (see :mod:`toylab.cli`)."""
    p = subparsers.add_parser("grade", help="grade the exercises in a folder (default: exercises/)",
                              description="Run the graded tests against a folder of answers and print a score table.")
    p.add_argument("path", nargs="?", default=None, help="folder holding chNN_<topic>.py (default: exercises/)")
    p.add_argument("--chapter", type=int, default=None, help="grade one chapter only")
    p.add_argument("--json", nargs="?", const="", default=None, metavar="FILE",
                   help="also write the scores as JSON (default FILE: grades.json, or results.json with "
                        "--format gradescope)")
    p.add_argument("--format", choices=("toylab", "gradescope"), default="toylab",
                   help="the JSON file's format: toylab's own, or Gradescope's autograder results.json "
                        "(gradescope writes results.json even without --json)")
    p.add_argument("--visibility", choices=GRADESCOPE_VISIBILITY, default="visible",
                   help="with --format gradescope: when students see the tests (default %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per test (default %(default)s)")
    p.set_defaults(func=cmd_grade)
    return p


def add_course_parsers(subparsers) -> None:
    """Add ``grade``, ``grade-class`` and ``release`` to an ``argparse`` subparsers object."""
    add_grade_parser(subparsers)
    p = subparsers.add_parser("grade-class", help="grade a folder of student folders into one gradebook",
                              description="Grade SUBMISSIONS/<student>/chNN_<topic>.py for every student, each in "
                                          "their own contained workers; write gradebook.csv and gradebook.json.")
    p.add_argument("submissions", help="a folder holding one folder of answers per student")
    p.add_argument("--jobs", type=int, default=1, help="students graded at a time (default %(default)s)")
    p.add_argument("--out", default=".", help="folder for gradebook.csv and gradebook.json (default: here)")
    p.add_argument("--chapter", type=int, default=None, help="grade one chapter only")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per test (default %(default)s)")
    p.set_defaults(func=cmd_grade_class)
    p = subparsers.add_parser("release", help="write the students' copy of the course (no solutions, no hidden tests)")
    p.add_argument("out", help="a new or empty folder outside the repository")
    p.set_defaults(func=cmd_release)


def cmd_grade_class(args) -> int:
    """Exit status: 0 every student graded (whatever their scores), 2 the class could not be graded."""
    from toylab.course.classroom import grade_class

    try:
        check_timeout(args.timeout)
        out = Path(args.out).expanduser().resolve()
        subs = Path(args.submissions).expanduser().resolve()
        if out == subs or subs in out.parents:
            raise ValueError(f"--out {out} is inside the submissions folder: write the gradebook elsewhere")
        started = time.perf_counter()
        book = grade_class(subs, jobs=args.jobs, chapter=args.chapter, timeout=args.timeout)
        print(book.note)
        paths = book.write(out)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"toylab grade-class: error: {e}", file=sys.stderr)
        return 2
    n = len(book.students)
    took = time.perf_counter() - started
    print(f"graded {n} students in {took:.1f} s ({took / n:.1f} s per student, {args.jobs} at a time); "
          f"gradebook: {', '.join(map(str, paths))}")
    return 0


def cmd_release(args) -> int:
    from toylab.course.release import release

    try:
        info = release(args.out)
    except (OSError, ValueError, SyntaxError) as e:
        print(f"toylab release: error: {e}", file=sys.stderr)
        return 2
    n = sum(len(v) for v in info["hidden_tests"].values())
    print(f"students' copy written to {info['out']}: without solutions/ and without {n} hidden graded tests")
    return 0


def build_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``toylab grade`` arguments (without the word ``grade``)."""
    parser = argparse.ArgumentParser(prog="toylab")
    add_grade_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["grade", *argv])


def cmd_grade(args, select: str | None = None) -> int:
    """Exit status: 0 full marks, 1 some exercise failed, 2 the grader could not run
    (or could not write its JSON file). Everything that can be checked before
    grading (the timeout, where the JSON goes, pytest) is checked first."""
    fmt = getattr(args, "format", "toylab")
    json_path = args.json
    if json_path == "" or (json_path is None and fmt == "gradescope"):
        json_path = "results.json" if fmt == "gradescope" else "grades.json"
    try:
        check_timeout(args.timeout)
        if json_path is not None:
            if Path(json_path).suffix.lower() in (".py", ".pt"):
                raise ValueError(f"--json {json_path}: refusing to overwrite a {Path(json_path).suffix} file "
                                 f"with scores; give a .json path")
            check_writable(json_path, example="results.json" if fmt == "gradescope" else "grades.json")
        folder = Path(args.path) if args.path else repo_root() / "exercises"
        g = grade(folder, chapter=args.chapter, timeout=args.timeout, select=select, progress=True)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"toylab grade: error: {e}", file=sys.stderr)
        return 2
    print(f"graded {g.path} ({g.timeout:g} s per test)")
    print(f"{g.note}\n")
    print(g.table())
    if json_path is not None:
        data = g.to_gradescope(getattr(args, "visibility", "visible")) if fmt == "gradescope" else g.to_dict()
        try:
            out = atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))
        except OSError as e:
            print(f"toylab grade: error: the scores above could not be saved: {e}", file=sys.stderr)
            return 2
        print(f"\nscores written to {out}" + (" (Gradescope results.json format)" if fmt == "gradescope" else ""))
    return 0 if g.earned == g.max_points else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m toylab.course.commands [--chapter N] [--json [FILE]] [--timeout S] [PATH]``."""
    args = build_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
