"""Exercises: one module per chapter, functions to fill in (see the textbook)."""
