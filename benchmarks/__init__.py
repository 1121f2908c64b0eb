"""Benchmarks: cost of the harness beside theory and peer libraries (not part of the installed package)."""
