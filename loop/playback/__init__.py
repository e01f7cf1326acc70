"""Playback: the display thread (player.py) that decides what the panel shows when, and the
circuit breaker (breaker.py) every driver call goes through.

Must not be here: decoding (frames are rendered once, off this thread, by loop/library and
loop/media), HTTP, disk writes on the hot path. The player gets its driver and store as
objects from the service wiring; it imports no driver (docs/architecture.md, "Packages").
"""
