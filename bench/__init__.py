"""Benchmarks: `python -m bench.run` (what `make bench` runs)."""
