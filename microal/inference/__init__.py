"""Inference: full-size prediction, evaluation, comparison of runs, and plots."""
