"""The curvops benchmark suite (see run.py)."""
