"""A grading's result: one :class:`GradedTest` per graded test, a :class:`Grade` per folder graded.

:meth:`Grade.exercises` rolls the tests up into one row per exercise, :meth:`Grade.table` prints
them, :meth:`Grade.to_dict` is toylab's JSON and :meth:`Grade.to_gradescope` Gradescope's
autograder ``results.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GRADESCOPE_VISIBILITY = ("visible", "hidden", "after_due_date", "after_published")


@dataclass
class GradedTest:
    chapter: int
    exercise: str
    nodeid: str
    points: int
    passed: bool = False
    message: str = "not run"
    hidden: bool = False


@dataclass
class Grade:
    path: str
    timeout: float
    tests: list[GradedTest] = field(default_factory=list)
    note: str = ""  # how the worker that ran the answers was contained (see contain.containment_note)

    def exercises(self) -> list[dict]:
        """One row per (chapter, exercise): points earned/max, pass or the first failure."""
        rows: dict[tuple, dict] = {}
        for t in self.tests:
            row = rows.setdefault((t.chapter, t.exercise), {"chapter": t.chapter, "exercise": t.exercise,
                                                            "earned": 0, "max": 0, "passed": True, "message": ""})
            row["max"] += t.points
            if t.passed:
                row["earned"] += t.points
            else:
                row["passed"] = False
                row["message"] = row["message"] or t.message
        return list(rows.values())

    @property
    def earned(self) -> int:
        return sum(t.points for t in self.tests if t.passed)

    @property
    def max_points(self) -> int:
        return sum(t.points for t in self.tests)

    def table(self) -> str:
        rows = self.exercises()
        w = max([len(r["exercise"]) for r in rows] + [8])
        lines = [f"{'chapter':>7}  {'exercise':<{w}}  {'points':>6}  result", f"{'-' * 7}  {'-' * w}  {'-' * 6}  {'-' * 40}"]
        for r in rows:
            pts = f"{r['earned']}/{r['max']}"
            lines.append(f"{r['chapter']:>7}  {r['exercise']:<{w}}  {pts:>6}  {'pass' if r['passed'] else r['message']}")
        lines.append(f"{'-' * 7}  {'-' * w}  {'-' * 6}")
        lines.append(f"{'total':>7}  {'':<{w}}  {f'{self.earned}/{self.max_points}':>6}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"path": self.path, "timeout_s": self.timeout, "earned": self.earned, "max": self.max_points,
                "containment": self.note, "exercises": self.exercises(), "tests": [asdict(t) for t in self.tests]}

    def to_gradescope(self, visibility: str = "visible", stdout_visibility: str = "hidden") -> dict:
        """The Gradescope autograder ``results.json``: one Gradescope test per exercise.

        ``{"score", "output", "visibility", "stdout_visibility", "tests": [{"name",
        "number", "score", "max_score", "status", "output", "visibility"}]}``, where
        a test's ``score`` is the points earned on that exercise and ``output`` is
        "pass" or its first failure message (with its hint).
        """
        for name, v in (("visibility", visibility), ("stdout_visibility", stdout_visibility)):
            if v not in GRADESCOPE_VISIBILITY:
                raise ValueError(f"Gradescope {name} must be one of {GRADESCOPE_VISIBILITY}, got {v!r}")
        tests = []
        for i, r in enumerate(self.exercises(), 1):
            tests.append({"name": f"ch{r['chapter']:02d} {r['exercise']}", "number": str(i),
                          "score": r["earned"], "max_score": r["max"],
                          "status": "passed" if r["passed"] else "failed",
                          "output": "pass" if r["passed"] else r["message"], "visibility": visibility})
        return {"score": self.earned, "output": f"toylab grade: {self.earned}/{self.max_points} points",
                "visibility": visibility, "stdout_visibility": stdout_visibility, "tests": tests}
