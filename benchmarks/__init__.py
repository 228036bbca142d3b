"""Benchmarks for sis-pipeline: a deterministic SIS file generator, the hand-written floor, and the runner.

`python -m benchmarks.run` measures every case against the floor measured in the same run (docs/BENCHMARKS.md).
"""
