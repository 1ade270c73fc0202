"""The benchmark harness: `python bench/run.py [--quick]` (see bench/README.md)."""
