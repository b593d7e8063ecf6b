"""Benchmarks: run `make bench` (or `python -m benchmarks NAME ...`); each prints a table with
the machine it ran on. Speed is measured here, never asserted in tests."""
