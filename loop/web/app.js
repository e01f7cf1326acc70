/* LOOP dashboard: plain JavaScript, no framework, no build step, no external resources.
 * It only talks to the JSON API (docs/architecture.md and the README, "HTTP API") and works under the server's CSP
 * (no inline script or style, no eval; element.style is set from here only).
 *
 * ---------------------------------------------------------------------------------------
 * Test contract: stable hooks used by tests/test_dashboard.py (do not rename casually)
 * ---------------------------------------------------------------------------------------
 *   body[data-ready="1"]        set once the first status and library have been shown
 *   #conn-state                 data-state = connecting | ok | reconnecting; text says which
 *   #degraded-banner            [hidden] unless health.status != "ok" or
 *                               status.display.status == "degraded"; #degraded-reason = why
 *   #token-overlay/#token-form  shown after a 401; #token-input, #token-submit, #token-cancel,
 *                               #token-message; #token-open opens it by hand
 *   #message                    toast with the last action's error or notice
 *   #preview  (data-testid=preview)  <img>, src is a blob: URL of /api/display/frame.png;
 *                               data-item, data-frame, data-seq (bumps on every new image)
 *   #current-name (current-name) current item's name;  #player-state (player-state)
 *   #btn-prev, #btn-play, #btn-next   (same data-testid); #btn-play text Play|Pause,
 *                               data-state = playing | paused | idle
 *   #mode-select                <select> all | one | shuffle
 *   #brightness                 <input type=range 0..100>; #brightness-value shows it
 *   #file-input                 <input type=file multiple>; #drop-zone accepts dropped files
 *   #upload-list                rows li[data-testid=upload-row][data-upload-id][data-name]
 *                               [data-state = queued|uploading|processing|retrying|waiting|
 *                               done|failed|cancelled]
 *                               children: [data-testid=upload-status] plain-words text,
 *                               [data-testid=upload-progress] <progress>,
 *                               [data-testid=upload-cancel] / [data-testid=upload-retry] /
 *                               [data-testid=upload-dismiss]
 *                               server-side jobs not started here: li[data-testid=job-row]
 *   #library                    holds ul#library-loop (loop order) and ul#library-other
 *   item cards                  li[data-testid=item-card][data-id][data-in-loop=true|false]
 *                               [data-current=true|false]; inside:
 *                               [data-testid=item-thumb] <img loading=lazy>,
 *                               [data-testid=item-name], [data-testid=item-up],
 *                               [data-testid=item-down], [data-testid=item-toggle]
 *                               (aria-pressed = in loop), [data-testid=item-show],
 *                               [data-testid=item-rename] -> [data-testid=item-rename-input],
 *                               [data-testid=item-rename-save], [data-testid=item-rename-cancel],
 *                               [data-testid=item-download] <a>, [data-testid=item-delete]
 *                               (asks window.confirm first)
 *   #library-empty              shown when there are no items
 *   #health-status              data-status = ok | degraded | failing | unknown
 *   #health-checks              li[data-check=<name>][data-status]
 *   #health-memory #health-cpu #health-temp #health-disk #health-uptime #health-breaker
 *   #chart-rss #chart-cpu #chart-temp   <svg> sparklines (data-points = samples drawn)
 *   #schedule-panel #maintenance-panel  filled by operator.js (its own list of hooks is at
 *                               the top of that file)
 * ---------------------------------------------------------------------------------------
 *
 * Polling (one request in flight per endpoint, slower while the tab is hidden):
 *   /api/poll/status    every 2 s, If-None-Match with the weak ETag (304 = unchanged)
 *   /api/poll/progress  every 1 s, only while uploads run here or status.jobs_active > 0
 *   /api/poll/health    every 10 s
 * A network failure (or a proxy 502/504) puts #conn-state into "reconnecting" and the
 * pollers back off exponentially (1 s .. 30 s, jittered); the first success anywhere
 * recovers everything without a page reload.
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------- settings
  const TOKEN_KEY = "loop.apiToken";
  const INTERVALS = {                       // [visible, hidden] in ms
    status: [2000, 15000],
    progress: [1000, 5000],
    health: [10000, 60000],
  };
  const LIBRARY_RESYNC_MS = 60000;         // catch reorders made by other clients
  const POLL_TIMEOUT_MS = 10000;
  const ACTION_TIMEOUT_MS = 20000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const BRIGHTNESS_DEBOUNCE_MS = 250;
  const USER_HOLD_MS = 2500;               // polls do not overwrite a control just touched
  const UPLOAD_CONCURRENCY = 2;
  const UPLOAD_MAX_RETRIES = 30;

  // ---------------------------------------------------------------- small helpers
  const $ = (sel, root) => (root || document).querySelector(sel);

  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "text") node.textContent = value;
        else if (key === "class") node.className = value;
        else if (key.startsWith("on") && typeof value === "function") {
          node.addEventListener(key.slice(2), value);
        } else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node && node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    const str = String(value);
    if (node && node.getAttribute(name) !== str) node.setAttribute(name, str);
  }

  const store = {
    get(key) {
      try { return window.localStorage.getItem(key); } catch (e) { return null; }
    },
    set(key, value) {
      try {
        if (value === null || value === undefined || value === "") {
          window.localStorage.removeItem(key);
        } else {
          window.localStorage.setItem(key, value);
        }
      } catch (e) { /* private mode: the token lives for this page only */ memoryToken = value; }
    },
  };
  let memoryToken = null;

  function randomId() {
    // crypto.randomUUID needs a secure context; a LAN device is plain http.
    const bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "—";
    if (n < 1024) return n + " B";
    const units = ["KB", "MB", "GB", "TB"];
    let value = n / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (value >= 10 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function fmtDurationMs(ms) {
    if (typeof ms !== "number" || !isFinite(ms) || ms <= 0) return "";
    if (ms < 10000) return (ms / 1000).toFixed(1) + " s";
    const s = Math.round(ms / 1000);
    return s < 120 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  function fmtUptime(sec) {
    if (typeof sec !== "number" || !isFinite(sec)) return "—";
    sec = Math.max(0, Math.floor(sec));
    const d = Math.floor(sec / 86400);
    const hrs = Math.floor((sec % 86400) / 3600);
    const min = Math.floor((sec % 3600) / 60);
    if (d) return d + " d " + hrs + " h";
    if (hrs) return hrs + " h " + min + " min";
    if (min) return min + " min";
    return sec + " s";
  }

  function num(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : null;
  }

  // A tiny event bus: later panels (issue 10) subscribe instead of patching the pollers.
  const listeners = {};
  function on(name, fn) { (listeners[name] = listeners[name] || []).push(fn); }
  function emit(name, payload) {
    for (const fn of listeners[name] || []) {
      try { fn(payload); } catch (err) { console.error("LOOP dashboard:", name, err); }
    }
  }

  // ---------------------------------------------------------------- toast messages
  let toastTimer = null;
  function notify(text, kind) {
    const box = $("#message");
    setText(box, text);
    setAttr(box, "data-kind", kind || "info");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 8000 : 4000);
  }

  // ---------------------------------------------------------------- errors
  class NetworkError extends Error {
    constructor(message) { super(message || "LOOP cannot be reached."); this.name = "NetworkError"; }
  }
  class ApiError extends Error {
    constructor(status, message, code, retryAfter) {
      super(message || ("HTTP " + status));
      this.name = "ApiError";
      this.status = status;
      this.code = code || null;
      this.retryAfter = retryAfter;
    }
  }

  function parseRetryAfter(value) {
    if (!value) return null;
    const secs = Number(value);
    if (isFinite(secs)) return Math.max(0, secs);
    const when = Date.parse(value);
    return isFinite(when) ? Math.max(0, (when - Date.now()) / 1000) : null;
  }

  function parseJson(text) {
    if (!text) return null;
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  // ---------------------------------------------------------------- API token
  const auth = {
    pending: null,
    resolve: null,
    reject: null,
    token() { return store.get(TOKEN_KEY) || memoryToken || ""; },
    // Show the form (once, however many requests got a 401) and wait for a token.
    require(rejected) {
      if (rejected) {
        store.set(TOKEN_KEY, null);
        memoryToken = null;
      }
      if (!this.pending) {
        this.pending = new Promise((resolve, reject) => {
          this.resolve = resolve;
          this.reject = reject;
        });
        this.show(rejected
          ? "That token was not accepted. Enter the API token set in LOOP's config.json."
          : "This LOOP asks for its API token before it accepts changes.");
      }
      return this.pending;
    },
    show(message) {
      setText($("#token-message"), message);
      $("#token-overlay").hidden = false;
      const input = $("#token-input");
      input.value = "";
      input.focus();
    },
    hide() { $("#token-overlay").hidden = true; },
    submit(value) {
      store.set(TOKEN_KEY, value);
      if (!store.get(TOKEN_KEY)) memoryToken = value;
      this.hide();
      const resolve = this.resolve;
      this.pending = this.resolve = this.reject = null;
      if (resolve) resolve(value);
      notify(value ? "Token saved on this device." : "Token cleared.");
    },
    cancel() {
      this.hide();
      const reject = this.reject;
      this.pending = this.resolve = this.reject = null;
      if (reject) reject(new ApiError(401, "No API token was given, so LOOP refused the change.",
        "unauthorized"));
    },
  };

  // ---------------------------------------------------------------- fetch wrapper
  // Resolves with {status, headers, body, data} for 2xx and 304 (and any status when
  // opts.anyStatus); rejects with NetworkError or ApiError. A 401 shows the token form once
  // and retries the request with the token given.
  async function api(method, path, opts) {
    opts = opts || {};
    const headers = new Headers(opts.headers || {});
    headers.set("Accept", "application/json");
    const token = auth.token();
    if (token) headers.set("Authorization", "Bearer " + token);
    let body;
    if (opts.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(opts.json);
    }
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), opts.timeout || ACTION_TIMEOUT_MS);
    let res;
    let text;
    try {
      res = await fetch(path, {
        method, headers, body, cache: "no-store", credentials: "same-origin",
        redirect: "error", signal: ctrl.signal,
      });
      text = res.status === 304 || method === "HEAD" ? "" : await res.text();
    } catch (err) {
      throw new NetworkError();
    } finally {
      clearTimeout(timer);
    }
    const envelope = parseJson(text);
    const result = {
      status: res.status,
      headers: res.headers,
      body: envelope,
      data: envelope && typeof envelope === "object" ? envelope.data : null,
    };
    if (res.status === 401 && !opts.noAuth) {
      const tries = opts.authTries || 0;
      if (tries >= 3) throw new ApiError(401, "The API token was not accepted.", "unauthorized");
      await auth.require(Boolean(token));
      return api(method, path, Object.assign({}, opts, { authTries: tries + 1 }));
    }
    if (res.ok || res.status === 304 || opts.anyStatus) return result;
    throw new ApiError(res.status,
      (envelope && envelope.message) || res.statusText || "Request failed",
      envelope && envelope.error,
      parseRetryAfter(res.headers.get("Retry-After")));
  }

  function explain(err) {
    if (err instanceof NetworkError) return "LOOP cannot be reached right now. Try again in a moment.";
    if (err instanceof ApiError) {
      if (err.status === 429) return "Too many requests; wait a moment and try again.";
      if (err.status === 503) return "LOOP is busy; try again in a moment.";
      return err.message;
    }
    return String(err && err.message ? err.message : err);
  }

  // Generic XHR sender with upload progress (fetch has none). Used by uploads now and meant
  // for the restore upload of issue 10. Resolves with {status, body, retryAfter}; status 0
  // means the connection failed; rejects only when aborted.
  function xhrSend(opts) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(opts.method || "POST", opts.url);
      xhr.setRequestHeader("Accept", "application/json");
      const token = auth.token();
      if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
      for (const [key, value] of Object.entries(opts.headers || {})) xhr.setRequestHeader(key, value);
      if (opts.onUploadProgress) {
        xhr.upload.addEventListener("progress", (e) => {
          if (e.lengthComputable && e.total > 0) opts.onUploadProgress(e.loaded / e.total);
        });
      }
      if (opts.onUploaded) xhr.upload.addEventListener("load", () => opts.onUploaded());
      xhr.addEventListener("load", () => resolve({
        status: xhr.status,
        body: parseJson(xhr.responseText),
        retryAfter: parseRetryAfter(xhr.getResponseHeader("Retry-After")),
        sentToken: token,
      }));
      xhr.addEventListener("error", () => resolve({ status: 0, body: null, retryAfter: null }));
      xhr.addEventListener("timeout", () => resolve({ status: 0, body: null, retryAfter: null }));
      xhr.addEventListener("abort", () => reject(new Error("aborted")));
      if (opts.onStart) opts.onStart(xhr);
      xhr.send(opts.body);
    });
  }

  // ---------------------------------------------------------------- connection state
  const conn = { failing: false, nextTry: 0, ticker: null, everOk: false };

  function renderConn() {
    const node = $("#conn-state");
    if (conn.failing) {
      setAttr(node, "data-state", "reconnecting");
      const left = Math.ceil((conn.nextTry - Date.now()) / 1000);
      setText(node, left > 0 ? "Reconnecting… retry in " + left + " s" : "Reconnecting…");
    } else if (conn.everOk) {
      setAttr(node, "data-state", "ok");
      setText(node, "Connected");
    }
  }

  function connLost(delayMs) {
    conn.nextTry = Math.max(conn.nextTry, Date.now() + delayMs);
    if (!conn.failing) {
      conn.failing = true;
      conn.ticker = setInterval(renderConn, 1000);
    }
    renderConn();
  }

  function connOk() {
    conn.everOk = true;
    if (conn.failing) {
      conn.failing = false;
      conn.nextTry = 0;
      clearInterval(conn.ticker);
      conn.ticker = null;
      renderConn();
      for (const p of Object.values(pollers)) {
        if (p.failures) { p.failures = 0; p.poke(); }
      }
      emit("reconnected");
    } else {
      renderConn();
    }
  }

  // ---------------------------------------------------------------- pollers
  const pollers = {};

  function backoffMs(failures) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, Math.max(0, failures - 1)));
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  function makePoller(name, task, isActive) {
    const p = { name, timer: null, inflight: false, again: false, failures: 0, sleeping: false };
    p.interval = () => INTERVALS[name][document.hidden ? 1 : 0];
    p.schedule = (ms) => {
      clearTimeout(p.timer);
      p.timer = setTimeout(p.run, ms);
    };
    p.run = async () => {
      clearTimeout(p.timer);
      p.timer = null;
      if (p.inflight) { p.again = true; return; }
      if (isActive && !isActive()) { p.sleeping = true; return; }
      p.sleeping = false;
      p.inflight = true;
      let delay = p.interval();
      try {
        await task();
        p.failures = 0;
        connOk();
      } catch (err) {
        if (err instanceof NetworkError || (err instanceof ApiError &&
            (err.status === 502 || err.status === 504))) {
          p.failures += 1;
          delay = backoffMs(p.failures);
          connLost(delay);
        } else if (err instanceof ApiError) {
          connOk();   // the server answered; it is just unhappy (429/503/5xx)
          delay = Math.max(p.interval(), (err.retryAfter || 0) * 1000, backoffMs(1));
        } else {
          console.error("LOOP dashboard: " + name + " poll failed", err);
        }
      } finally {
        p.inflight = false;
      }
      if (p.again) { p.again = false; delay = Math.min(delay, 50); }
      p.schedule(delay);
    };
    // Run soon (coalesced): after an action, on visibility, or when work appears.
    p.poke = () => {
      if (p.inflight) p.again = true;
      else if (!p.failures || !conn.failing) p.schedule(0);
    };
    pollers[name] = p;
    return p;
  }

  // ---------------------------------------------------------------- state
  let status = null;          // last status snapshot (data of /api/poll/status)
  let statusEtag = null;
  let health = null;          // last health data
  let items = [];             // library in display order (loop first)
  let libraryKey = null;      // JSON of status.library last seen
  const hold = { mode: 0, brightness: 0 };

  // ---------------------------------------------------------------- status
  async function pollStatus() {
    const headers = {};
    if (statusEtag) headers["If-None-Match"] = statusEtag;
    const res = await api("GET", "/api/poll/status", { headers, timeout: POLL_TIMEOUT_MS });
    if (res.status === 304 && status) {
      previewTick(false);
      return;
    }
    statusEtag = res.headers.get("ETag");
    applyStatus(res.data || {});
  }

  function applyStatus(s) {
    const prev = status;
    status = s;
    const player = s.player || {};
    const display = s.display || {};

    setText($("#current-name"), player.item ? (player.name || player.item) : "Nothing playing");
    const state = player.state || "idle";
    setText($("#player-state"), { playing: "Playing", paused: "Paused", idle: "Idle" }[state] || state);
    const pos = [];
    if (typeof player.length === "number" && player.length > 0) {
      // position: 0-based index in the loop, -1 when the item shown is not in the loop
      pos.push(typeof player.position === "number" && player.position >= 0
        ? "item " + Math.min(player.position + 1, player.length) + " of " + player.length
        : "not in the loop (" + player.length + " in loop)");
    }
    if (typeof player.frames === "number" && player.frames > 1) pos.push(player.frames + " frames");
    setText($("#player-position"), pos.length ? "· " + pos.join(" · ") : "");

    const play = $("#btn-play");
    setAttr(play, "data-state", state);
    setText(play, state === "playing" ? "Pause" : "Play");
    setAttr(play, "aria-label", state === "playing" ? "Pause" : "Play");

    if (player.mode && Date.now() > hold.mode) {
      const select = $("#mode-select");
      if (select.value !== player.mode) select.value = player.mode;
    }
    if (typeof player.brightness === "number" && Date.now() > hold.brightness) {
      const slider = $("#brightness");
      if (Number(slider.value) !== player.brightness) slider.value = String(player.brightness);
      showBrightness(player.brightness);
    }
    renderBreaker();

    // Current item highlight on the library cards.
    for (const card of cards.values()) {
      setAttr(card.root, "data-current", card.id === player.item ? "true" : "false");
    }

    const changed = !prev || !prev.player || prev.player.item !== player.item ||
      prev.player.frame !== player.frame || prev.player.state !== player.state;
    previewTick(changed);

    const libKey = JSON.stringify(s.library || null);
    if (libKey !== libraryKey) {
      libraryKey = libKey;
      if (prev) loadLibrary();
    }
    if (s.jobs_active > 0 && pollers.progress.sleeping) pollers.progress.poke();
    renderBanner();
    markReady();
    emit("status", s);
  }

  // ---------------------------------------------------------------- preview
  // The image is fetched as a blob and swapped in only once complete: no flicker, one request
  // in flight, and no cache-busting query strings the server would have to tolerate.
  const preview = { inflight: false, again: false, url: null, scale: 4, panelW: 0, seq: 0, aspect: "",
    failed: false };

  function previewTick(changed) {
    const player = (status && status.player) || {};
    const animating = player.state === "playing" && (player.frames || 0) > 1;
    // a failed fetch is retried on the next tick, even when the status did not change
    if (changed || animating || preview.failed || !preview.url) refreshPreview();
  }

  function wantedScale() {
    if (!preview.panelW) return preview.scale;
    const box = $("#preview-box");
    const px = (box.clientWidth || 320) * (window.devicePixelRatio || 1);
    return Math.max(1, Math.min(16, Math.round(px / preview.panelW)));
  }

  async function refreshPreview() {
    if (preview.inflight) { preview.again = true; return; }
    preview.inflight = true;
    const player = (status && status.player) || {};
    const scale = wantedScale();
    try {
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), POLL_TIMEOUT_MS);
      let res;
      let blob;
      try {
        res = await fetch("/api/display/frame.png?scale=" + scale,
          { cache: "no-store", credentials: "same-origin", signal: ctrl.signal });
        blob = res.ok ? await res.blob() : null;
      } finally {
        clearTimeout(timer);
      }
      preview.failed = !(blob && blob.size);
      if (blob && blob.size) {
        const url = URL.createObjectURL(blob);
        const img = $("#preview");
        await new Promise((resolve) => {
          const done = () => {
            img.removeEventListener("load", done);
            img.removeEventListener("error", done);
            resolve();
          };
          img.addEventListener("load", done);
          img.addEventListener("error", done);
          img.src = url;
        });
        if (preview.url) URL.revokeObjectURL(preview.url);
        preview.url = url;
        preview.seq += 1;
        setAttr(img, "data-item", player.item || "");
        setAttr(img, "data-frame", player.frame === undefined ? "" : player.frame);
        setAttr(img, "data-seq", preview.seq);
        $("#preview-empty").hidden = true;
        if (img.naturalWidth) {
          preview.panelW = Math.max(1, Math.round(img.naturalWidth / scale));
          const aspect = img.naturalWidth + " / " + img.naturalHeight;
          if (aspect !== preview.aspect) {
            preview.aspect = aspect;
            $("#preview-box").style.aspectRatio = aspect;
          }
        }
      }
    } catch (err) {
      // a missed preview frame is harmless (retried next tick); the status poller reports
      // connection loss
      preview.failed = true;
    } finally {
      preview.inflight = false;
    }
    if (preview.again) { preview.again = false; refreshPreview(); }
  }

  // ---------------------------------------------------------------- transport, mode, brightness
  async function transport(action) {
    try {
      const res = await api("POST", "/api/playback/" + action);
      const data = res.data || {};
      const state = data.state || (data.player && data.player.state);
      if (state) {
        const play = $("#btn-play");
        setAttr(play, "data-state", state);
        setText(play, state === "playing" ? "Pause" : "Play");
      }
    } catch (err) {
      notify(explain(err), "error");
    }
    pollers.status.poke();
  }

  async function setMode(mode) {
    hold.mode = Date.now() + ACTION_TIMEOUT_MS;
    try {
      await api("PUT", "/api/playback/mode", { json: { mode } });
    } catch (err) {
      notify(explain(err), "error");
      if (status && status.player && status.player.mode) $("#mode-select").value = status.player.mode;
    } finally {
      hold.mode = Date.now() + USER_HOLD_MS;
    }
    pollers.status.poke();
  }

  function showBrightness(value) {
    setText($("#brightness-value"), Number(value) === 0 ? "off" : value + "%");
  }

  let brightnessTimer = null;
  let brightnessSending = false;
  let brightnessQueued = null;

  function brightnessInput(immediate) {
    const value = Number($("#brightness").value);
    showBrightness(value);
    hold.brightness = Date.now() + USER_HOLD_MS + BRIGHTNESS_DEBOUNCE_MS;
    clearTimeout(brightnessTimer);
    brightnessTimer = setTimeout(() => sendBrightness(value), immediate ? 0 : BRIGHTNESS_DEBOUNCE_MS);
  }

  async function sendBrightness(value) {
    if (brightnessSending) { brightnessQueued = value; return; }
    brightnessSending = true;
    hold.brightness = Date.now() + ACTION_TIMEOUT_MS;
    try {
      await api("PUT", "/api/display", { json: { brightness: value } });
    } catch (err) {
      notify(explain(err), "error");
    } finally {
      brightnessSending = false;
      hold.brightness = Date.now() + USER_HOLD_MS;
    }
    if (brightnessQueued !== null) {
      const next = brightnessQueued;
      brightnessQueued = null;
      sendBrightness(next);
    } else {
      pollers.status.poke();
    }
  }

  // ---------------------------------------------------------------- library
  const cards = new Map();     // id -> {id, root, refs, item}
  const library = { inflight: false, again: false, loaded: false, timer: null };
  let loopOps = 0;             // loop changes in flight: library reloads wait for them
  let loopChain = Promise.resolve();

  async function loadLibrary() {
    if (library.inflight || loopOps > 0) { library.again = true; return; }
    library.inflight = true;
    try {
      const res = await api("GET", "/api/media", { timeout: ACTION_TIMEOUT_MS });
      if (loopOps === 0) {
        items = ((res.data && res.data.items) || []).slice();
        library.loaded = true;
        renderLibrary();
        markReady();
      } else {
        library.again = true;
      }
    } catch (err) {
      if (!(err instanceof NetworkError)) notify("The library could not be loaded: " + explain(err), "error");
      library.again = library.again || !library.loaded;
    } finally {
      library.inflight = false;
    }
    clearTimeout(library.timer);
    library.timer = setTimeout(loadLibrary, LIBRARY_RESYNC_MS);
    if (library.again && loopOps === 0) {
      library.again = false;
      setTimeout(loadLibrary, library.loaded ? 0 : 2000);
    }
    emit("library", items);
  }

  function loopIds() { return items.filter((it) => it.in_loop).map((it) => it.id); }

  // Apply a loop change locally at once, then send the whole list; changes are sent one after
  // another, so the last one a person made is the one that sticks.
  function changeLoop(newIds) {
    const byId = new Map(items.map((it) => [it.id, it]));
    const inLoop = new Set(newIds);
    const loopItems = newIds.map((id) => byId.get(id)).filter(Boolean);
    const rest = items.filter((it) => !inLoop.has(it.id));
    for (const it of loopItems) it.in_loop = true;
    for (const it of rest) it.in_loop = false;
    items = loopItems.concat(rest);
    renderLibrary();
    loopOps += 1;
    const ids = newIds.slice();
    loopChain = loopChain.then(async () => {
      try {
        await api("PUT", "/api/loop", { json: { items: ids } });
      } catch (err) {
        notify("The loop was not changed: " + explain(err), "error");
      } finally {
        loopOps -= 1;
        if (loopOps === 0) { library.again = false; loadLibrary(); pollers.status.poke(); }
      }
    });
  }

  function moveInLoop(id, delta) {
    const ids = loopIds();
    const from = ids.indexOf(id);
    const to = from + delta;
    if (from < 0 || to < 0 || to >= ids.length) return;
    ids.splice(from, 1);
    ids.splice(to, 0, id);
    changeLoop(ids);
  }

  function toggleInLoop(id) {
    const ids = loopIds();
    const at = ids.indexOf(id);
    if (at >= 0) ids.splice(at, 1);
    else ids.push(id);
    changeLoop(ids);
  }

  async function showNow(id) {
    try {
      await api("POST", "/api/playback/select", { json: { id } });
    } catch (err) {
      notify(explain(err), "error");
    }
    pollers.status.poke();
  }

  async function deleteItem(item) {
    if (!window.confirm("Delete \u201c" + item.name + "\u201d from LOOP? This cannot be undone.")) return;
    try {
      await api("DELETE", "/api/media/" + encodeURIComponent(item.id));
      items = items.filter((it) => it.id !== item.id);
      renderLibrary();
      notify("Deleted \u201c" + item.name + "\u201d.");
    } catch (err) {
      notify("Not deleted: " + explain(err), "error");
    }
    loadLibrary();
    pollers.status.poke();
  }

  async function renameItem(card, name) {
    name = name.trim();
    if (!name) { notify("A name cannot be empty.", "error"); return false; }
    try {
      const res = await api("PATCH", "/api/media/" + encodeURIComponent(card.id), { json: { name } });
      const updated = res.data && res.data.id ? res.data : null;
      for (const it of items) if (it.id === card.id) it.name = updated ? updated.name : name;
      card.renaming = false;
      renderLibrary();
      pollers.status.poke();
      return true;
    } catch (err) {
      notify("Not renamed: " + explain(err), "error");
      return false;
    }
  }

  function itemMeta(item) {
    const parts = [];
    if (item.kind) parts.push(item.kind);
    if (item.width && item.height) parts.push(item.width + "\u00d7" + item.height);
    if (item.frames > 1) parts.push(item.frames + " frames");
    const dur = fmtDurationMs(item.duration_ms);
    if (dur && item.kind !== "image") parts.push(dur);
    if (typeof item.bytes === "number") parts.push(fmtBytes(item.bytes));
    return parts.join(" · ");
  }

  function createCard(item) {
    const card = { id: item.id, item, renaming: false, refs: {} };
    const r = card.refs;
    r.thumb = h("img", {
      class: "thumb-img", "data-testid": "item-thumb", loading: "lazy", decoding: "async",
      alt: "", width: 64, height: 32, draggable: "false",
    });
    r.thumb.addEventListener("error", () => r.thumbBox.classList.add("thumb-missing"));
    r.thumb.addEventListener("load", () => r.thumbBox.classList.remove("thumb-missing"));
    r.thumbBox = h("div", { class: "thumb" }, [r.thumb]);
    r.name = h("p", { class: "card-name", "data-testid": "item-name" });
    r.meta = h("p", { class: "card-meta muted" });
    r.badge = h("span", { class: "badge", hidden: true });
    r.renameInput = h("input", {
      type: "text", class: "rename-input", "data-testid": "item-rename-input", maxlength: 200,
      "aria-label": "New name", spellcheck: "false",
    });
    r.renameForm = h("form", { class: "rename-form", hidden: true }, [
      r.renameInput,
      h("button", { type: "submit", class: "btn btn-small btn-primary", "data-testid": "item-rename-save", text: "Save" }),
      h("button", { type: "button", class: "btn btn-small", "data-testid": "item-rename-cancel", text: "Cancel" }),
    ]);
    r.up = h("button", { type: "button", class: "btn btn-icon", "data-testid": "item-up", "aria-label": "Move up", title: "Move earlier", text: "\u2191" });
    r.down = h("button", { type: "button", class: "btn btn-icon", "data-testid": "item-down", "aria-label": "Move down", title: "Move later", text: "\u2193" });
    r.toggle = h("button", { type: "button", class: "btn btn-small btn-toggle", "data-testid": "item-toggle" });
    r.show = h("button", { type: "button", class: "btn btn-small", "data-testid": "item-show", text: "Show now" });
    r.rename = h("button", { type: "button", class: "btn btn-small", "data-testid": "item-rename", text: "Rename" });
    r.download = h("a", { class: "btn btn-small", "data-testid": "item-download", download: "", text: "Download" });
    r.del = h("button", { type: "button", class: "btn btn-small btn-danger", "data-testid": "item-delete", text: "Delete" });
    card.root = h("li", { class: "card", "data-testid": "item-card", "data-id": item.id }, [
      r.thumbBox,
      h("div", { class: "card-info" }, [r.name, r.meta, r.badge, r.renameForm]),
      h("div", { class: "card-actions" }, [r.up, r.down, r.toggle, r.show, r.rename, r.download, r.del]),
    ]);

    r.up.addEventListener("click", () => moveInLoop(card.id, -1));
    r.down.addEventListener("click", () => moveInLoop(card.id, +1));
    r.toggle.addEventListener("click", () => toggleInLoop(card.id));
    r.show.addEventListener("click", () => showNow(card.id));
    r.del.addEventListener("click", () => deleteItem(card.item));
    r.rename.addEventListener("click", () => {
      card.renaming = true;
      r.renameForm.hidden = false;
      r.name.hidden = true;
      r.renameInput.value = card.item.name || "";
      r.renameInput.focus();
      r.renameInput.select();
    });
    const stopRename = () => {
      card.renaming = false;
      r.renameForm.hidden = true;
      r.name.hidden = false;
      r.rename.focus();
    };
    r.renameForm.querySelector("[data-testid=item-rename-cancel]").addEventListener("click", stopRename);
    r.renameInput.addEventListener("keydown", (e) => { if (e.key === "Escape") stopRename(); });
    r.renameForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (await renameItem(card, r.renameInput.value)) stopRename();
    });
    setupCardDrag(card);
    return card;
  }

  function updateCard(card, item, index, loopLength) {
    card.item = item;
    const r = card.refs;
    setAttr(card.root, "data-in-loop", item.in_loop ? "true" : "false");
    setAttr(card.root, "data-current",
      status && status.player && status.player.item === item.id ? "true" : "false");
    setAttr(card.root, "draggable", item.in_loop ? "true" : "false");
    setText(r.name, item.name || item.id);
    setAttr(r.name, "title", item.name || item.id);
    setText(r.meta, itemMeta(item));
    if (item.quarantined) {
      r.badge.hidden = false;
      setText(r.badge, "quarantined: cannot be played");
    } else {
      r.badge.hidden = true;
    }
    const thumb = item.thumb || "/api/media/" + encodeURIComponent(item.id) + "/thumb.png";
    if (r.thumb.getAttribute("src") !== thumb) r.thumb.setAttribute("src", thumb);
    setAttr(r.thumb, "alt", "Thumbnail of " + (item.name || item.id));
    setAttr(r.download, "href", "/api/media/" + encodeURIComponent(item.id) + "/original");
    setAttr(r.download, "aria-label", "Download the original of " + (item.name || item.id));
    r.up.hidden = r.down.hidden = !item.in_loop;
    r.up.disabled = !item.in_loop || index === 0;
    r.down.disabled = !item.in_loop || index >= loopLength - 1;
    setAttr(r.up, "aria-label", "Move " + (item.name || item.id) + " earlier in the loop");
    setAttr(r.down, "aria-label", "Move " + (item.name || item.id) + " later in the loop");
    setAttr(r.toggle, "aria-pressed", item.in_loop ? "true" : "false");
    setText(r.toggle, item.in_loop ? "In loop" : "Not in loop");
    setAttr(r.toggle, "title", item.in_loop ? "Take it out of the loop (kept in the library)"
      : "Add it to the end of the loop");
    r.show.disabled = Boolean(item.quarantined);
    setAttr(r.del, "aria-label", "Delete " + (item.name || item.id));
    setAttr(r.show, "aria-label", "Show " + (item.name || item.id) + " now");
    setAttr(r.rename, "aria-label", "Rename " + (item.name || item.id));
  }

  function reconcile(list, wanted) {
    let cursor = list.firstChild;
    for (const card of wanted) {
      if (card.root !== cursor) list.insertBefore(card.root, cursor);
      else cursor = cursor.nextSibling;
    }
    while (cursor) {
      const next = cursor.nextSibling;
      if (!wanted.some((c) => c.root === cursor)) cursor.remove();
      cursor = next;
    }
  }

  function renderLibrary() {
    const focused = document.activeElement;
    const loopList = $("#library-loop");
    const otherList = $("#library-other");
    const seen = new Set();
    const loopCards = [];
    const otherCards = [];
    const loopLength = items.filter((it) => it.in_loop).length;
    let loopIndex = 0;
    for (const item of items) {
      let card = cards.get(item.id);
      if (!card) { card = createCard(item); cards.set(item.id, card); }
      seen.add(item.id);
      updateCard(card, item, item.in_loop ? loopIndex : -1, loopLength);
      if (item.in_loop) { loopCards.push(card); loopIndex += 1; } else otherCards.push(card);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) { card.root.remove(); cards.delete(id); }
    }
    reconcile(loopList, loopCards);
    reconcile(otherList, otherCards);
    $("#library-other-title").hidden = otherCards.length === 0;
    $("#library-empty").hidden = items.length > 0;
    $("#library").hidden = items.length === 0;
    const total = items.reduce((sum, it) => sum + (typeof it.bytes === "number" ? it.bytes : 0), 0);
    setText($("#library-summary"), items.length
      ? "· " + items.length + (items.length === 1 ? " item" : " items") + " · " + loopLength +
        " in loop · " + fmtBytes(total)
      : "");
    if (focused && focused !== document.activeElement && document.contains(focused)) {
      focused.focus({ preventScroll: true });
    }
  }

  // Desktop reordering by drag and drop (touch uses the up/down buttons).
  const LOOP_DRAG_TYPE = "application/x-loop-item";
  let dragId = null;

  function setupCardDrag(card) {
    const root = card.root;
    root.addEventListener("dragstart", (e) => {
      if (!card.item.in_loop) { e.preventDefault(); return; }
      dragId = card.id;
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData(LOOP_DRAG_TYPE, card.id);
      e.dataTransfer.setData("text/plain", card.item.name || card.id);
      root.classList.add("dragging");
    });
    root.addEventListener("dragend", () => {
      dragId = null;
      root.classList.remove("dragging");
      clearDropMarks();
    });
    root.addEventListener("dragover", (e) => {
      if (!dragId || !card.item.in_loop || dragId === card.id) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "move";
      const after = dropAfter(root, e);
      root.classList.toggle("drop-before", !after);
      root.classList.toggle("drop-after", after);
    });
    root.addEventListener("dragleave", () => root.classList.remove("drop-before", "drop-after"));
    root.addEventListener("drop", (e) => {
      if (!dragId || !card.item.in_loop) return;
      e.preventDefault();
      e.stopPropagation();
      const moving = dragId;
      const after = dropAfter(root, e);
      clearDropMarks();
      dragId = null;
      if (moving === card.id) return;
      const ids = loopIds().filter((id) => id !== moving);
      let at = ids.indexOf(card.id);
      if (at < 0) return;
      if (after) at += 1;
      ids.splice(at, 0, moving);
      changeLoop(ids);
    });
  }

  function dropAfter(root, e) {
    const rect = root.getBoundingClientRect();
    const list = root.parentElement;
    const columns = list ? getComputedStyle(list).gridTemplateColumns.split(" ").length : 1;
    return columns > 1 ? e.clientX > rect.left + rect.width / 2 : e.clientY > rect.top + rect.height / 2;
  }

  function clearDropMarks() {
    document.querySelectorAll(".drop-before, .drop-after").forEach((n) => {
      n.classList.remove("drop-before", "drop-after");
    });
  }

  // ---------------------------------------------------------------- uploads
  const uploads = new Map();   // key -> upload
  const uploadQueue = [];
  let uploadsRunning = 0;
  const ACTIVE_UPLOAD = new Set(["queued", "uploading", "processing", "retrying", "waiting"]);
  const STAGE_WORDS = {
    receiving: "Receiving",
    decoding: "Decoding",
    rendering: "Rendering for the panel",
    done: "Finishing",
    failed: "Failed",
  };

  function uploadErrorWords(statusCode, detail) {
    switch (statusCode) {
      case 0: return "The connection dropped during the upload.";
      case 400: case 411: return "LOOP could not understand the upload.";
      case 403: return "LOOP refused the upload from this device.";
      case 409: return "It conflicts with an item already in the library.";
      case 413: return "Too large: this file is bigger than LOOP accepts.";
      case 415: return "Not a file type LOOP can show (GIF, PNG, JPEG, WebP, BMP, or video when ffmpeg is installed).";
      case 422: return "The file looks broken: LOOP could not read it.";
      case 429: return "Too many uploads in a row.";
      case 503: return "LOOP is busy.";
      case 507: return "The storage on LOOP is full. Delete something and try again.";
      default: return "The upload failed (HTTP " + statusCode + ")" + (detail ? "." : ": no details.");
    }
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    for (const file of files) {
      const up = { key: randomId(), id: null, file, name: file.name || "upload", state: "queued",
        attempts: 0, xhr: null, retryTimer: null, item: null, row: null, refs: {} };
      createUploadRow(up);
      uploads.set(up.key, up);
      uploadQueue.push(up);
      setUpload(up, "queued", "Waiting to upload…", 0);
    }
    pumpUploads();
  }

  function pumpUploads() {
    while (uploadsRunning < UPLOAD_CONCURRENCY && uploadQueue.length) {
      const up = uploadQueue.shift();
      if (up.state === "cancelled") continue;
      startUpload(up);
    }
    renderUploadSummary();
    if (pollers.progress) pollers.progress.poke();
  }

  function createUploadRow(up) {
    const r = up.refs;
    r.name = h("span", { class: "up-name", text: up.name, title: up.name });
    r.size = h("span", { class: "up-size muted", text: fmtBytes(up.file.size) });
    r.status = h("span", { class: "up-status", "data-testid": "upload-status" });
    r.detail = h("span", { class: "up-detail muted", hidden: true });
    r.progress = h("progress", { class: "up-progress", "data-testid": "upload-progress", max: 1, value: 0 });
    r.cancel = h("button", { type: "button", class: "btn btn-small", "data-testid": "upload-cancel", text: "Cancel" });
    r.retry = h("button", { type: "button", class: "btn btn-small", "data-testid": "upload-retry", text: "Retry", hidden: true });
    r.dismiss = h("button", { type: "button", class: "btn btn-small btn-quiet", "data-testid": "upload-dismiss", text: "Dismiss", hidden: true });
    up.row = h("li", { class: "upload-row", "data-testid": "upload-row", "data-name": up.name }, [
      h("div", { class: "up-line" }, [r.name, r.size]),
      r.progress,
      h("div", { class: "up-line" }, [r.status, h("span", { class: "up-buttons" }, [r.retry, r.cancel, r.dismiss])]),
      r.detail,
    ]);
    r.cancel.addEventListener("click", () => cancelUpload(up));
    r.retry.addEventListener("click", () => {
      up.attempts = 0;
      uploadQueue.push(up);
      setUpload(up, "queued", "Waiting to upload…", 0);
      pumpUploads();
    });
    r.dismiss.addEventListener("click", () => {
      uploads.delete(up.key);
      up.row.remove();
      renderUploadSummary();
    });
    $("#upload-list").append(up.row);
  }

  // progress: number 0..1, or null for "busy, amount unknown" (indeterminate bar)
  function setUpload(up, state, text, progress, detail) {
    up.state = state;
    const r = up.refs;
    setAttr(up.row, "data-state", state);
    if (up.id) setAttr(up.row, "data-upload-id", up.id);
    setText(r.status, text);
    if (detail) { setText(r.detail, detail); r.detail.hidden = false; } else if (detail === "") {
      r.detail.hidden = true;
    }
    if (progress === null) r.progress.removeAttribute("value");
    else if (progress !== undefined) r.progress.value = Math.max(0, Math.min(1, progress));
    const active = ACTIVE_UPLOAD.has(state);
    r.cancel.hidden = !active;
    r.retry.hidden = state !== "failed";
    r.dismiss.hidden = active;
    renderUploadSummary();
  }

  function renderUploadSummary() {
    let active = 0;
    let finished = 0;
    for (const up of uploads.values()) {
      if (ACTIVE_UPLOAD.has(up.state)) active += 1; else finished += 1;
    }
    setText($("#upload-summary"), active ? active + (active === 1 ? " file" : " files") + " in progress" : "");
    $("#upload-clear").hidden = finished === 0;
  }

  function cancelUpload(up) {
    clearTimeout(up.retryTimer);
    const wasRunning = up.state === "uploading" || up.state === "processing";
    setUpload(up, "cancelled", "Cancelled", 0, "");
    const at = uploadQueue.indexOf(up);
    if (at >= 0) uploadQueue.splice(at, 1);
    if (wasRunning && up.xhr) up.xhr.abort();   // LOOP drops the partial upload
  }

  async function startUpload(up) {
    uploadsRunning += 1;
    up.attempts += 1;
    up.id = randomId();
    setUpload(up, "uploading", "Uploading… 0%", 0, "");
    const form = new FormData();
    form.append("file", up.file, up.name);
    let res;
    try {
      res = await xhrSend({
        method: "POST", url: "/api/media", body: form,
        headers: { "X-Upload-Id": up.id },
        onStart: (xhr) => { up.xhr = xhr; },
        onUploadProgress: (fraction) => {
          if (up.state === "uploading") {
            setUpload(up, "uploading", "Uploading… " + Math.floor(fraction * 100) + "%", fraction);
          }
        },
        onUploaded: () => {
          if (up.state === "uploading") setUpload(up, "processing", "Processing…", null);
        },
      });
    } catch (aborted) {
      res = null;
    } finally {
      up.xhr = null;
      uploadsRunning -= 1;
    }
    if (res && up.state !== "cancelled") finishUpload(up, res);
    pumpUploads();
  }

  function finishUpload(up, res) {
    const results = res.body && res.body.data && Array.isArray(res.body.data.results)
      ? res.body.data.results : [];
    const first = results[0] || null;
    const serverMessage = (first && first.error) || (res.body && res.body.message) || "";
    if (res.status === 200 || res.status === 201) {
      const code = first && first.status ? first.status : res.status;
      // `item` is the item object (or its id, for older servers)
      const item = first && first.item;
      up.item = item ? (typeof item === "string" ? item : item.id || null) : null;
      if (code === 201) setUpload(up, "done", "Added to the library", 1, "");
      else if (code === 200) setUpload(up, "done", "Already in the library", 1, "");
      else setUpload(up, "failed", uploadErrorWords(code, serverMessage), 0, serverMessage);
      if (up.item) setAttr(up.row, "data-item", up.item);
      loadLibrary();
      pollers.status.poke();
      return;
    }
    if (res.status === 401) {
      setUpload(up, "waiting", "Waiting for the API token…", null, "");
      auth.require(Boolean(res.sentToken)).then(() => {
        if (up.state !== "waiting") return;
        uploadQueue.unshift(up);
        pumpUploads();
      }, () => setUpload(up, "failed", "LOOP needs its API token for uploads.", 0, ""));
      return;
    }
    if ((res.status === 503 || res.status === 429) && up.attempts < UPLOAD_MAX_RETRIES) {
      const wait = Math.min(120, Math.max(1, Math.ceil(res.retryAfter || Math.min(30, 2 * up.attempts))));
      retryCountdown(up, res.status, wait, serverMessage);
      return;
    }
    setUpload(up, "failed", uploadErrorWords(res.status, serverMessage), 0, serverMessage || "");
    if (res.status === 507) pollers.health.poke();
  }

  function retryCountdown(up, statusCode, seconds, detail) {
    const words = uploadErrorWords(statusCode, detail);
    const tick = () => {
      if (up.state !== "retrying") return;
      if (seconds <= 0) {
        uploadQueue.unshift(up);
        pumpUploads();
        return;
      }
      setUpload(up, "retrying", words + " Retrying in " + seconds + " s…", 0);
      seconds -= 1;
      up.retryTimer = setTimeout(tick, 1000);
    };
    up.state = "retrying";
    setUpload(up, "retrying", words + " Retrying in " + seconds + " s…", 0, detail || "");
    tick();
  }

  function uploadsActive() {
    for (const up of uploads.values()) {
      if (up.state === "uploading" || up.state === "processing" || up.state === "queued") return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- progress poller
  const jobRows = new Map();   // job id -> row, for jobs not started from this page

  function progressWanted() {
    return uploadsActive() || jobRows.size > 0 || Boolean(status && status.jobs_active > 0);
  }

  async function pollProgress() {
    const res = await api("GET", "/api/poll/progress", { timeout: POLL_TIMEOUT_MS });
    const jobs = (res.data && res.data.jobs) || [];
    const ours = new Map();
    for (const up of uploads.values()) if (up.id) ours.set(up.id, up);
    const seen = new Set();
    let finishedForeign = false;
    for (const job of jobs) {
      const up = ours.get(job.id);
      const pct = typeof job.progress === "number" ? job.progress : null;
      const stage = STAGE_WORDS[job.stage] || job.stage || "Working";
      if (up) {
        if (up.state === "processing" || up.state === "uploading") {
          // While bytes still flow the XHR's own progress is more precise.
          if (up.state === "processing" || job.stage !== "receiving") {
            setUpload(up, "processing",
              stage + (pct !== null ? "… " + Math.round(pct * 100) + "%" : "…"), pct);
          }
        }
        continue;
      }
      const running = job.stage !== "done" && job.stage !== "failed";
      if (running) {
        seen.add(job.id);
        let row = jobRows.get(job.id);
        if (!row) {
          row = h("li", { class: "upload-row job-row", "data-testid": "job-row", "data-job-id": job.id }, [
            h("div", { class: "up-line" }, [h("span", { class: "up-name" }), h("span", { class: "up-size muted", text: "on LOOP" })]),
            h("progress", { class: "up-progress", max: 1 }),
            h("div", { class: "up-line" }, [h("span", { class: "up-status" })]),
          ]);
          jobRows.set(job.id, row);
          $("#upload-list").append(row);
        }
        setText(row.querySelector(".up-name"), job.name || job.id);
        setText(row.querySelector(".up-status"), stage + (pct !== null ? "… " + Math.round(pct * 100) + "%" : "…"));
        const bar = row.querySelector("progress");
        if (pct === null) bar.removeAttribute("value"); else bar.value = pct;
      }
    }
    for (const [id, row] of jobRows) {
      if (!seen.has(id)) { row.remove(); jobRows.delete(id); finishedForeign = true; }
    }
    if (finishedForeign) loadLibrary();
  }

  // ---------------------------------------------------------------- health
  async function pollHealth() {
    // "always 200 while the server answers"; a 503 with a health body is shown too.
    const res = await api("GET", "/api/poll/health", { timeout: POLL_TIMEOUT_MS, anyStatus: true });
    if (res.status === 502 || res.status === 504) throw new ApiError(res.status, "gateway");
    if (res.data && typeof res.data === "object") applyHealth(res.data);
    else if (res.status >= 400) throw new ApiError(res.status, (res.body && res.body.message) || "health");
  }

  // First numeric field named like one of `keys`, looked up in preferred checks, then in any.
  function findNumber(data, keys, preferredChecks) {
    const checks = (data && data.checks) || {};
    const pools = [];
    for (const name of preferredChecks || []) if (checks[name]) pools.push(checks[name]);
    pools.push(data);
    for (const c of Object.values(checks)) pools.push(c);
    for (const pool of pools) {
      if (!pool || typeof pool !== "object") continue;
      for (const key of keys) {
        if (typeof pool[key] === "number" && isFinite(pool[key])) return pool[key];
      }
    }
    return null;
  }

  function findString(data, keys, preferredChecks) {
    const checks = (data && data.checks) || {};
    for (const name of preferredChecks || []) {
      const c = checks[name];
      if (!c) continue;
      for (const key of keys) if (typeof c[key] === "string" && c[key]) return c[key];
    }
    return null;
  }

  function applyHealth(data) {
    health = data;
    const st = data.status || (data.healthy === false ? "degraded" : data.healthy ? "ok" : "unknown");
    const words = { ok: "healthy", degraded: "degraded", failing: "failing" }[st] || st;
    for (const node of [$("#health-status"), $("#health-pill")]) {
      setAttr(node, "data-status", st);
      setText(node, words);
    }
    const history = Array.isArray(data.history) ? data.history : [];
    const last = history.length ? history[history.length - 1] : {};

    const rss = findNumber(data, ["rss_mb", "process_rss_mb", "used_mb"], ["memory", "rss"]) ??
      (typeof last.rss_mb === "number" ? last.rss_mb : null);
    const limit = findNumber(data, ["limit_mb", "memory_limit_mb", "budget_mb"], ["memory"]);
    const avail = findNumber(data, ["available_mb", "system_available_mb"], ["memory", "system_memory"]);
    let mem = "—";
    if (rss !== null) mem = num(rss, 0) + (limit !== null ? " / " + num(limit, 0) : "") + " MB";
    setText($("#health-memory"), mem);
    setAttr($("#health-memory"), "title", "LOOP's own memory" +
      (limit !== null ? " (budget " + num(limit, 0) + " MB)" : "") +
      (avail !== null ? "; the system has " + num(avail, 0) + " MB available" : ""));

    const cpuCheck = (data.checks && data.checks.cpu) || {};
    const cpu = (typeof cpuCheck.percent === "number" ? cpuCheck.percent : null) ??
      findNumber(data, ["cpu_percent"], ["cpu"]) ??
      (typeof last.cpu_percent === "number" ? last.cpu_percent : null);
    setText($("#health-cpu"), cpu !== null ? num(cpu, 0) + " %" : "—");

    const temp = findNumber(data, ["temp_c", "temperature_c", "soc_temp_c"], ["temperature", "temp", "thermal"]) ??
      (typeof last.temp_c === "number" ? last.temp_c : null);
    setText($("#health-temp"), temp !== null ? num(temp, 1) + " °C" : "not available");

    const diskPct = findNumber(data, ["free_percent", "disk_free_percent"], ["disk", "storage"]);
    const diskMb = findNumber(data, ["free_mb", "disk_free_mb"], ["disk", "storage"]);
    const disk = [];
    if (diskPct !== null) disk.push(num(diskPct, 0) + " %");
    if (diskMb !== null) disk.push(fmtBytes(diskMb * 1024 * 1024));
    setText($("#health-disk"), disk.length ? disk.join(" · ") : "—");

    const uptime = typeof data.uptime_sec === "number" ? data.uptime_sec
      : findNumber(data, ["uptime_sec"], ["uptime"]);
    setText($("#health-uptime"), fmtUptime(uptime));

    renderBreaker();

    sparkline($("#chart-rss"), history.map((p) => p && p.rss_mb));
    sparkline($("#chart-cpu"), history.map((p) => p && p.cpu_percent));
    sparkline($("#chart-temp"), history.map((p) => p && p.temp_c));

    renderChecks(data.checks || {});
    if (data.version !== undefined) setText($("#version"), String(data.version));
    renderBanner();
    emit("health", data);
  }

  // The status snapshot (every 2 s) is fresher than health (every 10 s): it wins.
  function renderBreaker() {
    const fromStatus = status && status.display && status.display.breaker;
    const checks = (health && health.checks) || {};
    const nested = [checks.display && checks.display.breaker, checks.breaker]
      .find((b) => b && typeof b === "object" && typeof b.state === "string");
    const breaker = fromStatus || (nested && nested.state) ||
      findString(health, ["breaker", "state"], ["breaker", "display"]) || "—";
    setText($("#health-breaker"), String(breaker).replace("_", "-"));
  }

  function renderChecks(checks) {
    const list = $("#health-checks");
    const existing = new Map();
    for (const li of Array.from(list.children)) existing.set(li.getAttribute("data-check"), li);
    const names = Object.keys(checks).sort((a, b) => {
      const bad = (n) => ((checks[n] && checks[n].status) === "ok" ? 1 : 0);
      return bad(a) - bad(b) || a.localeCompare(b);
    });
    let cursor = list.firstChild;
    for (const name of names) {
      const c = checks[name] && typeof checks[name] === "object" ? checks[name] : { status: String(checks[name]) };
      let li = existing.get(name);
      if (!li) {
        li = h("li", { class: "check", "data-check": name }, [
          h("span", { class: "check-dot", "aria-hidden": "true" }),
          h("span", { class: "check-name", text: name.replace(/_/g, " ") }),
          h("span", { class: "check-status" }),
          h("span", { class: "check-reason muted" }),
          h("span", { class: "check-nums muted" }),
        ]);
      }
      existing.delete(name);
      setAttr(li, "data-status", c.status || "unknown");
      setText(li.querySelector(".check-status"), c.status || "unknown");
      setText(li.querySelector(".check-reason"), c.reason || "");
      const nums = [];
      for (const [key, value] of Object.entries(c)) {
        if (typeof value === "number" && isFinite(value)) {
          nums.push(key.replace(/_/g, " ") + " " + (Number.isInteger(value) ? value : value.toFixed(1)));
        } else if (typeof value === "boolean" && key !== "ok") {
          nums.push(key.replace(/_/g, " ") + " " + (value ? "yes" : "no"));
        }
      }
      setText(li.querySelector(".check-nums"), nums.slice(0, 6).join(" · "));
      if (li !== cursor) list.insertBefore(li, cursor); else cursor = cursor.nextSibling;
    }
    for (const li of existing.values()) li.remove();
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function sparkline(svg, values) {
    const pts = values.map((v) => (typeof v === "number" && isFinite(v) ? v : null));
    const real = pts.filter((v) => v !== null);
    while (svg.firstChild) svg.firstChild.remove();
    setAttr(svg, "data-points", real.length);
    if (real.length < 2) return;
    let lo = Math.min.apply(null, real);
    let hi = Math.max.apply(null, real);
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const n = pts.length;
    let d = "";
    let pen = false;
    pts.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = n === 1 ? 100 : (i / (n - 1)) * 100;
      const y = 22 - ((v - lo) / (hi - lo)) * 20;
      d += (pen ? "L" : "M") + x.toFixed(2) + " " + y.toFixed(2) + " ";
      pen = true;
    });
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", d.trim());
    path.setAttribute("class", "spark-line");
    path.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(path);
  }

  // ---------------------------------------------------------------- degraded banner
  function renderBanner() {
    const reasons = [];
    const display = (status && status.display) || {};
    let displayExplained = false;
    if (health && health.status && health.status !== "ok") {
      let any = false;
      for (const [name, c] of Object.entries(health.checks || {})) {
        if (c && typeof c === "object" && c.status && c.status !== "ok") {
          reasons.push(name.replace(/_/g, " ") + ": " + (c.reason || c.status));
          if (/display|breaker|panel/i.test(name)) displayExplained = true;
          any = true;
        }
      }
      if (!any) reasons.push("health is " + health.status);
    }
    if (display.status === "degraded" && !displayExplained) {
      reasons.unshift("the LED panel is not responding (display breaker " +
        String(display.breaker || "open").replace("_", "-") +
        "); LOOP keeps playing into the preview");
    }
    const banner = $("#degraded-banner");
    banner.hidden = reasons.length === 0;
    setAttr(banner, "data-status", health && health.status === "failing" ? "failing" : "degraded");
    setText($("#degraded-reason"), reasons.join("; "));
  }

  // ---------------------------------------------------------------- ready flag
  function markReady() {
    if (status && library.loaded && document.body.getAttribute("data-ready") !== "1") {
      document.body.setAttribute("data-ready", "1");
    }
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $("#btn-play").addEventListener("click", () => {
      const state = $("#btn-play").getAttribute("data-state");
      transport(state === "playing" ? "pause" : "play");
    });
    $("#btn-prev").addEventListener("click", () => transport("previous"));
    $("#btn-next").addEventListener("click", () => transport("next"));
    $("#mode-select").addEventListener("change", (e) => setMode(e.target.value));
    const slider = $("#brightness");
    slider.addEventListener("input", () => brightnessInput(false));
    slider.addEventListener("change", () => brightnessInput(true));

    const input = $("#file-input");
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = "";
    });
    const zone = $("#drop-zone");
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    let depth = 0;
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      depth += 1;
      zone.classList.add("drag-over");
    });
    document.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("drag-over");
    });
    document.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();   // the whole page accepts a file drop, not just the zone
      e.dataTransfer.dropEffect = "copy";
    });
    document.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      zone.classList.remove("drag-over");
      addFiles(e.dataTransfer.files);
    });

    $("#upload-clear").addEventListener("click", () => {
      for (const [key, up] of uploads) {
        if (!ACTIVE_UPLOAD.has(up.state)) { up.row.remove(); uploads.delete(key); }
      }
      renderUploadSummary();
    });

    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      auth.submit($("#token-input").value.trim());
    });
    $("#token-cancel").addEventListener("click", () => auth.cancel());
    $("#token-forget").addEventListener("click", () => {
      store.set(TOKEN_KEY, null);
      memoryToken = null;
      auth.cancel();
      notify("The saved token was removed from this device.");
    });
    $("#token-open").addEventListener("click", () => {
      if (!auth.pending) auth.show("Enter the API token set in LOOP's config.json (kept on this device).");
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("#token-overlay").hidden) auth.cancel();
    });

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) for (const p of Object.values(pollers)) p.poke();
    });
    window.addEventListener("online", () => {
      for (const p of Object.values(pollers)) { p.failures = 0; p.poke(); }
    });
    on("reconnected", () => { loadLibrary(); });
  }

  // ---------------------------------------------------------------- extension points
  // Issue 10 will add two panels without touching the pollers:
  //   - schedule: on("status", s => ...) renders the active rule / override / next change into
  //     #schedule-body and unhides #schedule-panel; edits go through api("PUT", "/api/schedule").
  //   - backup/restore: a download button fetching /api/backup with api()'s token header (or a
  //     plain link when no token is set) and a restore file input sent with xhrSend() for
  //     upload progress, both in #maintenance-body, unhiding #maintenance-panel.
  // (operator.js implements both; `token`/`requireToken` let it send the token with a plain
  // fetch for the backup download and ask for it after a 401 from xhrSend.)
  window.LOOP = Object.freeze({
    api, xhrSend, on, notify, explain, loadLibrary, h,
    token: () => auth.token(),
    requireToken: (rejected) => auth.require(Boolean(rejected)),
  });

  function start() {
    wire();
    makePoller("status", pollStatus);
    makePoller("progress", pollProgress, progressWanted);
    makePoller("health", pollHealth);
    pollers.status.run();
    pollers.health.run();
    pollers.progress.run();
    loadLibrary();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
