"""Graders for the course exercises (nbs/exercises/graders/*.ipynb): each `check_*` runs a learner's function against the reference and says what is wrong."""
