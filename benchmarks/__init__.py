"""Benchmarks: `make bench` (benchmarks.pipeline) and the seed-style baseline it compares with."""
