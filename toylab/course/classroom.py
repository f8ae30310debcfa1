"""``toylab grade-class SUBMISSIONS --jobs N``: a whole class into one gradebook.

``SUBMISSIONS`` holds one folder per student (``SUBMISSIONS/<student>/chNN_<topic>.py``). Each
student is graded by :func:`toylab.course.grading.grade` on its own: its own pytest process and
its own workers under its own unused uid (as root), with the whole ``SUBMISSIONS`` folder hidden
from the worker, so no student can read another's files, signal another's worker or change
another's score. ``jobs`` students are graded at a time. An entry that is a symbolic link, or a
student whose grading fails outright, gets a row saying so and no points.

The gradebook (:class:`Gradebook`): ``gradebook.csv`` (``student, chapter, exercise, earned,
max, passed, message``; one row per student and exercise, then a ``total`` row per student)
and ``gradebook.json`` (``{"students": {name: {"earned", "max", "seconds", "error",
"exercises": [...]}}}``), both written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StudentGrade:
    student: str
    seconds: float = 0.0
    earned: int = 0
    max_points: int = 0
    exercises: list[dict] = field(default_factory=list)
    error: str = ""


@dataclass
class Gradebook:
    students: list[StudentGrade] = field(default_factory=list)
    note: str = ""

    def rows(self) -> list[dict]:
        out = []
        for s in self.students:
            for r in s.exercises:
                out.append({"student": s.student, "chapter": r["chapter"], "exercise": r["exercise"],
                            "earned": r["earned"], "max": r["max"], "passed": r["passed"], "message": r["message"]})
            out.append({"student": s.student, "chapter": "total", "exercise": "", "earned": s.earned,
                        "max": s.max_points, "passed": s.earned == s.max_points and not s.error,
                        "message": s.error})
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["student", "chapter", "exercise", "earned", "max", "passed", "message"])
        w.writeheader()
        w.writerows(self.rows())
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {"containment": self.note, "students": {
            s.student: {"earned": s.earned, "max": s.max_points, "seconds": round(s.seconds, 2), "error": s.error,
                        "exercises": s.exercises} for s in self.students}}

    def write(self, out_dir: str | Path) -> list[Path]:
        from toylab.files import atomic_write_many

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_text, json_text = self.to_csv(), json.dumps(self.to_dict(), indent=1) + "\n"
        return atomic_write_many([(out_dir / "gradebook.csv", lambda p: Path(p).write_text(csv_text)),
                                  (out_dir / "gradebook.json", lambda p: Path(p).write_text(json_text))])


def students_in(submissions: Path) -> list[Path]:
    """The entries of ``submissions`` that are students (folders, and symbolic links to refuse)."""
    return sorted(p for p in submissions.iterdir() if p.is_symlink() or p.is_dir())


def _grade_one(folder: Path, submissions: Path, kwargs: dict) -> StudentGrade:
    from toylab.course.grading import grade

    s = StudentGrade(folder.name)
    started = time.perf_counter()
    if folder.is_symlink():
        s.error = f"{folder.name} is a symbolic link, not a folder of answers: not graded"
    else:
        try:
            g = grade(folder, hide=(submissions,), **kwargs)
            s.earned, s.max_points, s.exercises = g.earned, g.max_points, g.exercises()
        except (OSError, ValueError, RuntimeError) as e:
            s.error = f"could not be graded: {e}"
    s.seconds = time.perf_counter() - started
    return s


def grade_class(submissions: str | Path, jobs: int = 1, progress: bool = True, echo=print, **kwargs) -> Gradebook:
    """Grade every student folder in ``submissions``, ``jobs`` at a time (``kwargs`` go to ``grade``)."""
    from toylab.course import contain
    from toylab.course.answers import repo_root
    from toylab.training.progress import Progress

    submissions = Path(submissions).expanduser().resolve()
    if not submissions.is_dir():
        raise FileNotFoundError(f"no submissions folder {submissions}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    folders = students_in(submissions)
    if not folders:
        raise ValueError(f"{submissions} holds no student folders (one folder per student)")
    book = Gradebook(note=contain.containment_note(contain.worker_uid(repo_root())))
    bar = Progress(len(folders), "grading the class", stream=sys.stderr, enabled=progress)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_grade_one, f, submissions, kwargs) for f in folders]
        for fut in as_completed(futures):
            s = fut.result()
            book.students.append(s)
            if echo is not None:
                echo(f"{s.student}: {s.earned}/{s.max_points} in {s.seconds:.1f} s" + (f" ({s.error})" if s.error
                                                                                       else ""))
            bar.update(1)
    bar.__exit__()
    book.students.sort(key=lambda s: s.student)
    return book
