"""What the service process loads: no TLS stack for an HTTP-only LAN service."""

import subprocess
import sys

from conftest import ROOT


def test_service_modules_do_not_load_ssl_but_ssl_still_imports():
    code = ("import sys, loop.service.app; print('ssl' in sys.modules); "
            "import ssl; print(ssl.OPENSSL_VERSION_INFO > (0,))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"], out
