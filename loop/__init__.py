"""LOOP: a hardened network media looper for HUB75 LED matrices."""

__version__ = "0.1.0"
