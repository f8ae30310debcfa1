"""The course machinery: grading the exercises and what the graded tests use.

=====================  =============================================================
``grading``            ``toylab grade``: run the graded tests, ``check`` for one exercise
                       in a notebook
``scores``             a grading's result: the score table, JSON and Gradescope output
``commands``           the command lines of ``grade``, ``grade-class`` and ``release``
``answers``            which answers a graded test loads (the student's or the solutions),
                       the teaching assertions, the alarm
``remote``             the student's module as a proxy whose functions run in the worker
``sandbox``            the grader's side of the worker: start, call, time limits, stop
``contain``            the worker's containment: uid, mount namespace, limits, killing
``worker``             the worker process itself (the only one that imports student code)
``wire``               the messages between them: pickle to the worker, plain data back
``classroom``          ``toylab grade-class``: a class into one gradebook
``release``            ``toylab release``: the students' copy (no solutions, no hidden tests)
=====================  =============================================================

Import the modules themselves, e.g. ``from toylab.course.grading import check``.
The Gradescope scripts are in ``course/gradescope/`` at the repository's root.
"""
