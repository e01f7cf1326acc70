"""The routes: check a request, parse it, call a component, answer with the JSON envelope.

No business logic lives here. `Api.handle` runs the design's checks in their fixed order
(allowlist, Host, admission, rate limit, token, cross-site guard, framing, route), then the
route's handler. Errors are values at the edges: `HttpError` (loop/http/envelope.py) and
`MediaError` become the failure envelope in `handle`, the one place that does so.
"""

from __future__ import annotations

import io
import json
import logging
import math
import mimetypes
import os
import re
import socket
import time
import zlib
from dataclasses import dataclass

import multipart
from PIL import Image

from loop import __version__, schedule, untrusted_json
from loop.config import FITS, MODES
from loop.http import metrics
from loop.http.access import BACKUP_PATH, Access
from loop.http.envelope import HttpError, Response, envelope, envelope_error, json_bytes
from loop.http.ratelimit import retry_after
from loop.http.server import Request
from loop.library import backup
from loop.library.intake import UPLOAD_ID
from loop.library.names import clean_name
from loop.library.store import MAX_NAME, valid_id
from loop.media import generated, screens
from loop.media.errors import MediaError
from loop.media.pixels import frame_image
from loop.media.text import TEXT_KEYS

log = logging.getLogger("loop.api")

JSON_BODY_LIMIT = 64 * 1024
WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "web")
DASHBOARD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
FRAME_HOLE = -7_654_321_987  # stands for the frame counter in a cached status body


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    handler: str
    rate: str  # rate-limit class: poll | control | upload | static
    doc: str
    body_limit: str = "media.max_upload_mb"  # the config key bounding its request body


def _route(method, path, handler, rate, doc, **extra) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"\\A{regex}\\Z"), handler, rate, doc, **extra)


ROUTES = [
    _route("GET", "/", "dashboard", "static", "the web dashboard"),
    _route("GET", "/api", "index", "poll", "this index of routes"),
    _route("GET", "/api/poll/status", "status", "poll", "state snapshot for polling"),
    _route("GET", "/api/poll/progress", "progress", "poll", "upload and render jobs"),
    _route("GET", "/api/poll/health", "health", "poll", "health checks and numbers"),
    _route("GET", "/api/media", "list_media", "poll", "every item, loop order first"),
    _route("POST", "/api/media", "upload", "upload",
           "upload: multipart field 'file' (several allowed) or a raw body with ?name=; "
           "a JSON body {\"text\": …} or {\"clock\": {…}} makes a text or clock item"),
    _route("GET", "/api/media/{id}", "get_media", "poll", "one item"),
    _route("PATCH", "/api/media/{id}", "patch_media", "control",
           "change name, loop_count, duration_sec; a text's or clock's fields"),
    _route("DELETE", "/api/media/{id}", "delete_media", "control", "delete an item"),
    _route("GET", "/api/media/{id}/thumb.png", "thumb", "static", "preview image"),
    _route("GET", "/api/media/{id}/original", "original", "static",
           "the upload as received"),
    _route("GET", "/api/loop", "get_loop", "poll", "what plays, in order"),
    _route("PUT", "/api/loop", "put_loop", "control", "set what plays, in order"),
    _route("POST", "/api/playback/select", "select", "control", "show an item now"),
    _route("POST", "/api/playback/{action}", "playback", "control",
           "play, pause, toggle, next, previous"),
    _route("PUT", "/api/playback/mode", "mode", "control", "all, one or shuffle"),
    _route("GET", "/api/display", "get_display", "poll", "brightness, fit, driver, breaker"),
    _route("PUT", "/api/display", "put_display", "control", "change brightness or fit"),
    _route("GET", "/api/display/frame.png", "frame_png", "static",
           "what the panel shows now (?scale=)"),
    _route("POST", "/api/display/reset", "reset_display", "control",
           "clear the panel's crash marker and breaker, then restart the service"),
    _route("GET", "/api/schedule", "get_schedule", "poll",
           "night/dim rules, their time zone and what they want now"),
    _route("PUT", "/api/schedule", "put_schedule", "control",
           "replace the night/dim rules: {\"rules\": [{days, start, end, brightness}]}"),
    _route("GET", BACKUP_PATH, "backup", "control",
           "download a backup of the library (tar; needs the token when one is set)"),
    _route("POST", "/api/restore", "restore", "upload",
           "replace the library with a backup: the tar as the raw body",
           body_limit="media.max_restore_mb"),
    _route("POST", "/api/notify", "notify", "control",
           "show something now: JSON {\"text\": …} or {\"item\": id}, or an image "
           "(multipart 'file' or raw body, fields as ?query); id, priority, duration_sec or "
           "repeat, expires_sec, brightness"),
    _route("GET", "/api/notify", "list_notify", "poll", "the notifications on screen and "
           "queued"),
    _route("DELETE", "/api/notify/{id}", "retract_notify", "control",
           "take a notification away"),
    _route("GET", "/metrics", "metrics", "poll",
           "Prometheus text exposition of the health numbers"),
    _route("GET", "/{asset}", "asset", "static", "dashboard scripts and styles"),
]
TRANSPORT = ("play", "pause", "toggle", "next", "previous")


# Requests to no known path (scanners, typos) are rate-limited like control requests.
UNKNOWN_ROUTE = Route("", re.compile(r"\A\Z"), "", "control", "")


def _no_route(request: Request, allowed: list[Route]) -> HttpError:
    if allowed:
        methods = {r.method for r in allowed}
        allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        return HttpError(405, "method_not_allowed", f"{request.method} is not allowed here",
                        {"Allow": allow})
    return HttpError(404, "not_found", f"no such resource: {request.path[:100]}")




class Api:
    """Route table and handlers over the components `app` wires together."""

    def __init__(self, app):
        self.app = app
        self._access: tuple | None = None
        self._status_body: tuple | None = None  # (version, head, tail): see status()

    # ---- dispatch ----------------------------------------------------------------------
    def handle(self, request: Request, front) -> Response:
        """Answer one request; every failure becomes the envelope here.

        The checks run in the design's order and the first failure wins. `front` is the
        connection's handler in `loop.server`: it owns the transport steps, the admission
        slot (held while the route works, not while the answer is written) and the framing
        of the body.
        """
        route = None
        try:
            access = self.access()
            access.check_network(request)                  # 403
            access.check_host(request)                     # 400 / 421
            route, params, allowed = self._match(request)
            request.rate_class = (route or (allowed[0] if allowed else None) or
                                  UNKNOWN_ROUTE).rate
            with front.admission(request.client_key, request.rate_class):  # 503
                self._rate_limit(front.limiter, request)   # 429 + Retry-After
                access.check_token(request)                # 401 + WWW-Authenticate
                access.check_origin(request)               # 403
                request.body = front.frame_body(*self.body_limit(route))  # 400/411/413/501
                if route is not None and route.rate != "upload" and request.body:
                    # a small (JSON) body is read with the slot let go, within a deadline
                    # of its own: a client dribbling it holds a connection, never a slot
                    if request.body.length > JSON_BODY_LIMIT:
                        raise HttpError(413, "payload_too_large",
                                        "JSON bodies are limited to 64 KiB", close=True)
                    front.read_outside_slot(request.body,
                                            self.app.cfg.web.header_timeout_sec)
                if route is None:                          # 404 / 405 + Allow
                    raise _no_route(request, allowed)
                response = getattr(self, route.handler)(request, **params)
        except (HttpError, MediaError) as exc:
            response = envelope_error(exc.status, exc.code, exc.message)
            response.headers.update(getattr(exc, "headers", {}))
        except Exception:
            log.exception("bug while answering %s %s", request.method, request.path)
            response = envelope_error(500, "internal", "internal error")
        response.route_class = route.rate if route is not None else "none"
        return response

    def access(self) -> Access:
        """The access rules for the current `web` config (rebuilt after a reload)."""
        web = self.app.cfg.web
        cached = self._access
        if cached is None or cached[0] is not web:
            cached = self._access = (web, Access(web))
        return cached[1]

    def body_limit(self, route: Route | None = None) -> tuple[int, str]:
        """The largest request body a route takes, in bytes, and the key that says so:
        `media.max_upload_mb`, or the route's own (`media.max_restore_mb` for a restore)."""
        key = route.body_limit if route is not None else Route.body_limit
        section, name = key.split(".")
        return int(getattr(getattr(self.app.cfg, section), name) * 1024 * 1024), key

    @staticmethod
    def _rate_limit(limiter, request: Request) -> None:
        wait = limiter.check(request.client_key, request.rate_class)
        if wait > 0:
            after = retry_after(wait)
            raise HttpError(429, "rate_limited", f"too many {request.rate_class} requests from "
                           f"this client; retry in {after} s", {"Retry-After": after})

    @staticmethod
    def _match(request: Request):
        """(route, params, routes of this path with other methods)."""
        method = "GET" if request.method == "HEAD" else request.method
        allowed = []
        for route in ROUTES:
            match = route.pattern.match(request.path)
            if match:
                if route.method == method:
                    return route, match.groupdict(), []
                allowed.append(route)
        return None, {}, allowed

    # ---- request helpers ---------------------------------------------------------------
    def _json_body(self, request: Request) -> dict:
        body = request.body
        if body is None or body.length == 0:
            raise HttpError(400, "bad_json", "a JSON object body is required")
        if body.length > JSON_BODY_LIMIT:
            raise HttpError(413, "payload_too_large", "JSON bodies are limited to 64 KiB")
        try:
            value = untrusted_json.loads(body.read_all())
        except ValueError:  # not JSON, not UTF-8, or nested too deep
            raise HttpError(400, "bad_json", "the body is not valid JSON (nested at most "
                            f"{untrusted_json.MAX_DEPTH} levels)") from None
        if not isinstance(value, dict):
            raise HttpError(400, "bad_json", "the body must be a JSON object")
        return value

    def _item(self, item_id: str) -> dict:
        # the id is checked against a strict pattern before anything else looks at it
        item = self.app.store.view.get(item_id) if valid_id(item_id) else None
        if item is None:
            raise HttpError(404, "not_found", "no such item")
        return item

    def public_item(self, meta: dict) -> dict:
        out = {key: meta.get(key) for key in ("id", "name", "kind", "width", "height",
                                               "frames", "duration_ms", "bytes", "created_at",
                                               "loop_count", "duration_sec")}
        out["notes"] = meta.get("notes", [])
        if meta.get("kind") in ("text", "clock"):
            out["spec"] = meta.get("spec")  # what PATCH edits
        out["in_loop"] = meta["id"] in self.app.store.view.loop
        out["quarantined"] = meta["id"] in self.app.player.quarantined
        out["pending"] = meta["id"] in self.app.store.view.pending  # waits for a re-render
        # The id is a content hash, but a re-render (new fit or panel) changes the picture:
        # the query names the rendering so an immutable cache never shows a stale one.
        render = meta.get("render") or {}
        version = zlib.crc32(json.dumps(render, sort_keys=True).encode()) & 0xFFFFFFFF
        out["thumb"] = f"/api/media/{meta['id']}/thumb.png?v={version:08x}"
        return out

    # ---- static ------------------------------------------------------------------------
    def dashboard(self, request):
        return self._static("index.html")

    def asset(self, request, asset):
        return self._static(asset)

    def _static(self, name: str) -> Response:
        if not re.fullmatch(r"[a-z0-9_-]+\.(html|js|css|png|svg|ico)", name):
            raise HttpError(404, "not_found", "no such file")
        path = os.path.join(WEB_DIR, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            raise HttpError(404, "not_found", "no such file") from None
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        headers = dict(DASHBOARD_HEADERS, **{"Cache-Control": "no-cache"})
        return Response(200, data, ctype, headers)

    def index(self, request):
        routes = [{"name": r.handler, "method": r.method,
                   "path": r.pattern.pattern[2:-2].replace("(?P<", "{").replace(">[^/]+)", "}"),
                   "doc": r.doc} for r in ROUTES]
        return envelope(200, {"routes": routes, "version": __version__})

    # ---- polling -----------------------------------------------------------------------
    def status(self, request):
        """The snapshot is encoded once per version, with a hole where the frame counter goes:
        the most polled route costs a string join instead of building and encoding it anew
        (less time holding the GIL that the display thread needs)."""
        version = self.app.status_version()
        etag = f'W/"{version}"'
        if _not_modified(request.headers.get("If-None-Match", ""), etag):
            return Response(304, b"", "application/json", {"ETag": etag})
        cached = self._status_body
        if cached is None or cached[0] != version:
            data, built = self.app.status_snapshot(frame=FRAME_HOLE)
            head, tail = json_bytes({"success": True, "message": None, "data": data}).split(
                str(FRAME_HOLE).encode(), 1)
            cached = self._status_body = (built, head, tail)
            etag = f'W/"{built}"'  # the version the body was built at
        body = b"%s%d%s" % (cached[1], self.app.player.frame_index, cached[2])
        return Response(200, body, "application/json",
                        {"ETag": etag, "Cache-Control": "no-cache"})

    def progress(self, request):
        jobs = self.app.jobs
        return envelope(200, {"jobs": jobs.list(), "total": len(jobs)})

    def health(self, request):
        return envelope(200, self.app.health())

    def metrics(self, request):
        text = metrics.render_app(self.app)
        return Response(200, text.encode("utf-8"), metrics.CONTENT_TYPE,
                        {"Cache-Control": "no-store"})

    # ---- library -----------------------------------------------------------------------
    def list_media(self, request):
        view = self.app.store.view
        in_loop = {i: n for n, i in enumerate(view.loop)}
        items = sorted(view.items, key=lambda m: (in_loop.get(m["id"], len(in_loop)),))
        media = self.app.cfg.media
        # what an item's null loop_count / duration_sec stands for
        defaults = {"loop_count": media.loop_count, "item_duration_sec": media.item_duration_sec,
                    "static_image_duration_sec": media.static_image_duration_sec}
        return envelope(200, {"items": [self.public_item(m) for m in items],
                              "defaults": defaults})

    def get_media(self, request, id):
        return envelope(200, self.public_item(self._item(id)))

    def patch_media(self, request, id):
        item = self._item(id)
        body = self._json_body(request)
        spec_keys = TEXT_KEYS if item.get("kind") == "text" else (
            ("clock",) if item.get("kind") == "clock" else ())
        edits = {k: body.pop(k) for k in list(body) if k in spec_keys}
        if edits:  # a new text is a new item (its id is its content's hash)
            if id in self.app.store.view.pending:
                raise HttpError(409, "conflict", "that item is being re-rendered; try again")
            was_current = self.app.player.status.item == id
            item = self.app.texts.edit(item, edits)
            id = item["id"]
            if was_current:
                self.app.player.command("select", wait=False, item_id=id)
        changes = {}
        for key, value in body.items():
            if key == "name":  # the one rule for names, as for uploads and restores
                name = clean_name(value) if isinstance(value, str) else ""
                if not name or len(value) > MAX_NAME:
                    raise HttpError(422, "validation_failed", f"name must be 1..{MAX_NAME} "
                                    "characters, some of them visible")
                changes["name"] = name
            elif key == "loop_count":
                _check_number(key, value, int, 1, 10000)
                changes[key] = value
            elif key == "duration_sec":
                _check_number(key, value, (int, float), 0.1, 86400)
                changes[key] = value
            else:
                raise HttpError(422, "validation_failed", f"{key} cannot be changed")
        meta = self.app.store.update_item(id, changes) if changes else item
        self.app.player.command("library", wait=False)
        return envelope(200, self.public_item(meta))

    def delete_media(self, request, id):
        self._item(id)
        self.app.store.delete_item(id)
        self.app.player.command("library")
        return envelope(200, {"id": id}, "deleted")

    def thumb(self, request, id):
        self._item(id)
        return self._file(self.app.store.thumb_path(id), "image/png", IMMUTABLE)

    def original(self, request, id):
        item = self._item(id)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", item.get("name") or id)[:100]
        ext = item.get("ext", "bin")
        if not safe.lower().endswith("." + ext):
            safe += "." + ext
        # never an active content type: user bytes are not served as HTML/SVG/JS
        headers = dict(IMMUTABLE, **{"Content-Disposition": f'attachment; filename="{safe}"',
                                     "X-Content-Type-Options": "nosniff"})
        return self._file(self.app.store.original_path(id), "application/octet-stream",
                          headers)

    def _file(self, path: str, ctype: str, headers: dict) -> Response:
        """A stored file, streamed in chunks (an original may be 100 MB: never read whole)."""
        try:
            fh = open(path, "rb")
        except OSError:
            raise HttpError(404, "not_found", "no such file") from None
        length = os.fstat(fh.fileno()).st_size
        return Response(200, b"", ctype, dict(headers), stream=_FileChunks(fh), length=length)

    def get_loop(self, request):
        return envelope(200, {"items": list(self.app.store.view.loop)})

    def put_loop(self, request):
        ids = self._json_body(request).get("items")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HttpError(422, "validation_failed", "items must be a list of item ids")
        self.app.store.set_loop(ids)
        self.app.player.command("library")
        return envelope(200, {"items": list(self.app.store.view.loop)})

    # ---- uploads -----------------------------------------------------------------------
    def upload(self, request):
        """Framing and admission checks run before a byte of the body is read."""
        body = request.body
        if _is_json(request):
            return self._create_text(request)
        if body is None:
            raise HttpError(411, "length_required", "uploads need a Content-Length")
        self._check_upload_size(body.length)
        if body.length == 0:
            raise HttpError(400, "bad_request", "the upload is empty")
        self._check_memory()
        client_upload_id = upload_id(request)
        intake = self.app.intake
        why = intake.job_slots.try_acquire_for(request.client_key)
        if why:
            raise HttpError(503, "busy", "all processing slots are busy; try again shortly"
                            if why == "full" else "this client's uploads already take their "
                            "share of the processing slots; try again shortly",
                            {"Retry-After": "2"})
        try:
            files = self._receive(request, request.arg("name"), client_upload_id)
            status, results = intake.process_all(files)
        finally:
            intake.job_slots.release_for(request.client_key)
        for result in results:
            if result["item"] is not None:
                result["item"] = self.public_item(result["item"])
        if status in (200, 201):
            self.app.player.command("library", wait=False)
            return envelope(status, {"results": results})
        first = next(r for r in results if r["status"] == status)
        body = json_bytes({"success": False, "message": first["error"],
                            "error": first["code"],
                            "data": {"results": results}})
        return Response(status, body)

    def _create_text(self, request):
        """A text or clock item from a JSON body, through the intake like an upload."""
        fields = self._json_body(request)
        intake = self.app.intake
        if not intake.job_slots.acquire(blocking=False):
            raise HttpError(503, "busy", "all processing slots are busy; try again shortly",
                           {"Retry-After": "2"})
        try:
            intake.check_disk(generated.MAX_SPEC_BYTES)
            status, result = self.app.texts.create(fields)
        finally:
            intake.job_slots.release()
        result["item"] = self.public_item(result["item"])
        self.app.player.command("library", wait=False)
        return envelope(status, {"results": [result]})

    # ---- notifications -------------------------------------------------------------------
    def notify(self, request):
        """POST /api/notify: JSON fields, or an image with the fields in the query string."""
        if _is_json(request):
            note, replaced = self.app.notify(self._json_body(request))
        else:
            body = request.body
            if body is None:
                raise HttpError(411, "length_required", "send the image with a Content-Length")
            if body.length == 0:
                raise HttpError(400, "bad_request", "send JSON (Content-Type: "
                               "application/json) or an image")

            def receive():  # once the fields and the queue were checked: as an upload
                self._check_upload_size(body.length)
                return self._receive(request, request.arg("name") or "image", None)
            note, replaced = self.app.notify(_query_fields(request), receive=receive)
        return envelope(200 if replaced else 201, note,
                        "replaced" if replaced else "queued")

    def _check_upload_size(self, length: int) -> None:
        media = self.app.cfg.media
        if length > int(media.max_upload_mb * 1024 * 1024):
            raise HttpError(413, "payload_too_large", f"upload is larger than "
                            f"media.max_upload_mb = {media.max_upload_mb:g} MB")

    def _receive(self, request, name: str | None, job_id: str | None) -> list:
        """The files of an upload body (multipart field `file`, or the raw body named `name`)
        in tmp/, after the free-disk check; uploads and image notifications alike."""
        body, intake = request.body, self.app.intake
        intake.check_disk(body.length)
        ctype = request.headers.get("Content-Type", "")
        if ctype.lower().startswith("multipart/form-data"):
            boundary = multipart.parse_options_header(ctype)[1].get("boundary")
            if not boundary:
                raise HttpError(400, "bad_request", "multipart body without a boundary")
            return intake.receive_multipart(body.read, body.length, boundary, job_id)
        return intake.receive_raw(body.read, body.length, name, job_id)

    def list_notify(self, request):
        notify = self.app.cfg.notify
        # what a notification without duration_sec shows for, and what a night rule lets by
        defaults = {"duration_sec": notify.duration_sec, "night_priority": notify.night_priority}
        return envelope(200, {"notifications": self.app.notifications.listing(
            time.monotonic()), "max_queued": self.app.notifications.capacity,
            "defaults": defaults})

    def retract_notify(self, request, id):
        if not self.app.retract(id[:100]):
            raise HttpError(404, "not_found", "no such notification")
        return envelope(200, {"id": id}, "retracted")

    def _check_memory(self) -> None:
        """503 while the monitor says memory is over a line: a flag it sets, no system call."""
        monitor = self.app.monitor
        reason = monitor.shedding if monitor is not None else None
        if reason:
            monitor.shed_uploads += 1
            retry = max(1, math.ceil(2 * self.app.cfg.system.monitor_interval_sec))
            raise HttpError(503, "busy", f"the device is short of memory, so new uploads wait "
                           f"until it recovers: {reason}", {"Retry-After": str(retry)})

    # ---- playback ----------------------------------------------------------------------
    def playback(self, request, action):
        if action not in TRANSPORT:
            raise HttpError(404, "not_found", f"no playback action {action[:40]}")
        status = self.app.player.command(action)
        return envelope(200, status.as_dict(self.app.player.frame_index))

    def select(self, request):
        item_id = self._json_body(request).get("id")
        if not isinstance(item_id, str):
            raise HttpError(422, "validation_failed", "id must be an item id")
        self._item(item_id)
        if item_id in self.app.store.view.pending:
            raise HttpError(409, "conflict", "that item is being re-rendered for the panel; "
                           "it plays when that is done")
        status = self.app.player.command("select", item_id=item_id)
        return envelope(200, status.as_dict(self.app.player.frame_index))

    def mode(self, request):
        mode = self._json_body(request).get("mode")
        if mode not in MODES:
            raise HttpError(422, "validation_failed", f"mode must be one of {', '.join(MODES)}")
        status = self.app.player.command("mode", mode=mode)
        return envelope(200, status.as_dict(self.app.player.frame_index))

    # ---- display -----------------------------------------------------------------------
    def get_display(self, request):
        return envelope(200, self.app.display_state())

    def put_display(self, request):
        body = self._json_body(request)
        unknown = set(body) - {"brightness", "fit"}
        if unknown:
            raise HttpError(422, "validation_failed", f"{sorted(unknown)[0]} cannot be changed")
        if "brightness" in body:
            _check_number("brightness", body["brightness"], int, 0, 100)
        if "fit" in body and body["fit"] not in FITS:
            raise HttpError(422, "validation_failed", "fit must be contain, cover or stretch")
        if "brightness" in body:
            self.app.set_brightness(body["brightness"])
        if "fit" in body:
            self.app.set_fit(body["fit"])
        return envelope(200, self.app.display_state())

    # ---- backup and restore ------------------------------------------------------------
    def backup(self, request):
        """The library as a tar, streamed with its exact Content-Length (no frames)."""
        try:
            archive = backup.plan_store(self.app.store)
        except OSError as exc:
            raise HttpError(500, "internal", f"an item's original is unreadable: "
                           f"{exc.strerror or exc}") from None
        host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "loop"
        name = f"loop-backup-{host}-{time.strftime('%Y%m%d-%H%M%S')}.tar"
        return Response(200, b"", "application/x-tar", {
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
            stream=archive.chunks(), length=archive.length)

    def restore(self, request):
        """Replace the library with a backup sent as the raw body (streamed, checked in
        tmp/, swapped in with the commit protocol)."""
        body = request.body
        if body is None:
            raise HttpError(411, "length_required", "send the backup with a Content-Length")
        if body.length == 0:
            raise HttpError(400, "bad_request", "the body is empty; send the backup tar")
        if request.headers.get("Content-Type", "").lower().startswith("multipart/"):
            raise HttpError(415, "unsupported_media", "send the tar itself as the body, e.g. "
                           "curl --data-binary @loop.tar -H 'Content-Type: application/x-tar'")
        if not self.app.job_slots.acquire(blocking=False):
            raise HttpError(503, "busy", "all processing slots are busy; try again shortly",
                           {"Retry-After": "2"})
        try:
            self.app.intake.check_disk(body.length)
            report = self.app.restore(body.read, body.length)
        finally:
            self.app.job_slots.release()
        return envelope(200, report, f"library restored: {report['items']} items")

    # ---- schedule ----------------------------------------------------------------------
    def get_schedule(self, request):
        return envelope(200, self._schedule_data())

    def put_schedule(self, request):
        body = self._json_body(request)
        unknown = set(body) - {"rules"}
        if unknown:
            raise HttpError(422, "validation_failed", f"{sorted(unknown)[0][:40]} cannot be set "
                           "here; send {\"rules\": [...]}")
        if "rules" not in body:
            raise HttpError(422, "validation_failed", "rules: is required (a list, may be empty)")
        try:
            self.app.scheduler.set_rules(body["rules"])
        except schedule.RuleError as exc:
            raise HttpError(422, "validation_failed", str(exc)) from None
        return envelope(200, self._schedule_data(), "schedule saved")

    def _schedule_data(self) -> dict:
        scheduler = self.app.scheduler
        return {"rules": [rule.as_dict() for rule in scheduler.rules],
                "now": scheduler.now().isoformat(timespec="seconds"),
                "state": scheduler.status()}

    def reset_display(self, request):
        restarting = self.app.reset_display()
        if restarting:
            return envelope(202, {"restarting": True}, "display reset; the service restarts now")
        return envelope(200, {"restarting": False}, "display reset; restart the service to "
                        "open the panel again (not running under systemd)")

    def frame_png(self, request):
        try:
            scale = int(request.arg("scale", "4"))
        except ValueError:
            raise HttpError(400, "bad_request", "scale must be a whole number 1..16") from None
        if not 1 <= scale <= 16:
            raise HttpError(400, "bad_request", "scale must be a whole number 1..16")
        preview = self.app.player.preview
        width, height = self.app.target().width, self.app.target().height
        if preview is None:
            image = screens.render([], width, height)
        else:
            frames, index = preview
            image = frame_image(frames.frame(index), frames.width, frames.height,
                                      frames.pixel_format, self.app.target().rotation)
        image = image.resize((image.width * scale, image.height * scale),
                             Image.Resampling.NEAREST)
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        return Response(200, out.getvalue(), "image/png", {"Cache-Control": "no-store"})


def _etags(header: str) -> set:
    """The entity tags of If-None-Match, compared weakly (RFC 9110: W/ does not matter)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _not_modified(header: str, etag: str) -> bool:
    tags = _etags(header)
    return "*" in tags or etag.removeprefix("W/") in tags


class _FileChunks:
    """A stored file as a streamed body. It owns the open file: iterating it to the end, or
    `close()` (the server calls it when the body is not sent: HEAD, a client gone), closes it."""

    def __init__(self, fh, size: int = 256 * 1024):
        self._fh, self._size = fh, size

    def __iter__(self):
        with self._fh:
            while chunk := self._fh.read(self._size):
                yield chunk

    def close(self) -> None:
        self._fh.close()


def _check_number(name, value, kind, lo, hi) -> None:
    if value is None and name in ("loop_count", "duration_sec"):
        return  # null = back to the default
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "a whole number" if kind is int else "a number"
        raise HttpError(422, "validation_failed", f"{name} must be {what} {lo}..{hi}")


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("Content-Type", "")
    return ctype.split(";", 1)[0].strip().lower() == "application/json"


NUMERIC_FIELDS = {"duration_sec": float, "expires_sec": float, "repeat": int,
                  "brightness": int}


def _query_fields(request: Request) -> dict:
    """Notification fields given as ?query for an uploaded image; numbers parsed, so a bad
    one gets the same 400 naming the field as in JSON."""
    fields = {}
    for key, values in request.query.items():
        if key == "name":
            continue  # the upload's name, as for POST /api/media
        if len(values) > 1:
            raise HttpError(400, "bad_request", f"{key[:40]}: given twice")
        value = values[0]
        kind = NUMERIC_FIELDS.get(key)
        if kind is not None:
            try:
                value = kind(value) if kind is int else float(value)
            except ValueError:
                pass  # left a string: the check names the field
        fields[key] = value
    return fields


def upload_id(request: Request) -> str | None:
    """The client's X-Upload-Id, if it is well-formed (else 400)."""
    value = request.headers.get("X-Upload-Id")
    if value is None:
        return None
    if not UPLOAD_ID.match(value):
        raise HttpError(400, "bad_request", "X-Upload-Id must be 1-64 of A-Z a-z 0-9 _ -")
    return value
