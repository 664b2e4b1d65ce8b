"""Benchmarks of the platform: run with `python -m bench.<name> --help`."""
