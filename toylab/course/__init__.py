"""The course machinery: grading the exercises and what the graded tests use.

=====================  =============================================================
``grading``            ``toylab grade``: run the graded tests, the score table, JSON
                       and Gradescope output, ``check`` for one exercise in a notebook
``answers``            which answers a graded test loads (the student's or the solutions)
=====================  =============================================================

Import the modules themselves, e.g. ``from toylab.course.grading import check``.
"""
