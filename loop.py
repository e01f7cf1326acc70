#!/usr/bin/env python3
"""LOOP entry point: `python3 loop.py --help`."""

import sys

from loop import config

if __name__ == "__main__":
    # Flags are checked before anything imports Pillow, so `--help` works on any Python.
    config.argument_parser().parse_args()
    from loop.service.app import main

    sys.exit(main())
