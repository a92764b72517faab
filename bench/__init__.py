"""Benchmarks: print figures, never part of pass/fail (see bench/README.md)."""
