/* LOOP dashboard: plain JavaScript, no framework, no build step, no external resources.
 * It only talks to the JSON API (README "HTTP API") and works under the server's CSP
 * (no inline script or style, no eval; element.style is set from here only).
 *
 * ---------------------------------------------------------------------------------------
 * Test contract: stable hooks used by tests/test_dashboard*.py (do not rename casually)
 * ---------------------------------------------------------------------------------------
 *   body[data-ready="1"]        set once the first status and library have been shown
 *   body[data-conn]             connecting | ok | offline (CSS greys the .live panels)
 *   #conn-state                 data-state = connecting | ok | offline; text "Connected" or
 *                               "Offline since HH:MM" (24-hour, the device's time zone)
 *   #offline-banner             shown while offline: #offline-text says when the next try
 *                               is; #offline-retry tries at once
 *   #degraded-banner            [hidden] unless health.status != "ok" or
 *                               status.display.status == "degraded"; #degraded-reason = why
 *   #token-overlay/#token-form  shown after a 401; #token-input, #token-submit, #token-cancel,
 *                               #token-message; #token-open opens it by hand
 *   #message                    toast with the last action's error or notice; hidden as soon
 *                               as the next action starts
 *   #preview  (data-testid=preview)  <img>, src is a blob: URL of /api/display/frame.png;
 *                               data-item, data-frame, data-seq (bumps on every new image)
 *   #current-name (current-name) current item's name;  #player-state (player-state)
 *   #now-notice (now-notice)    [hidden] unless something covers the loop: a message
 *                               (data-cover=notification, data-id = its id) or a night rule's
 *                               clock / dark panel (data-cover=clock|off); one sentence
 *   #btn-prev, #btn-play, #btn-next   (same data-testid); #btn-play text Play|Pause,
 *                               data-state = playing | paused | idle
 *   #mode-select                <select> all | one | shuffle
 *   #fit-select                 <select> contain | cover | stretch (PUT /api/display)
 *   #brightness                 <input type=range 0..100>; #brightness-value shows it
 *   #file-input                 <input type=file multiple>; #drop-zone accepts dropped files
 *   #upload-list                rows li[data-testid=upload-row][data-upload-id][data-name]
 *                               [data-state = queued|uploading|processing|retrying|waiting|
 *                               done|failed|cancelled], running rows first, then queued ones
 *                               in pick order, then finished ones (newest first)
 *                               children: [data-testid=upload-status] plain-words text,
 *                               [data-testid=upload-progress] <progress>,
 *                               [data-testid=upload-cancel] / [data-testid=upload-retry]
 *                               (only when retrying can help) / [data-testid=upload-dismiss]
 *                               server-side jobs not started here: li[data-testid=job-row]
 *   #add-text, #add-clock       (same data-testid; aria-expanded) open the forms
 *                               form#new-text-form [data-testid=new-text-form]:
 *                                 new-text-text, new-text-color, new-text-background,
 *                                 new-text-scroll (auto|always|never), new-text-speed,
 *                                 new-text-save, new-text-cancel, new-text-message
 *                               form#new-clock-form [data-testid=new-clock-form]:
 *                                 new-clock-format (HH:MM|H:MM|hh:MM|h:MM), new-clock-seconds
 *                                 (checkbox), new-clock-color, new-clock-background,
 *                                 new-clock-save, new-clock-cancel, new-clock-message
 *                               (a field the server names gets aria-invalid=true and the
 *                               message says the field's label with the server's reason)
 *   #library                    holds ul#library-loop (loop order) and ul#library-other
 *   #library-empty              shown when there are no items; #library-empty-add opens the
 *                               file picker
 *   item cards                  li[data-testid=item-card][data-id][data-in-loop=true|false]
 *                               [data-kind][data-current=true|false]
 *                               [data-sheet=rename|timing|edit|""]; inside:
 *                               [data-testid=item-thumb] <img loading=lazy>,
 *                               [data-testid=item-name], [data-testid=item-timing-summary],
 *                               [data-testid=item-up], [data-testid=item-down],
 *                               [data-testid=item-toggle] (aria-pressed = in loop),
 *                               [data-testid=item-show], [data-testid=item-download] <a>
 *                               (not on text and clock items: [data-testid=item-edit] instead),
 *                               [data-testid=item-delete] (asks window.confirm first),
 *                               [data-testid=item-rename] opens a full-width form:
 *                                 item-rename-input, item-rename-save, item-rename-cancel,
 *                                 item-rename-message;
 *                               [data-testid=item-timing] opens the play-time form:
 *                                 item-loop-count (animations only), item-duration,
 *                                 item-timing-save, item-timing-cancel, item-timing-message
 *                               [data-testid=item-edit] (text and clock items) opens the edit
 *                                 form: item-edit-text, item-edit-scroll, item-edit-speed
 *                                 (text) or item-edit-format, item-edit-seconds (clock);
 *                                 item-edit-color, item-edit-background, item-edit-save,
 *                                 item-edit-cancel, item-edit-message. Saved, the item has a
 *                                 new id: the same card (the same element) takes it.
 *   #health-status              data-status = ok | degraded | failing | unknown
 *   #health-verdict             one sentence; #health-memory #health-disk #health-temp
 *                               #health-panel-state: the four facts, in MB/GB and °C
 *   #health-details             <details>: #health-rss #health-cpu #health-temp-detail
 *                               #health-uptime #health-breaker, #chart-rss #chart-cpu
 *                               #chart-temp <svg> (data-points = samples drawn) and
 *                               #health-checks li[data-check=<name>][data-status]
 *   #schedule-panel #maintenance-panel  filled by operator.js (its own list of hooks is at
 *                               the top of that file)
 *   #notify-panel               the message box and the queue: notify.js (hooks at its top)
 * ---------------------------------------------------------------------------------------
 *
 * Polling (one request in flight per endpoint, slower while the tab is hidden):
 *   /api/poll/status    every 2 s, If-None-Match with the weak ETag (304 = unchanged)
 *   /api/poll/progress  every 1 s, only while uploads run here or status.jobs_active > 0
 *   /api/poll/health    every 10 s
 *   /api/display        at start, after a reconnect and every minute (for the fit, which
 *                       the status snapshot does not carry)
 * A network failure (or a proxy 502/504) puts the page offline: live state is greyed, the
 * pill says since when, and the pollers back off exponentially (1 s .. 30 s, jittered); the
 * first success anywhere recovers everything without a page reload.
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
  const LIBRARY_RESYNC_MS = 60000;         // catch reorders (and fit changes) by other clients
  const POLL_TIMEOUT_MS = 10000;
  const ACTION_TIMEOUT_MS = 20000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const BRIGHTNESS_DEBOUNCE_MS = 250;
  const USER_HOLD_MS = 2500;               // polls do not overwrite a control just touched
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

  // The health numbers come in MB (floats); people read "33 MB" and "78.1 GB".
  function fmtMB(mb) {
    if (typeof mb !== "number" || !isFinite(mb)) return "—";
    if (mb < 1000) return Math.round(mb) + " MB";
    const gb = mb / 1024;
    return (gb < 100 ? gb.toFixed(1) : gb.toFixed(0)) + " GB";
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

  // One time format everywhere, the device's: 24-hour "HH:MM" in LOOP's time zone (the one
  // its schedule uses), whatever the phone's locale prefers.
  function clock(date) {
    const zone = status && status.schedule && status.schedule.timezone;
    try {
      const parts = new Intl.DateTimeFormat("en-GB", {
        hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: zone || undefined,
      }).formatToParts(date);
      const part = (type) => (parts.find((p) => p.type === type) || {}).value;
      if (part("hour") && part("minute")) return part("hour") + ":" + part("minute");
    } catch (e) { /* an unknown zone name: the browser's own clock below */ }
    return String(date.getHours()).padStart(2, "0") + ":" + String(date.getMinutes()).padStart(2, "0");
  }

  // "14:03" today, else "Tue 14:03" (within a week either way) or "2024-06-11 14:03", by the
  // calendar of LOOP's time zone: a message may wait or expire days from now.
  function clockDay(date) {
    const zone = status && status.schedule && status.schedule.timezone;
    let day = (d) => d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" +
      String(d.getDate()).padStart(2, "0");
    try {
      const fmt = new Intl.DateTimeFormat("en-CA", { year: "numeric", month: "2-digit",
        day: "2-digit", timeZone: zone || undefined });
      day = (d) => fmt.format(d);           // en-CA writes YYYY-MM-DD
    } catch (e) { /* an unknown zone name: the browser's own calendar */ }
    const then = day(date);
    if (then === day(new Date())) return clock(date);
    const apart = Math.abs(Date.parse(then) - Date.parse(day(new Date()))) / 86400000;
    const weekday = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][new Date(then + "T12:00:00Z").getUTCDay()];
    return (apart < 7 ? weekday : then) + " " + clock(date);
  }

  // A tiny event bus: the operator panels subscribe instead of patching the pollers.
  const listeners = {};
  function on(name, fn) {
    (listeners[name] = listeners[name] || []).push(fn);
    // "status" is a state, not a moment: a panel whose script ran after the first answer
    // came (deferred scripts run in order; app.js polls at once) gets the last snapshot now,
    // or it would wait for the next change (until then every poll is a 304).
    if (name === "status" && status) {
      try { fn(status); } catch (err) { console.error("LOOP dashboard:", name, err); }
    }
  }
  function emit(name, payload) {
    for (const fn of listeners[name] || []) {
      try { fn(payload); } catch (err) { console.error("LOOP dashboard:", name, err); }
    }
  }

  // ---------------------------------------------------------------- toast messages
  // A toast belongs to the action that raised it: beginAction() (called as every action
  // starts) takes the previous one away, so an old "Saved." never sits next to a new error.
  let toastTimer = null;
  function notify(text, kind) {
    const box = $("#message");
    setText(box, text);
    setAttr(box, "data-kind", kind || "info");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 8000 : 4000);
  }

  function beginAction() {
    clearTimeout(toastTimer);
    $("#message").hidden = true;
    emit("action");     // the panels' own action messages go too (notify.js)
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

  // The server names the field a 400 is about ("duration_sec: must be a number 0.1..86400");
  // a person reads the label on the screen instead ("Seconds: must be a number 0.1 to
  // 86400"). `labels` maps the API's field names to those labels. Returns {field, text};
  // field is the API's name, or null when the message names none of `labels`.
  function fieldProblem(err, labels) {
    const tidy = (text) => String(text).replace(/(\d+(?:\.\d+)?)\.\.(\d+(?:\.\d+)?)/g, "$1 to $2");
    const text = explain(err);
    const match = err instanceof ApiError && /^([A-Za-z_]+(?:\.[A-Za-z_]+)?): ([\s\S]+)$/.exec(text);
    if (!match || !Object.prototype.hasOwnProperty.call(labels, match[1])) {
      return { field: null, text: tidy(text) };
    }
    return { field: match[1], text: labels[match[1]] + ": " + tidy(match[2]) };
  }

  // Marks the inputs of `fields` (API name -> input) valid, except `bad` (an API name).
  function markInvalid(fields, bad) {
    for (const [name, input] of Object.entries(fields)) {
      if (name === bad) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
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
  // state: connecting (before the first answer) | ok | offline (since `since`).
  const conn = { state: "connecting", since: null, nextTry: 0, ticker: null };

  function renderConn() {
    const pill = $("#conn-state");
    const offline = conn.state === "offline";
    setAttr(pill, "data-state", conn.state);
    setAttr(document.body, "data-conn", conn.state);
    $("#offline-banner").hidden = !offline;
    if (offline) {
      setText(pill, "Offline since " + clock(conn.since));
      const left = Math.ceil((conn.nextTry - Date.now()) / 1000);
      setText($("#offline-text"), "LOOP is not answering. " +
        (left > 0 ? "Next try in " + left + " s." : "Trying again now…"));
    } else if (conn.state === "ok") {
      setText(pill, "Connected");
    }
  }

  // What the page last heard is no longer known to be true: say so instead of showing a green
  // "healthy" and "Playing" from before (CSS greys the .live panels on body[data-conn]).
  function showLiveUnknown() {
    setText($("#player-state"), "Not known while offline");
    setText($("#player-position"), "");
    for (const node of [$("#health-status"), $("#health-pill")]) {
      setAttr(node, "data-status", "unknown");
      setText(node, "unknown");
    }
    setText($("#health-verdict"), "Not known: LOOP is not answering.");
  }

  // The player's controls cannot reach LOOP while it is offline (and "Pause" would claim it
  // plays): they are disabled until it answers again.
  const LIVE_CONTROLS = ["#btn-prev", "#btn-play", "#btn-next", "#mode-select", "#fit-select", "#brightness"];
  function enableLiveControls(enabled) {
    for (const sel of LIVE_CONTROLS) $(sel).disabled = !enabled;
  }

  // `retryMs` is when the status poller (the one the banner counts down for) tries again.
  function connLost(retryMs) {
    if (retryMs !== undefined) conn.nextTry = Date.now() + retryMs;
    if (conn.state !== "offline") {
      conn.state = "offline";
      conn.since = new Date();
      statusEtag = null;          // the first answer after this must be a full snapshot
      conn.ticker = setInterval(renderConn, 1000);
      showLiveUnknown();
      enableLiveControls(false);
      emit("offline");
    }
    renderConn();
  }

  function connOk() {
    const wasOffline = conn.state === "offline";
    conn.state = "ok";
    if (wasOffline) {
      conn.nextTry = 0;
      conn.since = null;
      clearInterval(conn.ticker);
      conn.ticker = null;
      enableLiveControls(true);
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
    // `manual` (the "Try now" button): a failed try does not lengthen the back-off.
    p.run = async (manual) => {
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
          if (manual !== true || !p.failures) p.failures += 1;
          delay = backoffMs(p.failures);
          connLost(name === "status" ? delay : undefined);
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
      else if (!p.failures || conn.state !== "offline") p.schedule(0);
    };
    pollers[name] = p;
    return p;
  }

  function tryNow() {
    pollers.status.run(true);
  }

  // ---------------------------------------------------------------- state
  let status = null;          // last status snapshot (data of /api/poll/status)
  let statusEtag = null;
  let health = null;          // last health data
  let items = [];             // library in display order (loop first)
  let libraryKey = null;      // JSON of status.library last seen
  const hold = { mode: 0, brightness: 0, fit: 0 };

  // ---------------------------------------------------------------- status
  async function pollStatus() {
    const headers = {};
    if (statusEtag) headers["If-None-Match"] = statusEtag;
    const res = await api("GET", "/api/poll/status", { headers, timeout: POLL_TIMEOUT_MS });
    if (res.status === 304 && status) {
      // A control held while the person used it catches up once the hold is over, even
      // when nothing changed since (a change from elsewhere may have come during the hold).
      syncControls(status.player || {});
      previewTick(false);
      return;
    }
    statusEtag = res.headers.get("ETag");
    applyStatus(res.data || {});
  }

  /** Mode and brightness follow the device, except while a person is using them. */
  function syncControls(player) {
    if (player.mode && Date.now() > hold.mode) {
      const select = $("#mode-select");
      if (select.value !== player.mode) select.value = player.mode;
    }
    if (typeof player.brightness === "number" && Date.now() > hold.brightness) {
      const slider = $("#brightness");
      if (Number(slider.value) !== player.brightness) slider.value = String(player.brightness);
      showBrightness(player.brightness);
    }
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

    renderNowNotice(s);
    syncControls(player);
    if (display.fit) showFit(display.fit);    // a newer server may send it here
    renderBreaker();
    renderPanelFact();

    // Current item highlight on the library cards.
    for (const card of cards.values()) {
      setAttr(card.root, "data-current", card.id === player.item ? "true" : "false");
    }

    const changed = !prev || !prev.player || prev.player.item !== player.item ||
      prev.player.frame !== player.frame || prev.player.state !== player.state ||
      prev.player.notification !== player.notification || prev.player.show !== player.show;
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

  // What covers the loop: a message on the panel, or a night rule's clock or dark panel.
  // The loop's own item and position stay shown above it: that is where it goes on after.
  function renderNowNotice(s) {
    const node = $("#now-notice");
    const player = s.player || {};
    const queue = (s.notifications && s.notifications.queue) || [];
    const showing = player.notification || (s.notifications && s.notifications.showing) || null;
    let cover = "";
    let text = "";
    if (showing) {
      const note = queue.find((n) => n.id === showing) || {};
      cover = "notification";
      text = "A message covers the loop: " + noteLabel(note) +
        (note.priority ? " (" + note.priority + " priority)" : "") +
        ". The loop goes on where it was afterwards.";
    } else if (player.show === "clock") {
      cover = "clock";
      text = "A night rule shows only the clock now; the loop goes on when it ends.";
    } else if (player.show === "off") {
      cover = "off";
      text = "A night rule keeps the panel dark now; the loop goes on when it ends.";
    }
    node.hidden = !cover;
    setAttr(node, "data-cover", cover);
    setAttr(node, "data-id", showing || "");
    setText(node, text);
  }

  // How a person recognises a notification: its text, or the item or picture it shows.
  function noteLabel(note) {
    if (note.kind === "text" && note.text) return "\u201c" + note.text + "\u201d";
    if (note.kind === "item") return "the item \u201c" + (note.name || note.item || "?") + "\u201d";
    if (note.kind === "upload") return "the picture \u201c" + (note.name || "image") + "\u201d";
    return note.id ? "\u201c" + note.id + "\u201d" : "a message";
  }

  // ---------------------------------------------------------------- preview
  // The image is fetched as a blob and swapped in only once complete: no flicker, one request
  // in flight, and no cache-busting query strings the server would have to tolerate.
  const preview = { inflight: false, again: false, url: null, scale: 4, panelW: 0, seq: 0, aspect: "",
    failed: false };

  function previewTick(changed) {
    const player = (status && status.player) || {};
    // A message or a clock moves without the status changing (a marquee, the minutes):
    // the preview follows them on every poll, as it does an animation.
    const current = items.find((it) => it.id === player.item);
    const animating = (player.state === "playing" && (player.frames || 0) > 1) ||
      Boolean(player.notification) || player.show === "clock" ||
      Boolean(current && current.kind === "clock" && player.show !== "off");
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


  // ---------------------------------------------------------------- transport, mode, fit, brightness
  async function transport(action) {
    beginAction();
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
    beginAction();
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

  // The fit is not in the status snapshot (yet): GET /api/display tells it.
  let shownFit = null;
  function showFit(fit) {
    shownFit = fit;
    const select = $("#fit-select");
    if (Date.now() > hold.fit && select.value !== fit) select.value = fit;
  }

  async function loadDisplay() {
    try {
      const res = await api("GET", "/api/display", { timeout: POLL_TIMEOUT_MS });
      if (res.data && res.data.fit) showFit(res.data.fit);
    } catch (err) { /* the pollers report a lost connection; the next resync tries again */ }
  }

  async function setFit(fit) {
    beginAction();
    hold.fit = Date.now() + ACTION_TIMEOUT_MS;
    try {
      const res = await api("PUT", "/api/display", { json: { fit } });
      shownFit = (res.data && res.data.fit) || fit;
      notify("Fit changed: LOOP prepares every item again for the panel.");
    } catch (err) {
      notify("The fit was not changed: " + explain(err), "error");
      if (shownFit) $("#fit-select").value = shownFit;
    } finally {
      hold.fit = Date.now() + USER_HOLD_MS;
    }
    loadLibrary();
    pollers.status.poke();
  }

  function showBrightness(value) {
    setText($("#brightness-value"), Number(value) === 0 ? "off" : value + "%");
  }

  let brightnessTimer = null;
  let brightnessSending = false;
  let brightnessQueued = null;

  function brightnessInput(immediate) {
    beginAction();
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
  const cards = new Map();     // id -> {id, root, refs, item, sheet}
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
        playDefaults = (res.data && res.data.defaults) || playDefaults;
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
    library.timer = setTimeout(resync, LIBRARY_RESYNC_MS);
    if (library.again && loopOps === 0) {
      library.again = false;
      setTimeout(loadLibrary, library.loaded ? 0 : 2000);
    }
    emit("library", items);
  }

  function resync() {
    loadDisplay();
    loadLibrary();
  }

  function loopIds() { return items.filter((it) => it.in_loop).map((it) => it.id); }

  // Apply a loop change locally at once, then send the whole list; changes are sent one after
  // another, so the last one a person made is the one that sticks.
  function changeLoop(newIds) {
    beginAction();
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
    beginAction();
    try {
      await api("POST", "/api/playback/select", { json: { id } });
    } catch (err) {
      notify(explain(err), "error");
    }
    pollers.status.poke();
  }

  async function deleteItem(item) {
    beginAction();
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

  // PATCH /api/media/{id}; on success the local copy takes the server's answer.
  async function patchItem(card, changes) {
    const res = await api("PATCH", "/api/media/" + encodeURIComponent(card.id), { json: changes });
    const updated = res.data && res.data.id ? res.data : null;
    if (updated) {
      followItem(card, updated);
    } else {
      for (const it of items) if (it.id === card.id) Object.assign(it, changes);
      renderLibrary();
    }
    pollers.status.poke();
  }

  // The server's answer for a card's item. An edited text or clock is a new item (its id is
  // its content's hash) that took the old one's place in the loop: the same card, the same
  // element (focus, scroll position, an open sheet) takes the new id. Had the edit made a
  // text that was in the library already, that item's own card goes: it is this one now.
  function followItem(card, updated) {
    const oldId = card.id;
    if (updated.id !== oldId) {
      const twin = cards.get(updated.id);
      if (twin && twin !== card) { twin.root.remove(); cards.delete(updated.id); }
      items = items.filter((it) => it.id !== updated.id);
      cards.delete(oldId);
      card.id = updated.id;
      cards.set(updated.id, card);
      setAttr(card.root, "data-id", updated.id);
    }
    items = items.map((it) => (it.id === oldId ? Object.assign({}, it, updated) : it));
    renderLibrary();
  }

  // ---- per-card sheets: the rename form and the play-time form, full card width
  function sheetMessage(node, text) {
    setText(node, text);
    node.hidden = !text;
  }

  function openSheet(card, which) {
    beginAction();
    const r = card.refs;
    if (which === "edit" && !card.edit) buildEditForm(card);
    card.sheet = which;
    setAttr(card.root, "data-sheet", which);
    setAttr(card.root, "draggable", "false");   // text in a draggable element cannot be selected
    r.renameForm.hidden = which !== "rename";
    r.timingForm.hidden = which !== "timing";
    if (card.edit) card.edit.form.hidden = which !== "edit";
    sheetMessage(r.renameMessage, "");
    sheetMessage(r.timingMessage, "");
    if (which === "rename") {
      r.renameInput.value = card.item.name || "";
      r.renameInput.focus();
      r.renameInput.select();
    } else if (which === "edit") {
      card.edit.reset(card.item.spec);
      card.edit.first.focus();
    } else {
      fillTimingForm(card);
      (isStill(card.item) ? r.durationInput : r.countInput).focus();
    }
  }

  function closeSheet(card) {
    const which = card.sheet;
    card.sheet = "";
    setAttr(card.root, "data-sheet", "");
    setAttr(card.root, "draggable", card.item.in_loop ? "true" : "false");
    card.refs.renameForm.hidden = true;
    card.refs.timingForm.hidden = true;
    if (card.edit) card.edit.form.hidden = true;
    const opener = { rename: card.refs.rename, timing: card.refs.timing, edit: card.refs.edit }[which];
    if (opener) opener.focus();
  }

  async function submitRename(card) {
    beginAction();
    const r = card.refs;
    sheetMessage(r.renameMessage, "");
    const name = r.renameInput.value.trim();
    if (!name) { sheetMessage(r.renameMessage, "A name cannot be empty."); return; }
    try {
      await patchItem(card, { name });
      closeSheet(card);
    } catch (err) {
      sheetMessage(r.renameMessage, "Not renamed: " + explain(err));
    }
  }

  // ---- play time: loop_count (times an animation plays) and duration_sec (seconds on the
  // panel; for an animation it wins over loop_count). null = LOOP's configured default.
  function isStill(item) { return !(item.frames > 1); }
  let playDefaults = {};  // GET /api/media's defaults: what an empty field stands for

  function defaultWords(still) {
    const d = playDefaults;
    if (still) {
      return typeof d.static_image_duration_sec === "number"
        ? "Empty: the default, " + d.static_image_duration_sec + " s." : "Empty: LOOP's default time for pictures.";
    }
    if (typeof d.item_duration_sec === "number" && d.item_duration_sec > 0) {
      return "Empty: the default, " + d.item_duration_sec + " s. Seconds, when set, win over times.";
    }
    if (typeof d.loop_count === "number") {
      return "Empty: the default, " + d.loop_count + (d.loop_count === 1 ? " time" : " times") +
        ". Seconds, when set, win over times.";
    }
    return "Empty: LOOP's defaults. Seconds, when set, win over times.";
  }

  function timingWords(item) {
    const secs = typeof item.duration_sec === "number" ? item.duration_sec : null;
    if (isStill(item)) return secs !== null ? "shows " + secs + " s" : "";
    if (secs !== null) return "plays " + secs + " s";
    if (typeof item.loop_count === "number") {
      return "plays " + item.loop_count + (item.loop_count === 1 ? " time" : " times");
    }
    return "";
  }

  function fillTimingForm(card) {
    const r = card.refs;
    const item = card.item;
    const still = isStill(item);
    r.countField.hidden = still;
    r.countInput.value = typeof item.loop_count === "number" ? String(item.loop_count) : "";
    r.durationInput.value = typeof item.duration_sec === "number" ? String(item.duration_sec) : "";
    setText(r.durationLabel, still ? "Seconds on screen" : "Or seconds (wins)");
    setText(r.timingHint, defaultWords(still));
  }

  // A field's text as the API wants it: null when empty, a number when valid, else undefined.
  function readNumber(input, isWhole, lo, hi) {
    const text = input.value.trim().replace(",", ".");
    if (text === "") return null;
    const value = Number(text);
    if (!isFinite(value) || value < lo || value > hi || (isWhole && !Number.isInteger(value))) {
      return undefined;
    }
    return value;
  }

  async function submitTiming(card) {
    beginAction();
    const r = card.refs;
    sheetMessage(r.timingMessage, "");
    const changes = {};
    const seconds = readNumber(r.durationInput, false, 0.1, 86400);
    if (seconds === undefined) {
      sheetMessage(r.timingMessage, "Seconds: a number from 0.1 to 86400, or empty for the default.");
      return;
    }
    changes.duration_sec = seconds;
    if (!isStill(card.item)) {
      const count = readNumber(r.countInput, true, 1, 10000);
      if (count === undefined) {
        sheetMessage(r.timingMessage, "Times: a whole number from 1 to 10000, or empty for the default.");
        return;
      }
      changes.loop_count = count;
    }
    try {
      await patchItem(card, changes);
      closeSheet(card);
    } catch (err) {
      sheetMessage(r.timingMessage, "Not saved: " + explain(err));
    }
  }

  function itemMeta(item) {
    const spec = item.spec || {};
    if (item.kind === "clock") {
      const c = spec.clock || {};
      return ["clock", c.format ? c.format + (c.seconds ? ":SS" : "") : "", "the time now"]
        .filter(Boolean).join(" · ");
    }
    if (item.kind === "text") {
      const moving = item.frames > 1;
      return ["text", moving ? "scrolls" : "still", fmtDurationMs(moving ? item.duration_ms : 0)]
        .filter(Boolean).join(" · ");
    }
    const parts = [];
    if (item.kind) parts.push(item.kind);
    if (item.width && item.height) parts.push(item.width + "\u00d7" + item.height);
    if (item.frames > 1) parts.push(item.frames + " frames");
    const dur = fmtDurationMs(item.duration_ms);
    if (dur && item.kind !== "image") parts.push(dur);
    if (typeof item.bytes === "number") parts.push(fmtBytes(item.bytes));
    return parts.join(" · ");
  }

  function button(testid, text, cls, attrs) {
    return h("button", Object.assign({ type: "button", class: "btn " + (cls || ""), "data-testid": testid, text }, attrs || {}));
  }

  function buildRenameForm(card) {
    const r = card.refs;
    r.renameInput = h("input", {
      type: "text", class: "rename-input", "data-testid": "item-rename-input", maxlength: 200,
      spellcheck: "false", autocomplete: "off", enterkeyhint: "done",
    });
    r.renameMessage = h("p", { class: "form-message", "data-kind": "error", "data-testid": "item-rename-message", role: "alert", hidden: true });
    r.renameForm = h("form", { class: "sheet rename-form", hidden: true }, [
      h("label", { class: "field" }, [h("span", { class: "field-label", text: "New name" }), r.renameInput]),
      r.renameMessage,
      h("div", { class: "form-actions" }, [
        button("item-rename-save", "Save name", "btn-primary", { type: "submit" }),
        button("item-rename-cancel", "Cancel"),
      ]),
    ]);
    r.renameForm.querySelector("[data-testid=item-rename-cancel]").addEventListener("click", () => closeSheet(card));
    r.renameInput.addEventListener("keydown", (e) => { if (e.key === "Escape") closeSheet(card); });
    r.renameForm.addEventListener("submit", (e) => { e.preventDefault(); submitRename(card); });
  }

  function buildTimingForm(card) {
    const r = card.refs;
    r.countInput = h("input", {
      type: "number", class: "timing-input", "data-testid": "item-loop-count", min: 1, max: 10000,
      step: 1, inputmode: "numeric", placeholder: "default",
    });
    r.durationInput = h("input", {
      type: "number", class: "timing-input", "data-testid": "item-duration", min: 0.1, max: 86400,
      step: "any", inputmode: "decimal", placeholder: "default",
    });
    r.countField = h("label", { class: "field" }, [h("span", { class: "field-label", text: "Times through" }), r.countInput]);
    r.durationLabel = h("span", { class: "field-label" });
    r.timingHint = h("p", { class: "muted small", "data-testid": "item-timing-hint" });
    r.timingMessage = h("p", { class: "form-message", "data-kind": "error", "data-testid": "item-timing-message", role: "alert", hidden: true });
    r.timingForm = h("form", { class: "sheet timing-form", hidden: true, novalidate: true }, [
      h("div", { class: "timing-fields" }, [r.countField, h("label", { class: "field" }, [r.durationLabel, r.durationInput])]),
      r.timingHint,
      r.timingMessage,
      h("div", { class: "form-actions" }, [
        button("item-timing-save", "Save play time", "btn-primary", { type: "submit" }),
        button("item-timing-cancel", "Cancel"),
      ]),
    ]);
    r.timingForm.querySelector("[data-testid=item-timing-cancel]").addEventListener("click", () => closeSheet(card));
    r.timingForm.addEventListener("keydown", (e) => { if (e.key === "Escape") closeSheet(card); });
    r.timingForm.addEventListener("submit", (e) => { e.preventDefault(); submitTiming(card); });
  }

  // ---- text and clock items: one form builder for "Add text" / "Add clock" and for a card's
  // edit sheet. Field names are the API's (POST /api/media, PATCH /api/media/{id};
  // docs/notifications.md, "Text items"); the server checks every value and names the field.
  function isGenerated(item) { return item.kind === "text" || item.kind === "clock"; }

  const TEXT_DEFAULTS = { text: "", color: "#ffffff", background: "#000000", scroll: "auto", speed_px_s: 30 };
  const CLOCK_DEFAULTS = { format: "HH:MM", seconds: false, color: "#ff8000", background: "#000000" };
  const SPEC_LABELS = {
    text: "Text", color: "Text colour", background: "Background", scroll: "Scroll",
    speed_px_s: "Speed", font: "Font", name: "Name", clock: "Clock", "clock.format": "Format",
    "clock.seconds": "Seconds", "clock.color": "Colour", "clock.background": "Background",
    "clock.font": "Font",
  };
  const SCROLL_CHOICES = [["auto", "If needed"], ["always", "Always"], ["never", "Never"]];
  const CLOCK_FORMATS = [["HH:MM", "24-hour, 09:05"], ["H:MM", "24-hour, 9:05"],
    ["hh:MM", "12-hour, 09:05"], ["h:MM", "12-hour, 9:05"]];

  // A number field as sent: empty = left out (the default, or unchanged on an edit), a
  // number when it is one, else the text as typed, for the server to name.
  function typedNumber(input) {
    const text = input.value.trim().replace(",", ".");
    if (text === "") return undefined;
    const value = Number(text);
    return isFinite(value) ? value : text;
  }

  /** The fields of a text ("text") or clock ("clock") item; `prefix` names the test ids. */
  function specForm(kind, prefix, saveText) {
    const f = { kind, inputs: {} };
    const field = (label, input, cls) => h("label", { class: "field " + (cls || "") },
      [h("span", { class: "field-label", text: label }), input]);
    const select = (testid, choices) => h("select", { "data-testid": testid },
      choices.map(([value, text]) => h("option", { value, text })));
    const colour = (testid) => h("input", { type: "color", "data-testid": testid });
    const rows = [];
    if (kind === "text") {
      f.inputs.text = h("input", { type: "text", "data-testid": prefix + "-text", maxlength: 500,
        autocomplete: "off", enterkeyhint: "done", placeholder: "Back in 5 minutes" });
      f.inputs.scroll = select(prefix + "-scroll", SCROLL_CHOICES);
      f.inputs.speed_px_s = h("input", { type: "text", inputmode: "numeric", "data-testid": prefix + "-speed",
        autocomplete: "off", spellcheck: "false", placeholder: "30" });
      rows.push(field("Text", f.inputs.text));
      rows.push(h("div", { class: "pair" }, [field("Scroll", f.inputs.scroll),
        field("Speed (pixels/s)", f.inputs.speed_px_s)]));
    } else {
      f.inputs.format = select(prefix + "-format", CLOCK_FORMATS);
      f.inputs.seconds = h("input", { type: "checkbox", class: "big-check", "data-testid": prefix + "-seconds" });
      rows.push(h("div", { class: "pair" }, [field("Format", f.inputs.format),
        field("Seconds", f.inputs.seconds, "check-field")]));
    }
    f.inputs.color = colour(prefix + "-color");
    f.inputs.background = colour(prefix + "-background");
    rows.push(h("div", { class: "pair" }, [field(kind === "text" ? "Text colour" : "Colour", f.inputs.color),
      field("Background", f.inputs.background)]));
    // API field name (as the server's messages name it) -> input
    const scope = kind === "clock" ? "clock." : "";
    f.names = {};
    for (const [key, input] of Object.entries(f.inputs)) f.names[scope + key] = input;
    f.first = kind === "text" ? f.inputs.text : f.inputs.format;
    f.message = h("p", { class: "form-message", "data-kind": "error", "data-testid": prefix + "-message",
      role: "alert", hidden: true });
    f.save = button(prefix + "-save", saveText, "btn-primary", { type: "submit" });
    f.cancel = button(prefix + "-cancel", "Cancel");
    f.form = h("form", { class: "sheet spec-form", "data-testid": prefix + "-form", novalidate: true,
      autocomplete: "off", hidden: true }, rows.concat([f.message,
      h("div", { class: "form-actions" }, [f.save, f.cancel])]));
    // `spec`: the item's (GET /api/media), or none for a new one
    f.reset = (spec) => {
      const values = kind === "text" ? Object.assign({}, TEXT_DEFAULTS, spec || {})
        : Object.assign({}, CLOCK_DEFAULTS, (spec && spec.clock) || {});
      for (const [key, input] of Object.entries(f.inputs)) {
        if (input.type === "checkbox") input.checked = Boolean(values[key]);
        else input.value = values[key] === undefined || values[key] === null ? "" : String(values[key]);
      }
      f.say("");
      markInvalid(f.names, null);
    };
    f.read = () => {
      const v = f.inputs;
      if (kind === "clock") {
        return { clock: { format: v.format.value, seconds: v.seconds.checked, color: v.color.value,
          background: v.background.value } };
      }
      const body = { text: v.text.value, color: v.color.value, background: v.background.value,
        scroll: v.scroll.value };
      const speed = typedNumber(v.speed_px_s);
      if (speed !== undefined) body.speed_px_s = speed;
      return body;
    };
    f.say = (text) => sheetMessage(f.message, text);
    f.fail = (prefixWords, err) => {
      const problem = fieldProblem(err, SPEC_LABELS);
      markInvalid(f.names, problem.field);
      f.say(prefixWords + problem.text);
      if (problem.field && f.names[problem.field]) f.names[problem.field].focus();
    };
    f.form.addEventListener("keydown", (e) => { if (e.key === "Escape") f.cancel.click(); });
    return f;
  }

  function buildEditForm(card) {
    const f = specForm(card.item.kind === "clock" ? "clock" : "text", "item-edit",
      card.item.kind === "clock" ? "Save clock" : "Save text");
    card.edit = f;
    card.refs.grid.append(f.form);
    f.cancel.addEventListener("click", () => closeSheet(card));
    f.form.addEventListener("submit", (e) => { e.preventDefault(); submitEdit(card); });
  }

  async function submitEdit(card) {
    beginAction();
    const f = card.edit;
    f.say("");
    markInvalid(f.names, null);
    f.save.disabled = true;
    try {
      await patchItem(card, f.read());   // the card follows the new id
      closeSheet(card);
    } catch (err) {
      f.fail("Not saved: ", err);
    } finally {
      f.save.disabled = false;
    }
    loadLibrary();
  }

  // "Add text" and "Add clock" in the Add media panel: POST /api/media with a JSON body.
  const adders = {};

  function buildAdders() {
    const box = $("#add-forms");
    for (const kind of ["text", "clock"]) {
      const f = specForm(kind, "new-" + kind, kind === "text" ? "Add text" : "Add clock");
      f.opener = $("#add-" + kind);
      f.form.id = "new-" + kind + "-form";
      f.reset(null);
      f.opener.addEventListener("click", () => toggleAdder(kind));
      f.cancel.addEventListener("click", () => { beginAction(); closeAdder(kind, true); });
      f.form.addEventListener("submit", (e) => { e.preventDefault(); submitAdder(kind); });
      adders[kind] = f;
      box.append(f.form);
    }
  }

  function toggleAdder(kind) {
    beginAction();
    const opening = adders[kind].form.hidden;
    for (const other of Object.keys(adders)) closeAdder(other, false);
    if (!opening) { adders[kind].opener.focus(); return; }
    const f = adders[kind];
    f.form.hidden = false;
    setAttr(f.opener, "aria-expanded", "true");
    f.first.focus();
  }

  function closeAdder(kind, focusOpener) {
    const f = adders[kind];
    f.form.hidden = true;
    setAttr(f.opener, "aria-expanded", "false");
    if (focusOpener) f.opener.focus();
  }

  async function submitAdder(kind) {
    beginAction();
    const f = adders[kind];
    f.say("");
    markInvalid(f.names, null);
    f.save.disabled = true;
    try {
      const res = await api("POST", "/api/media", { json: f.read() });
      const result = ((res.data && res.data.results) || [])[0] || {};
      const item = result.item && typeof result.item === "object" ? result.item : {};
      const label = "\u201c" + (item.name || (kind === "clock" ? "Clock" : "text")) + "\u201d";
      f.reset(null);
      closeAdder(kind, true);
      notify(result.status === 200 ? label + " is in the library already."
        : "Added " + label + (item.in_loop ? " to the library and the loop." : " to the library."));
      loadLibrary();
      pollers.status.poke();
    } catch (err) {
      f.fail(kind === "clock" ? "No clock added: " : "Not added: ", err);
    } finally {
      f.save.disabled = false;
    }
  }

  function createCard(item) {
    const card = { id: item.id, item, sheet: "", refs: {} };
    const r = card.refs;
    r.thumb = h("img", {
      class: "thumb-img", "data-testid": "item-thumb", loading: "lazy", decoding: "async",
      alt: "", width: 64, height: 32, draggable: "false",
    });
    r.thumb.addEventListener("error", () => r.thumbBox.classList.add("thumb-missing"));
    r.thumb.addEventListener("load", () => r.thumbBox.classList.remove("thumb-missing"));
    // a scrolling text's thumbnail is its first frame, before the text has come in: the
    // card writes the text over it, in its colours, to be recognisable
    r.thumbText = h("span", { class: "thumb-text", "data-testid": "item-thumb-text", "aria-hidden": "true", hidden: true });
    r.thumbBox = h("div", { class: "thumb" }, [r.thumb, r.thumbText]);
    r.name = h("p", { class: "card-name", "data-testid": "item-name" });
    r.meta = h("p", { class: "card-meta muted" });
    r.timingSummary = h("p", { class: "card-meta card-timing", "data-testid": "item-timing-summary" });
    r.badge = h("span", { class: "badge", hidden: true });
    buildRenameForm(card);
    buildTimingForm(card);
    r.up = button("item-up", "\u2191", "btn-icon", { "aria-label": "Move up", title: "Move earlier" });
    r.down = button("item-down", "\u2193", "btn-icon", { "aria-label": "Move down", title: "Move later" });
    r.toggle = button("item-toggle", "", "btn-small btn-toggle");
    r.show = button("item-show", "Show now", "btn-small");
    r.rename = button("item-rename", "Rename", "btn-small");
    r.timing = button("item-timing", "Play time", "btn-small");
    // a text or a clock is edited, not downloaded (its "original" is a few bytes of JSON)
    const generated = isGenerated(item);
    r.download = generated ? null
      : h("a", { class: "btn btn-small", "data-testid": "item-download", download: "", text: "Download" });
    r.edit = generated ? button("item-edit", "Edit", "btn-small") : null;
    r.del = button("item-delete", "Delete", "btn-small btn-danger");
    r.grid = h("div", { class: "card-grid" }, [
      r.thumbBox,
      h("div", { class: "card-info" }, [r.name, r.meta, r.timingSummary, r.badge]),
      h("div", { class: "card-move" }, [r.up, r.down]),
      h("div", { class: "card-actions" }, [r.toggle, r.show, r.rename, r.timing, r.download || r.edit, r.del]),
      r.renameForm,
      r.timingForm,
    ]);
    card.root = h("li", { class: "card", "data-testid": "item-card", "data-id": item.id,
      "data-kind": item.kind || "", "data-sheet": "" }, [r.grid]);

    r.up.addEventListener("click", () => moveInLoop(card.id, -1));
    r.down.addEventListener("click", () => moveInLoop(card.id, +1));
    r.toggle.addEventListener("click", () => toggleInLoop(card.id));
    r.show.addEventListener("click", () => showNow(card.id));
    r.del.addEventListener("click", () => deleteItem(card.item));
    r.rename.addEventListener("click", () => openSheet(card, "rename"));
    r.timing.addEventListener("click", () => openSheet(card, "timing"));
    if (r.edit) r.edit.addEventListener("click", () => openSheet(card, "edit"));
    setupCardDrag(card);
    return card;
  }

  function updateCard(card, item, index, loopLength) {
    card.item = item;
    const r = card.refs;
    const label = item.name || item.id;
    setAttr(card.root, "data-in-loop", item.in_loop ? "true" : "false");
    setAttr(card.root, "data-current",
      status && status.player && status.player.item === item.id ? "true" : "false");
    setAttr(card.root, "draggable", item.in_loop && !card.sheet ? "true" : "false");
    setText(r.name, label);
    setAttr(r.name, "title", label);
    setText(r.meta, itemMeta(item));
    const timing = timingWords(item);
    setText(r.timingSummary, timing);
    r.timingSummary.hidden = !timing;
    if (item.quarantined) {
      r.badge.hidden = false;
      setText(r.badge, "quarantined: cannot be played");
    } else {
      r.badge.hidden = true;
    }
    const spec = item.spec || {};
    const caption = item.kind === "text" && item.frames > 1 && spec.text ? spec.text : "";
    r.thumbText.hidden = !caption;
    setText(r.thumbText, caption);
    if (caption && /^#[0-9a-fA-F]{6}$/.test(spec.color || "")) r.thumbText.style.color = spec.color;
    const thumb = item.thumb || "/api/media/" + encodeURIComponent(item.id) + "/thumb.png";
    if (r.thumb.getAttribute("src") !== thumb) r.thumb.setAttribute("src", thumb);
    setAttr(r.thumb, "alt", "Thumbnail of " + label);
    if (r.download) {
      setAttr(r.download, "href", "/api/media/" + encodeURIComponent(item.id) + "/original");
      setAttr(r.download, "aria-label", "Download the original of " + label);
    }
    if (r.edit) {
      // the spec is known once the item is drawn (a restored one waits for its render)
      r.edit.disabled = !item.spec || Boolean(item.pending);
      setAttr(r.edit, "aria-label", "Edit " + label);
      setAttr(r.edit, "title", r.edit.disabled ? "Being prepared for the panel; try again in a moment"
        : item.kind === "clock" ? "Change the clock's format and colours" : "Change the text and its colours");
    }
    r.up.hidden = r.down.hidden = !item.in_loop;
    r.up.disabled = !item.in_loop || index === 0;
    r.down.disabled = !item.in_loop || index >= loopLength - 1;
    setAttr(r.up, "aria-label", "Move " + label + " earlier in the loop");
    setAttr(r.down, "aria-label", "Move " + label + " later in the loop");
    setAttr(r.toggle, "aria-pressed", item.in_loop ? "true" : "false");
    setText(r.toggle, item.in_loop ? "In loop" : "Not in loop");
    setAttr(r.toggle, "title", item.in_loop ? "Take it out of the loop (kept in the library)"
      : "Add it to the end of the loop");
    r.show.disabled = Boolean(item.quarantined);
    setAttr(r.del, "aria-label", "Delete " + label);
    setAttr(r.show, "aria-label", "Show " + label + " now");
    setAttr(r.rename, "aria-label", "Rename " + label);
    setAttr(r.timing, "aria-label", "Play time of " + label);
    setAttr(r.renameInput, "aria-label", "New name for " + label);
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
  // Files go up one at a time, in the order they were picked. LOOP appends each new item to
  // the end of the loop when its upload finishes, so sending them one after another is what
  // makes the pick order the loop order. (Uploading in parallel and then reordering with
  // PUT /api/loop would send a whole loop list made here and silently undo a reorder someone
  // made on another device meanwhile; and a Pi decodes CPU-bound on one or two cores, so
  // parallel uploads barely finish sooner.) A file that has to wait (503/429 with
  // Retry-After, or the token form) keeps its place: the files after it wait too.
  const uploads = new Map();   // key -> upload
  const uploadQueue = [];      // queued uploads, in pick order
  let uploadRunning = null;
  let uploadSeq = 0;
  const ACTIVE_UPLOAD = new Set(["queued", "uploading", "processing", "retrying", "waiting"]);
  const HOLDS_THE_LINE = new Set(["retrying", "waiting"]);
  const STAGE_WORDS = {
    receiving: "Receiving",
    decoding: "Decoding",
    rendering: "Rendering for the panel",
    done: "Finishing",
    failed: "Failed",
  };

  // The server's status, code and sentence are for the API; a person gets plain words, and a
  // Retry button only when trying again can help (not for a file LOOP cannot read: 413/415/422).
  function uploadProblem(statusCode, message) {
    const says = (re) => re.test(String(message || ""));
    const fixed = (text) => ({ text, retry: false });
    const passing = (text) => ({ text, retry: true });
    switch (statusCode) {
      case 0: return passing("The connection dropped during the upload.");
      case 400: case 411: return passing("The upload did not arrive complete.");
      case 403: return fixed("This LOOP does not take uploads from this device.");
      case 409: return passing("LOOP was busy with this item. Try again in a moment.");
      case 413: return fixed("Too large: this file is bigger than this LOOP accepts.");
      case 415:
        if (says(/ffmpeg|video uploads need/i)) return fixed("This LOOP cannot play videos. Pictures and GIFs work.");
        if (says(/AVIF|HEIF/i)) return fixed("This LOOP cannot read this kind of photo. Save it as JPEG or PNG and add that.");
        if (says(/container/i)) return fixed("This kind of video is not accepted. MP4 or WebM work.");
        return fixed("LOOP cannot show this kind of file. GIF, PNG, JPEG, WebP, BMP and common videos work.");
      case 422:
        if (says(/pixels/i)) return fixed("The picture is too big for this LOOP. Use a smaller one.");
        if (says(/frames is more/i)) return fixed("It has more frames than this LOOP can store. Use a shorter one.");
        if (says(/took longer/i)) return fixed("It took LOOP too long to prepare. Use a shorter or smaller file.");
        if (says(/is empty/i)) return fixed("The file is empty.");
        if (says(/no video stream|no picture size/i)) return fixed("There is no picture in this file.");
        return fixed("The file looks damaged: LOOP could not read it.");
      case 429: return passing("Too many uploads in a row.");
      case 503: return passing("LOOP is busy.");
      case 507: return passing("LOOP's storage is full. Delete something, then retry.");
      default: return { text: "The upload failed (error " + statusCode + ").", retry: statusCode >= 500 };
    }
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length) beginAction();
    for (const file of files) {
      uploadSeq += 1;
      const up = { key: randomId(), seq: uploadSeq, finishedAt: 0, id: null, file,
        name: file.name || "upload", state: "queued", attempts: 0, xhr: null, retryTimer: null,
        item: null, row: null, refs: {} };
      createUploadRow(up);
      uploads.set(up.key, up);
      uploadQueue.push(up);
      setUpload(up, "queued", "Waiting to upload…", 0);
    }
    orderUploadRows();
    pumpUploads();
  }

  function lineHeld() {
    for (const up of uploads.values()) if (HOLDS_THE_LINE.has(up.state)) return true;
    return false;
  }

  function pumpUploads() {
    while (!uploadRunning && !lineHeld() && uploadQueue.length) {
      const up = uploadQueue.shift();
      if (up.state === "queued") startUpload(up);
    }
    renderUploadSummary();
    if (pollers.progress) pollers.progress.poke();
  }

  // Rows: what runs (or waits its turn to run again) on top, then the queue in pick order,
  // then finished rows, newest first. Server-side jobs of other clients go after ours.
  function uploadRank(up) {
    if (up.state === "queued") return 1;
    return ACTIVE_UPLOAD.has(up.state) ? 0 : 2;
  }

  function orderUploadRows() {
    const list = $("#upload-list");
    const ours = Array.from(uploads.values()).sort((a, b) => uploadRank(a) - uploadRank(b) ||
      (uploadRank(a) === 2 ? b.finishedAt - a.finishedAt : a.seq - b.seq));
    const running = ours.filter((up) => uploadRank(up) === 0).map((up) => up.row);
    const rest = ours.filter((up) => uploadRank(up) !== 0).map((up) => up.row);
    const wanted = running.concat(Array.from(jobRows.values()), rest);
    const focused = document.activeElement;
    let cursor = list.firstChild;
    for (const row of wanted) {
      if (row !== cursor) list.insertBefore(row, cursor);
      else cursor = cursor.nextSibling;
    }
    if (focused && focused !== document.activeElement && list.contains(focused)) {
      focused.focus({ preventScroll: true });
    }
  }

  function createUploadRow(up) {
    const r = up.refs;
    r.name = h("span", { class: "up-name", text: up.name, title: up.name });
    r.size = h("span", { class: "up-size muted", text: fmtBytes(up.file.size) });
    r.status = h("span", { class: "up-status", "data-testid": "upload-status" });
    r.progress = h("progress", { class: "up-progress", "data-testid": "upload-progress", max: 1, value: 0 });
    r.cancel = button("upload-cancel", "Cancel", "btn-small");
    r.retry = button("upload-retry", "Retry", "btn-small", { hidden: true });
    r.dismiss = button("upload-dismiss", "Dismiss", "btn-small btn-quiet", { hidden: true });
    up.row = h("li", { class: "upload-row", "data-testid": "upload-row", "data-name": up.name }, [
      h("div", { class: "up-line" }, [r.name, r.size]),
      r.progress,
      h("div", { class: "up-line" }, [r.status, h("span", { class: "up-buttons" }, [r.retry, r.cancel, r.dismiss])]),
    ]);
    r.cancel.addEventListener("click", () => cancelUpload(up));
    r.retry.addEventListener("click", () => {
      beginAction();
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

  // progress: number 0..1, or null for "busy, amount unknown" (indeterminate bar).
  // canRetry: whether a failed upload offers Retry (only when trying again can help).
  function setUpload(up, state, text, progress, canRetry, serverWords) {
    const rankBefore = uploadRank(up);
    up.state = state;
    if (!ACTIVE_UPLOAD.has(state) && !up.finishedAt) up.finishedAt = Date.now() + up.seq / 1e6;
    if (ACTIVE_UPLOAD.has(state)) up.finishedAt = 0;
    const r = up.refs;
    setAttr(up.row, "data-state", state);
    if (up.id) setAttr(up.row, "data-upload-id", up.id);
    setText(r.status, text);
    // the server's own sentence stays at hand for the curious, without a second line
    if (serverWords) setAttr(r.status, "title", serverWords); else r.status.removeAttribute("title");
    if (progress === null) r.progress.removeAttribute("value");
    else if (progress !== undefined) r.progress.value = Math.max(0, Math.min(1, progress));
    const active = ACTIVE_UPLOAD.has(state);
    r.cancel.hidden = !active;
    r.retry.hidden = !(state === "failed" && canRetry);
    r.dismiss.hidden = active;
    if (uploadRank(up) !== rankBefore || !up.row.parentNode) orderUploadRows();
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
    beginAction();
    clearTimeout(up.retryTimer);
    const running = up === uploadRunning;
    setUpload(up, "cancelled", "Cancelled", 0);
    const at = uploadQueue.indexOf(up);
    if (at >= 0) uploadQueue.splice(at, 1);
    if (running && up.xhr) up.xhr.abort();   // LOOP drops the partial upload
    else pumpUploads();                       // a waiting file no longer holds the line
  }

  async function startUpload(up) {
    uploadRunning = up;
    up.attempts += 1;
    up.id = randomId();
    setUpload(up, "uploading", "Uploading… 0%", 0);
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
      uploadRunning = null;
    }
    if (res && up.state !== "cancelled") finishUpload(up, res);
    pumpUploads();
  }

  function requeueFirst(up) {
    setUpload(up, "queued", "Waiting to upload…", 0);
    uploadQueue.unshift(up);
    pumpUploads();
  }

  function finishUpload(up, res) {
    const results = res.body && res.body.data && Array.isArray(res.body.data.results)
      ? res.body.data.results : [];
    const first = results[0] || null;
    const serverWords = (first && first.error) || (res.body && res.body.message) || "";
    if (res.status === 200 || res.status === 201) {
      const code = first && first.status ? first.status : res.status;
      // `item` is the item object (or its id, for older servers)
      const item = first && first.item;
      up.item = item ? (typeof item === "string" ? item : item.id || null) : null;
      if (code === 201) setUpload(up, "done", "Added to the library", 1);
      else if (code === 200) setUpload(up, "done", "Already in the library", 1);
      else failUpload(up, code, serverWords);
      if (up.item) setAttr(up.row, "data-item", up.item);
      loadLibrary();
      pollers.status.poke();
      return;
    }
    if (res.status === 401) {
      setUpload(up, "waiting", "Waiting for the API token…", null);
      auth.require(Boolean(res.sentToken)).then(() => {
        if (up.state === "waiting") requeueFirst(up);
      }, () => {
        setUpload(up, "failed", "LOOP needs its API token for uploads.", 0, true);
        pumpUploads();
      });
      return;
    }
    if ((res.status === 503 || res.status === 429) && up.attempts < UPLOAD_MAX_RETRIES) {
      const wait = Math.min(120, Math.max(1, Math.ceil(res.retryAfter || Math.min(30, 2 * up.attempts))));
      retryCountdown(up, res.status, wait, serverWords);
      return;
    }
    failUpload(up, res.status, serverWords);
    if (res.status === 507) pollers.health.poke();
  }

  function failUpload(up, statusCode, serverWords) {
    const problem = uploadProblem(statusCode, serverWords);
    setUpload(up, "failed", problem.text, 0, problem.retry, serverWords);
  }

  function retryCountdown(up, statusCode, seconds, serverWords) {
    const words = uploadProblem(statusCode, serverWords).text;
    const tick = () => {
      if (up.state !== "retrying") return;
      if (seconds <= 0) { requeueFirst(up); return; }
      setUpload(up, "retrying", words + " Retrying in " + seconds + " s…", 0, false, serverWords);
      seconds -= 1;
      up.retryTimer = setTimeout(tick, 1000);
    };
    setUpload(up, "retrying", words + " Retrying in " + seconds + " s…", 0, false, serverWords);
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
    let added = false;
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
          added = true;
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
    if (added) orderUploadRows();
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

  // Names people read for the checks GET /api/poll/health reports.
  const CHECK_NAMES = {
    memory: "LOOP's memory", system_memory: "System memory", disk: "Storage space",
    temperature: "Temperature", power: "Power supply", cpu: "CPU", threads: "Threads",
    heartbeats: "Heartbeats", display: "Panel", privileges: "Privileges",
    storage: "Library files", http: "Web server",
  };
  const HEALTH_WORDS = { ok: "healthy", degraded: "needs attention", failing: "failing" };

  function checkName(name) {
    return CHECK_NAMES[name] || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  }

  function healthChecks() { return (health && health.checks) || {}; }

  function numberOr(value, fallback) {
    return typeof value === "number" && isFinite(value) ? value : fallback;
  }

  function applyHealth(data) {
    health = data;
    const st = data.status || (data.healthy === false ? "degraded" : data.healthy ? "ok" : "unknown");
    for (const node of [$("#health-status"), $("#health-pill")]) {
      setAttr(node, "data-status", st);
      setText(node, HEALTH_WORDS[st] || st);
    }
    renderVerdict(st);
    renderFacts();
    renderHealthDetails(data);
    renderChecks(data.checks || {});
    if (data.version !== undefined) setText($("#version"), String(data.version));
    renderBanner();
    emit("health", data);
  }

  // One sentence: fine, or what needs attention in the server's own reasons.
  function renderVerdict(st) {
    const problems = [];
    for (const [name, c] of Object.entries(healthChecks())) {
      if (c && typeof c === "object" && c.status && c.status !== "ok") {
        problems.push(checkName(name) + ": " + (c.reason || c.status));
      }
    }
    let text;
    if (st === "ok") text = "Everything is working.";
    else if (st === "failing") text = "Failing. " + (problems.join("; ") || "See the details.");
    else text = "Needs attention. " + (problems.join("; ") || "See the details.");
    setText($("#health-verdict"), text);
  }

  // The four numbers a person acts on: memory, disk, temperature, panel.
  function renderFacts() {
    const checks = healthChecks();
    const mem = checks.memory || {};
    const used = numberOr(mem.total_mb, numberOr(mem.rss_mb, null));
    const limit = numberOr(mem.limit_mb, null);
    setText($("#health-memory"), used === null ? "—" : fmtMB(used) + (limit !== null ? " of " + fmtMB(limit) : ""));
    const sys = checks.system_memory || {};
    setAttr($("#health-memory"), "title", "What LOOP uses" + (limit !== null ? ", of its budget" : "") +
      (typeof sys.available_mb === "number" ? "; the system has " + fmtMB(sys.available_mb) + " available" : ""));

    const disk = checks.disk || {};
    const free = numberOr(disk.free_mb, null);
    const pct = numberOr(disk.free_percent, null);
    setText($("#health-disk"), free === null ? "—"
      : fmtMB(free) + " free" + (pct !== null ? " (" + Math.round(pct) + "%)" : ""));

    const temp = numberOr((checks.temperature || {}).temp_c, null);
    setText($("#health-temp"), temp === null ? "no sensor" : Math.round(temp) + " °C");
    renderPanelFact();
  }

  // The status snapshot (every 2 s) is fresher than health (every 10 s): it wins.
  function renderPanelFact() {
    const display = (status && status.display) || {};
    const check = healthChecks().display || {};
    const driver = display.driver || check.driver;
    let words = "—";
    if (display.status === "degraded" || (check.status && check.status !== "ok")) words = "not responding";
    else if (display.status === "off") words = "off (brightness 0)";
    else if (driver === "headless") words = "none (preview only)";
    else if (driver) words = "OK";
    setText($("#health-panel-state"), words);
  }

  function renderHealthDetails(data) {
    const checks = data.checks || {};
    const history = Array.isArray(data.history) ? data.history : [];
    const last = history.length ? history[history.length - 1] : {};
    const rss = numberOr((checks.memory || {}).rss_mb, numberOr(last.rss_mb, null));
    setText($("#health-rss"), rss === null ? "—" : fmtMB(rss));
    const cpu = numberOr((checks.cpu || {}).percent, numberOr(last.cpu_percent, null));
    setText($("#health-cpu"), cpu === null ? "—" : Math.round(cpu) + "%");
    const temp = numberOr((checks.temperature || {}).temp_c, numberOr(last.temp_c, null));
    setText($("#health-temp-detail"), temp === null ? "no sensor" : num(temp, 1) + " °C");
    const uptime = numberOr(data.uptime_sec, null);
    setText($("#health-uptime"), fmtUptime(uptime));
    renderBreaker();
    sparkline($("#chart-rss"), history.map((p) => p && p.rss_mb));
    sparkline($("#chart-cpu"), history.map((p) => p && p.cpu_percent));
    sparkline($("#chart-temp"), history.map((p) => p && p.temp_c));
  }

  function renderBreaker() {
    const fromStatus = status && status.display && status.display.breaker;
    const checks = healthChecks();
    const nested = [checks.display && checks.display.breaker, checks.breaker]
      .find((b) => b && typeof b === "object" && typeof b.state === "string");
    const breaker = fromStatus || (nested && nested.state) || "—";
    setText($("#health-breaker"), String(breaker).replace("_", "-"));
  }

  // Labels and units for the numbers inside the checks (the details list).
  const DETAIL_LABELS = {
    rss_mb: "LOOP", children_rss_mb: "helpers", total_mb: "total", limit_mb: "budget",
    available_mb: "available", min_mb: "needs at least", free_mb: "free",
    free_percent: "free", min_percent: "needs at least", temp_c: "now", max_c: "limit",
    percent: "busy", load1: "load (1 min)", open_fds: "open files",
    display_age_sec: "panel beat", http_age_sec: "web beat", monitor_age_sec: "monitor beat",
    stale_after_sec: "stale after", watchdog: "systemd watchdog", watchdog_pings: "watchdog pings",
    frames_shown: "frames shown", late_frames: "late frames", index_writes: "index writes",
    pending_render: "waiting to render", dropped: "privileges dropped",
  };
  const DETAIL_SKIP = new Set(["status", "reason", "ok"]);

  function detailValue(key, value) {
    if (typeof value === "boolean") {
      if (key === "watchdog") return value ? "on" : "not used";
      return value ? "yes" : "no";
    }
    if (typeof value === "string") return value;
    if (/_mb$/.test(key)) return fmtMB(value);
    if (/percent$/.test(key)) return Math.round(value) + "%";
    if (/_sec$/.test(key)) return value < 10 ? value.toFixed(1) + " s" : fmtUptime(value);
    if (/_c$/.test(key)) return num(value, 1) + " °C";
    return Number.isInteger(value) ? String(value) : value.toFixed(2);
  }

  function detailLine(c) {
    const parts = [];
    for (const [key, value] of Object.entries(c)) {
      if (DETAIL_SKIP.has(key) || value === null || value === undefined) continue;
      const shown = typeof value === "number" ? isFinite(value)
        : typeof value === "boolean" || (typeof value === "string" && value.length < 40);
      if (!shown) continue;
      parts.push((DETAIL_LABELS[key] || key.replace(/_/g, " ")) + " " + detailValue(key, value));
    }
    return parts.slice(0, 6).join(" · ");
  }

  function renderChecks(checks) {
    const list = $("#health-checks");
    const existing = new Map();
    for (const li of Array.from(list.children)) existing.set(li.getAttribute("data-check"), li);
    const names = Object.keys(checks).sort((a, b) => {
      const bad = (n) => ((checks[n] && checks[n].status) === "ok" ? 1 : 0);
      return bad(a) - bad(b) || checkName(a).localeCompare(checkName(b));
    });
    let cursor = list.firstChild;
    for (const name of names) {
      const c = checks[name] && typeof checks[name] === "object" ? checks[name] : { status: String(checks[name]) };
      let li = existing.get(name);
      if (!li) {
        li = h("li", { class: "check", "data-check": name }, [
          h("span", { class: "check-dot", "aria-hidden": "true" }),
          h("span", { class: "check-name", text: checkName(name) }),
          h("span", { class: "check-status" }),
          h("span", { class: "check-reason muted" }),
          h("span", { class: "check-nums muted" }),
        ]);
      }
      existing.delete(name);
      setAttr(li, "data-status", c.status || "unknown");
      setText(li.querySelector(".check-status"), c.status === "ok" ? "OK" : c.status || "unknown");
      setText(li.querySelector(".check-reason"), c.reason || "");
      setText(li.querySelector(".check-nums"), detailLine(c));
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
  function wireDrop() {
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
  }

  function wireToken() {
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      beginAction();
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
  }

  function wire() {
    $("#btn-play").addEventListener("click", () => {
      const state = $("#btn-play").getAttribute("data-state");
      transport(state === "playing" ? "pause" : "play");
    });
    $("#btn-prev").addEventListener("click", () => transport("previous"));
    $("#btn-next").addEventListener("click", () => transport("next"));
    $("#mode-select").addEventListener("change", (e) => setMode(e.target.value));
    $("#fit-select").addEventListener("change", (e) => setFit(e.target.value));
    const slider = $("#brightness");
    slider.addEventListener("input", () => brightnessInput(false));
    slider.addEventListener("change", () => brightnessInput(true));

    const input = $("#file-input");
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = "";
    });
    $("#library-empty-add").addEventListener("click", () => input.click());
    wireDrop();
    buildAdders();

    $("#upload-clear").addEventListener("click", () => {
      for (const [key, up] of uploads) {
        if (!ACTIVE_UPLOAD.has(up.state)) { up.row.remove(); uploads.delete(key); }
      }
      renderUploadSummary();
    });

    $("#offline-retry").addEventListener("click", tryNow);
    wireToken();

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) for (const p of Object.values(pollers)) p.poke();
    });
    window.addEventListener("online", () => {
      for (const p of Object.values(pollers)) { p.failures = 0; p.poke(); }
    });
    on("reconnected", () => { loadDisplay(); loadLibrary(); });
  }

  // ---------------------------------------------------------------- extension points
  // operator.js adds the schedule and backup/restore panels, notify.js the message box,
  // without touching the pollers: on("status"/"offline"/"reconnected"), api()/xhrSend() with
  // the token, notify()/beginAction() for messages, showNote() for a panel's own message
  // line, fieldProblem()/markInvalid() for a field the server names, clock() for times,
  // refresh() to poll the status at once;
  // `token`/`requireToken` let it send the token with a plain fetch for the backup download
  // and ask for it after a 401 from xhrSend.
  // A panel's own message line, hidden while empty; kind "info" unless told.
  function showNote(node, text, kind) {
    node.dataset.kind = kind || "info";
    sheetMessage(node, text);
  }

  window.LOOP = Object.freeze({
    api, xhrSend, on, notify, beginAction, explain, loadLibrary, h, fieldProblem, markInvalid,
    showNote,
    clock, clockDay, noteLabel, ApiError,
    online: () => conn.state !== "offline",
    refresh: () => pollers.status.poke(),
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
    loadDisplay();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
