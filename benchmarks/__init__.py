"""Benchmarks of the toolkit's own code paths (``python benchmarks/run.py``; see README.md)."""
