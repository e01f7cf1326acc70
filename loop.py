#!/usr/bin/env python3
"""LOOP entry point: `python3 loop.py --help`."""

import sys

from loop.app import main

if __name__ == "__main__":
    sys.exit(main())
