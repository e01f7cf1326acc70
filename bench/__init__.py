"""`make bench`: LOOP's timing and memory numbers (see docs/bench.md)."""
