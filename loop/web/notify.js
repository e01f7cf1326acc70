/* LOOP dashboard, the message box: "show this now" over whatever plays, and the messages on
 * the panel and waiting (docs/notifications.md). Plugs into app.js through window.LOOP; no
 * framework, no inline script or style (CSP).
 *
 * Test contract (tests/test_dashboard_notify.py, test_dashboard_phone.py):
 *   #notify-form          [data-testid=notify-form]: #notify-text, #notify-priority
 *                         (low|normal|high|critical), #notify-duration (seconds; empty = the
 *                         default), #notify-color, #notify-send (each the same data-testid)
 *   #notify-message       [data-testid=notify-message] data-kind=ok|error: the last send's
 *                         result in plain words. A field the server names: the field's label
 *                         and the server's reason, and the field gets aria-invalid=true. A full
 *                         queue (429 queue_full): says so and in how many seconds to try again.
 *                         Hidden as soon as the next action starts.
 *   #notify-queue-box     [hidden] while nothing is on the panel or waiting
 *   #notify-queue         li[data-testid=notify-entry][data-id][data-state=showing|queued|held]
 *                         [data-priority], the one on the panel first, then in the order they
 *                         will show; inside: [data-testid=notify-what] (its text, or the item
 *                         or picture), [data-testid=notify-when] (state · how long · "sent
 *                         HH:MM" · "until HH:MM"; "Tue 14:03" on another day: 24-hour, LOOP's
 *                         time zone, from the absolute posted_at / expires_at, which stay
 *                         true behind a 304, unlike ages),
 *                         [data-testid=notify-dismiss] (DELETE /api/notify/{id}; disabled
 *                         while LOOP is offline)
 *   #notify-count         how many, and of how many the queue holds ("2 of 16")
 *
 * The queue is read from the status poll (data.notifications), which app.js already makes
 * every 2 s with its ETag: a change of the queue moves the ETag, so nothing is polled twice.
 */
(function () {
  "use strict";

  const LOOP = window.LOOP;
  if (!LOOP) return;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const h = LOOP.h;

  // the API's field names (as the server's messages name them) -> the labels on the form
  const LABELS = {
    text: "Message", priority: "Priority", duration_sec: "Seconds", color: "Colour",
    background: "Background", scroll: "Scroll", speed_px_s: "Speed", font: "Font",
    repeat: "Times", expires_sec: "Expires after", brightness: "Brightness", id: "Name",
  };
  const PRIORITY_WORDS = { low: "Low", normal: "Normal", high: "High", critical: "Critical" };
  const STATE_WORDS = {
    showing: "On the panel now",
    queued: "Waiting",
    held: "Held: a night rule lets only urgent ones through",
  };

  const state = { capacity: null, entries: [], dismissing: new Set(), rows: new Map() };

  function fields() {
    return { text: $("#notify-text"), priority: $("#notify-priority"),
      duration_sec: $("#notify-duration"), color: $("#notify-color") };
  }

  function say(text, kind) {
    LOOP.showNote($("#notify-message"), text, kind);
  }

  function seconds(value) {
    if (value < 120) return (Number.isInteger(value) ? value : value.toFixed(1)) + " s";
    const min = value / 60;
    return (Number.isInteger(min) ? min : min.toFixed(1)) + " min";
  }

  // "14:03" (or "Tue 14:03" on another day) in LOOP's zone, from an ISO time; "" for none
  function at(iso) {
    const when = iso ? new Date(iso) : null;
    return when && isFinite(when.getTime()) ? LOOP.clockDay(when) : "";
  }

  function howLong(note) {
    if (typeof note.duration_sec === "number") return "for " + seconds(note.duration_sec);
    if (typeof note.repeat === "number") {
      return note.repeat === 1 ? "once through" : note.repeat + " times through";
    }
    return "";
  }

  // ---------------------------------------------------------------- sending
  async function send(event) {
    event.preventDefault();
    LOOP.beginAction();
    const f = fields();
    LOOP.markInvalid(f, null);
    const body = { text: f.text.value, priority: f.priority.value, color: f.color.value };
    // empty = the default (a marquee once through, anything else notify.duration_sec); what
    // is not a number goes as typed, so the server's own words say what is wrong with it
    const typed = f.duration_sec.value.trim().replace(",", ".");
    if (typed !== "") body.duration_sec = isFinite(Number(typed)) ? Number(typed) : typed;
    const button = $("#notify-send");
    button.disabled = true;
    try {
      const res = await LOOP.api("POST", "/api/notify", { json: body });
      f.text.value = "";
      say(res.status === 200 ? "Sent: it replaced the message of the same name."
        : "Sent. It is in the list below until it has been shown.", "ok");
      LOOP.refresh();
    } catch (err) {
      if (err instanceof LOOP.ApiError && err.status === 429 && err.code === "queue_full") {
        const wait = Math.max(1, Math.ceil(typeof err.retryAfter === "number" ? err.retryAfter : 10));
        say("Not sent: the message queue is full" +
          (state.capacity ? " (" + state.capacity + " messages)" : "") +
          ". Try again in " + wait + " s, or dismiss a message below.", "error");
      } else {
        const problem = LOOP.fieldProblem(err, LABELS);
        LOOP.markInvalid(f, problem.field);
        say("Not sent: " + problem.text, "error");
        if (problem.field && f[problem.field]) f[problem.field].focus();
      }
    } finally {
      button.disabled = false;
    }
  }

  async function loadCapacity() {
    try {
      const res = await LOOP.api("GET", "/api/notify");
      if (res.data && typeof res.data.max_queued === "number") {
        state.capacity = res.data.max_queued;
        renderCount();
      }
      const defaults = (res.data && res.data.defaults) || {};
      if (typeof defaults.duration_sec === "number") {  // what an empty Seconds field means
        document.getElementById("notify-duration").placeholder = defaults.duration_sec + " (default)";
      }
    } catch (err) { /* the count goes without its "of N"; the pollers report a lost connection */ }
  }

  // ---------------------------------------------------------------- the queue
  function entryRow(note) {
    const dismiss = h("button", { type: "button", class: "btn btn-small notify-dismiss",
      "data-testid": "notify-dismiss", text: "Dismiss" });
    const row = {
      note,
      what: h("span", { class: "notify-what", "data-testid": "notify-what" }),
      prio: h("span", { class: "prio" }),
      when: h("span", { class: "notify-when muted", "data-testid": "notify-when" }),
      dismiss,
    };
    row.root = h("li", { class: "notify-entry", "data-testid": "notify-entry" }, [
      h("div", { class: "notify-line" }, [row.what, row.prio]),
      h("div", { class: "notify-line" }, [row.when, dismiss]),
    ]);
    dismiss.addEventListener("click", () => retract(row));
    return row;
  }

  function updateRow(row, note) {
    row.note = note;
    const label = LOOP.noteLabel(note);
    row.root.dataset.id = note.id;
    row.root.dataset.state = note.state || "queued";
    row.root.dataset.priority = note.priority || "normal";
    row.prio.textContent = PRIORITY_WORDS[note.priority] || note.priority || "";
    row.prio.dataset.priority = note.priority || "normal";
    row.what.textContent = label;
    row.what.title = label;
    const parts = [STATE_WORDS[note.state] || note.state, howLong(note)];
    if (at(note.posted_at)) parts.push("sent " + at(note.posted_at));
    if (at(note.expires_at)) parts.push("until " + at(note.expires_at));
    row.when.textContent = parts.filter(Boolean).join(" · ");
    row.dismiss.setAttribute("aria-label", "Dismiss " + label);
    row.dismiss.disabled = !LOOP.online();
  }

  function render(notifications) {
    const queue = Array.isArray(notifications && notifications.queue) ? notifications.queue : [];
    // a dismissed one stays away even if a poll answered before the DELETE still lists it
    for (const id of Array.from(state.dismissing)) {
      if (!queue.some((n) => n.id === id)) state.dismissing.delete(id);
    }
    state.entries = queue.filter((n) => n && n.id && !state.dismissing.has(n.id));
    const list = $("#notify-queue");
    const focused = document.activeElement;
    const keep = new Set();
    let cursor = list.firstChild;
    for (const note of state.entries) {
      let row = state.rows.get(note.id);
      if (!row) { row = entryRow(note); state.rows.set(note.id, row); }
      keep.add(note.id);
      updateRow(row, note);
      if (row.root !== cursor) list.insertBefore(row.root, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const [id, row] of state.rows) {
      if (!keep.has(id)) { row.root.remove(); state.rows.delete(id); }
    }
    if (focused && focused !== document.activeElement && document.contains(focused)) {
      focused.focus({ preventScroll: true });
    }
    $("#notify-queue-box").hidden = state.entries.length === 0;
    renderCount();
  }

  function renderCount() {
    const n = state.entries.length;
    $("#notify-count").textContent = n ? "· " + n + (state.capacity ? " of " + state.capacity : "") : "";
  }

  async function retract(row) {
    LOOP.beginAction();
    const id = row.note.id;
    const label = LOOP.noteLabel(row.note);
    // the next row's button (or the message box) takes the focus the removed one had
    const next = row.root.nextElementSibling || row.root.previousElementSibling;
    state.dismissing.add(id);
    render({ queue: state.entries });
    const focusTarget = next ? $("[data-testid=notify-dismiss]", next) : $("#notify-text");
    if (focusTarget) focusTarget.focus({ preventScroll: true });
    try {
      await LOOP.api("DELETE", "/api/notify/" + encodeURIComponent(id));
    } catch (err) {
      if (!(err instanceof LOOP.ApiError && err.status === 404)) {   // 404: it had ended anyway
        state.dismissing.delete(id);
        LOOP.notify("Not dismissed: " + label + ": " + LOOP.explain(err), "error");
      }
    }
    LOOP.refresh();
  }

  function enableDismiss(enabled) {
    for (const row of state.rows.values()) row.dismiss.disabled = !enabled;
  }

  function start() {
    $("#notify-form").addEventListener("submit", send);
    // a field the server refused is marked until it is changed
    for (const input of Object.values(fields())) {
      input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
    }
    LOOP.on("action", () => say(""));
    LOOP.on("status", (s) => render(s && s.notifications));
    LOOP.on("offline", () => enableDismiss(false));
    LOOP.on("reconnected", () => { enableDismiss(true); loadCapacity(); });
    loadCapacity();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
