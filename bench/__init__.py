"""Benchmarks: each measures one part of the integration beside its baseline, in the same run.

`python -m bench` runs them all (or those named: `python -m bench client server`), prints a table and
writes `docs/performance.md`. Figures only: no benchmark is a test, and no test times anything.
"""
