"""LOOP: a hardened network media looper for HUB75 LED matrices."""

import sys

__version__ = "0.1.0"

# http.server (loop.server) imports http.client, which imports ssl only to offer HTTPS
# *clients*. LOOP makes no HTTPS requests, and ssl with OpenSSL's TLS state costs ~3.4 MB of
# RSS on a 512 MB device (make bench: memory idle). So http.client is loaded without it; a
# later `import ssl` anywhere still works, only http.client.HTTPSConnection is missing.
if "http.client" not in sys.modules and "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # `import ssl` raises ImportError, which http.client expects
    try:
        import http.client  # noqa: F401
    finally:
        del sys.modules["ssl"]
