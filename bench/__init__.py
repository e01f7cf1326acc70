"""`make bench`: LOOP's timing and memory numbers (see docs/benchmarks.md)."""
