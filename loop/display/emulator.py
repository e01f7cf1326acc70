"""The emulator driver: the rgbmatrix driver with the optional `RGBMatrixEmulator` package in
place of `rgbmatrix`, for desktops without a panel.

How to use it: `pip install RGBMatrixEmulator` (it pulls numpy and tornado), run with
`--display emulator`, open http://127.0.0.1:8888/ on the same machine. Its
`emulator_config.json` lives in the data directory (edit `display_adapter` and
`browser.port` there); the browser adapter is bound to 127.0.0.1 only, and the
SIGINT/SIGTERM handlers it installs are put back at once. Limits: the package reads
`./emulator_config.json` (never writes it) for its log level at import, and it runs a tornado
thread of its own; it is a developer tool, never for the Pi.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import json
import os
import signal
import sys
import threading

from loop.display.base import DisplayError
from loop.display.rgbmatrix import RGBMatrixDriver
from loop.durable import write_json_atomic

EMULATOR_CONFIG_NAME = "emulator_config.json"

_EMULATOR = "RGBMatrixEmulator"


_EMULATOR_LOCK = threading.Lock()


def _emulator_config_class(module):
    """The package's config class, or None for a module that is not RGBMatrixEmulator."""
    found = sys.modules.get(f"{module.__name__}.internal.emulator_config")
    return getattr(found, "RGBMatrixEmulatorConfig", None)


def _import_emulator(config_path: str):
    """Import RGBMatrixEmulator with its config file at `config_path`.

    The package builds a default options object while it is imported (a default argument of
    `RGBMatrix.__init__`), which reads and, when missing, writes `emulator_config.json` in the
    current directory. It finds the file through the class attribute
    `RGBMatrixEmulatorConfig.CONFIG_PATH`, so we create the package module, point that
    attribute at our directory, and only then run the package's `__init__` (chdir is no
    option in a threaded server)."""
    module = sys.modules.get(_EMULATOR)
    if module is not None:
        return module
    spec = importlib.util.find_spec(_EMULATOR)
    if spec is None or spec.loader is None:
        raise DisplayError("the emulator driver needs the RGBMatrixEmulator package "
                           "(pip install RGBMatrixEmulator); it is not installed")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_EMULATOR] = module
    try:
        config_module = importlib.import_module(f"{_EMULATOR}.internal.emulator_config")
        config_module.RGBMatrixEmulatorConfig.CONFIG_PATH = config_path
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == _EMULATOR or n.startswith(_EMULATOR + ".")]:
            del sys.modules[name]
        raise
    return module


def _prepare_emulator_config(config_class, path: str, adapter: str | None) -> None:
    """Make sure `path` holds a full config; `adapter` (when given) overrides the adapter."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        data = None
    except ValueError as exc:
        raise DisplayError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if data is not None and not isinstance(data, dict):
        raise DisplayError(f"{path} must hold a JSON object; fix or delete it")
    if data is not None and (adapter is None or data.get("display_adapter") == adapter):
        return
    data = copy.deepcopy(config_class.DEFAULT_CONFIG) if data is None else data
    if adapter is not None:
        data["display_adapter"] = adapter
    write_json_atomic(path, data)


@contextlib.contextmanager
def _signal_handlers_kept():
    """Put back SIGINT/SIGTERM/SIGHUP handlers if the code inside replaced them (the
    emulator's browser server installs its own that call sys.exit())."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can install handlers, so nobody else could replace ours
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def _loopback_browser(adapter_class):
    """A subclass of the emulator's browser adapter whose web server listens on 127.0.0.1
    only (the package passes no address to tornado, i.e. every interface)."""
    server_module = importlib.import_module(
        adapter_class.__module__.rsplit(".", 1)[0] + ".server")

    class LoopbackBrowserAdapter(adapter_class):
        INSTANCE = None  # the package keeps one adapter per class

        def load_emulator_window(self):
            if not self.loaded:
                app = server_module.Server(self).instance.app
                listen = app.listen
                app.listen = lambda port, **kw: listen(port, **{**kw, "address": "127.0.0.1"})
            super().load_emulator_window()

    return LoopbackBrowserAdapter


class EmulatorDriver(RGBMatrixDriver):
    """RGBMatrixDriver with `RGBMatrixEmulator` as the binding. `work_dir` holds its
    `emulator_config.json`; `adapter` ("browser", "raw", "pygame"...) overrides the one
    in that file. DisplayError when the package is missing or fails."""

    name = "emulator"

    def __init__(self, display_cfg, module=None, *, work_dir: str, adapter: str | None = None,
                 user: str | None = None):
        super().__init__(display_cfg, module, user=user)
        self.work_dir = work_dir
        self.adapter = adapter

    @property
    def config_path(self) -> str:
        return os.path.join(self.work_dir, EMULATOR_CONFIG_NAME)

    def open(self) -> None:
        """Import the package with its config in work_dir, then open like the real panel."""
        if self._matrix is not None:
            return
        try:
            os.makedirs(self.work_dir, exist_ok=True)
            # One lock: CONFIG_PATH is a class attribute shared by every emulator instance.
            with _EMULATOR_LOCK, _signal_handlers_kept():
                module = self.module if self.module is not None else \
                    _import_emulator(self.config_path)
                self.module = module
                config_class = _emulator_config_class(module)
                if config_class is not None:
                    config_class.CONFIG_PATH = self.config_path
                    _prepare_emulator_config(config_class, self.config_path, self.adapter)
                self._open_with(module)
        except DisplayError:
            raise
        except (Exception, SystemExit) as exc:
            # The package calls sys.exit(1) when no display adapter loads.
            raise DisplayError(f"the emulator failed to start: {exc!r}") from exc

    def _refusal(self) -> str | None:
        return None  # no GPIO, no C library: the emulator takes any geometry

    def _holds_null(self, matrix) -> bool:
        return False  # a Python object; a failure raises

    def _has_option(self, options, key: str) -> bool:
        return hasattr(options, key)  # a plain object: its options are instance attributes

    def _prepare(self, options) -> None:
        adapter = getattr(options, "display_adapter", None)
        if isinstance(adapter, type) and adapter.__name__ == "BrowserAdapter":
            options.display_adapter = _loopback_browser(adapter)


