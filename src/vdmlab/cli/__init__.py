"""Command-line entry points; the root scripts (train.py, eval.py, sample.py, compare.py) call these."""
