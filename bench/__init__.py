"""The benchmark: `python -m bench` (see bench/run.py and the README's "Benchmark" section)."""
