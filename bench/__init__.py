"""`make bench`: LOOP's timing and memory numbers (see the README's Benchmarks section)."""
