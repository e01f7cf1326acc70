/* LOOP dashboard, operator panels: the night/dim schedule and backup/restore.
 * Plugs into app.js through window.LOOP (api, xhrSend, on, notify, explain, loadLibrary, h,
 * showNote, token, requireToken); no framework, no inline script or style (CSP).
 *
 * Test contract (tests/test_dashboard_operator.py):
 *   #schedule-panel            unhidden once the rules are loaded
 *   #schedule-state            [data-testid=schedule-state] one sentence: what the schedule does
 *                              now; data-active-rule (index or ""), data-override (true|false),
 *                              data-next-change (ISO time or "")
 *   #schedule-zone             the time zone the times are in
 *   #schedule-rules            li[data-testid=schedule-rule][data-index][data-invalid?] with
 *                              input[data-testid=rule-name|rule-start|rule-end|rule-brightness]
 *                              (start/end: type=text, 24-hour "HH:MM"; "2200" or "7" are
 *                              tidied to "22:00" / "07:00"),
 *                              input[data-testid=rule-day][value=monday…sunday] (none = every
 *                              day; each a 44 px toggle: the checkbox covers its label),
 *                              select[data-testid=rule-show] loop | clock | off (what the panel
 *                              shows meanwhile; "off" disables rule-brightness, sent without it),
 *                              button[data-testid=rule-remove]
 *   #schedule-add, #schedule-save, #schedule-revert  (same data-testid)
 *   #schedule-message          [data-testid=schedule-message] the last save's error or result;
 *                              cleared when the next save starts ("saved" also on any edit)
 *   #maintenance-panel         unhidden at start
 *   #backup-download           [data-testid=backup-download] downloads loop-backup-….tar
 *   #backup-status             [data-testid=backup-status] data-state idle|working|done|failed
 *   #restore-file              [data-testid=restore-file] <input type=file accept=.tar>, hidden
 *                              inside the button-like label [data-testid=restore-choose];
 *                              #restore-file-name shows the file picked
 *   #restore-start             [data-testid=restore-start] asks window.confirm first
 *   #restore-progress          [data-testid=restore-progress] <progress>
 *   #restore-status            [data-testid=restore-status] data-state idle|uploading|checking|
 *                              done|failed, plain words
 */
(function () {
  "use strict";

  const LOOP = window.LOOP;
  if (!LOOP) return;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
  const DAY_LABELS = ["Mo", "Tu", "We", "Th", "Fr", "Sa", "Su"];
  const MAX_RULES = 32;
  const SHOWS = [["loop", "The loop, dimmed"], ["clock", "Only the clock"], ["off", "Nothing (dark)"]];

  const h = LOOP.h;  // app.js's element builder

  function setState(node, state, text) {
    node.dataset.state = state;
    if (text !== undefined) node.textContent = text;
  }

  // "2024-06-11T07:00:00+02:00" -> "07:00" today, "Tue 07:00" within a week, else a date
  function when(iso) {
    if (!iso) return "";
    const match = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)/.exec(iso);
    if (!match) return iso;
    const hhmm = match[4] + ":" + match[5];
    const then = new Date(Date.UTC(+match[1], +match[2] - 1, +match[3]));
    const now = new Date();
    const today = new Date(Date.UTC(now.getFullYear(), now.getMonth(), now.getDate()));
    const days = Math.round((then - today) / 86400000);
    if (days === 0) return hhmm;
    if (days === 1) return "tomorrow " + hhmm;
    if (days > 1 && days < 7) return DAY_LABELS[(then.getUTCDay() + 6) % 7] + " " + hhmm;
    return match[1] + "-" + match[2] + "-" + match[3] + " " + hhmm;
  }

  // ---------------------------------------------------------------- times
  // Times are typed as text, not <input type=time>: a time picker follows the phone's locale
  // ("10:00 PM") while LOOP, its status and its errors use 24-hour "HH:MM". A phone's number
  // pad has no colon, so digits alone are tidied: "7" -> "07:00", "730" -> "07:30",
  // "2200" -> "22:00"; anything else is left as typed for the server to name.
  const TIME_PATTERN = "([01][0-9]|2[0-3]):[0-5][0-9]";

  function tidyTime(text) {
    const typed = String(text || "").trim();
    let match = /^(\d{1,2})[:.h ](\d{2})$/.exec(typed);
    if (!match && /^\d{1,4}$/.test(typed)) {
      match = typed.length <= 2 ? [typed, typed, "00"] : [typed, typed.slice(0, -2), typed.slice(-2)];
    }
    if (!match || Number(match[1]) > 23 || Number(match[2]) > 59) return typed;
    return match[1].padStart(2, "0") + ":" + match[2];
  }

  function timeInput(testid, value, onValue) {
    const input = h("input", {
      type: "text", class: "time-input", "data-testid": testid, value: value || "",
      inputmode: "numeric", pattern: TIME_PATTERN, placeholder: "HH:MM", maxlength: 5,
      autocomplete: "off", spellcheck: "false", required: true,
    });
    input.addEventListener("input", () => onValue(input.value.trim()));
    input.addEventListener("change", () => {
      input.value = tidyTime(input.value);
      onValue(input.value);
    });
    return input;
  }

  // ---------------------------------------------------------------- schedule
  const schedule = { rules: [], dirty: false, state: null, loaded: false };

  function ruleLabel(index) {
    const rule = schedule.rules[index];
    const name = rule && rule.name ? "“" + rule.name + "”" : "rule " + (index + 1);
    return name;
  }

  function describeState(st) {
    if (!st) return "";
    const next = st.next_change ? when(st.next_change) : "";
    if (st.override) {
      return "Brightness " + st.brightness + "% was set by hand and holds" +
        (st.override_until ? " until " + when(st.override_until) : "") +
        "; then the schedule takes over.";
    }
    if (st.active_rule !== null && st.active_rule !== undefined) {
      const what = { clock: "only the clock at " + st.rule_brightness + "%", off: "the panel dark" }[st.show] ||
        "at " + st.rule_brightness + "%";
      return "Now: " + (st.active_name ? "“" + st.active_name + "”" : "rule " + (st.active_rule + 1)) +
        ", " + what + (next ? ", until " + next : "") + ".";
    }
    if (!st.rules) return "No rules: brightness is what you set (" + st.manual_brightness + "%).";
    return "No rule active: brightness " + st.manual_brightness + "%" +
      (next ? "; next change " + next + " (" +
        (st.next_brightness === null ? "back to " + st.manual_brightness : st.next_brightness) +
        "%)" : "") + ".";
  }

  function renderState(st) {
    schedule.state = st;
    const node = $("#schedule-state");
    if (!node || !st) return;
    node.textContent = describeState(st);
    node.dataset.activeRule = st.active_rule === null || st.active_rule === undefined ? "" : String(st.active_rule);
    node.dataset.override = st.override ? "true" : "false";
    node.dataset.nextChange = st.next_change || "";
    $("#schedule-zone").textContent = "Times are " + st.timezone + " time.";
    for (const li of document.querySelectorAll("#schedule-rules [data-testid=schedule-rule]")) {
      li.dataset.active = String(Number(li.dataset.index) === st.active_rule && !st.override);
    }
  }

  function markDirty() {
    // an edit makes "Schedule saved." untrue; an error stays until the next save
    const message = $("#schedule-message");
    if (message.dataset.kind !== "error") showMessage("");
    schedule.dirty = true;
    $("#schedule-save").disabled = false;
    $("#schedule-revert").disabled = false;
  }

  function ruleRow(rule, index) {
    const days = new Set(rule.days || []);
    const update = (fn) => (e) => { fn(e.target); markDirty(); };
    const dayBoxes = DAYS.map((day, i) => h("label", { class: "day", title: day }, [
      h("input", {
        type: "checkbox", class: "day-input", value: day, "data-testid": "rule-day",
        checked: days.has(day), "aria-label": day[0].toUpperCase() + day.slice(1),
        onchange: update((el) => {
          const set = new Set(schedule.rules[index].days || []);
          if (el.checked) set.add(day); else set.delete(day);
          schedule.rules[index].days = DAYS.filter((d) => set.has(d));
          renderDaysHint(index);
        }),
      }),
      h("span", { class: "day-face", "aria-hidden": "true", text: DAY_LABELS[i] }),
    ]));
    const brightness = h("input", {
      type: "number", min: 0, max: 100, step: 1, class: "rule-brightness", inputmode: "numeric",
      "data-testid": "rule-brightness", value: rule.brightness, required: true,
      disabled: rule.show === "off",
      oninput: update((el) => {
        schedule.rules[index].brightness = el.value === "" ? null : Number(el.value);
      }),
    });
    // what the panel shows while the rule is in force; a dark panel has no brightness
    const show = h("select", {
      class: "rule-show", "data-testid": "rule-show", "aria-label": "What the panel shows",
      onchange: update((el) => {
        schedule.rules[index].show = el.value;
        brightness.disabled = el.value === "off";
      }),
    }, SHOWS.map(([value, text]) => h("option", { value, text, selected: (rule.show || "loop") === value })));
    return h("li", { class: "rule", "data-testid": "schedule-rule", "data-index": index }, [
      h("div", { class: "rule-line" }, [
        h("input", {
          type: "text", class: "rule-name", "data-testid": "rule-name", maxlength: 40,
          placeholder: "Name (optional)", value: rule.name || "", "aria-label": "Rule name",
          oninput: update((el) => {
            const name = el.value.trim();
            if (name) schedule.rules[index].name = name; else delete schedule.rules[index].name;
          }),
        }),
        h("button", {
          type: "button", class: "btn btn-small btn-quiet", "data-testid": "rule-remove",
          "aria-label": "Remove this rule", text: "Remove",
          onclick: () => { schedule.rules.splice(index, 1); renderRules(); markDirty(); },
        }),
      ]),
      h("div", { class: "rule-line" }, [
        h("label", { class: "field field-inline" }, [
          h("span", { class: "field-label", text: "From" }),
          timeInput("rule-start", rule.start, (value) => { schedule.rules[index].start = value; markDirty(); }),
        ]),
        h("label", { class: "field field-inline" }, [
          h("span", { class: "field-label", text: "to" }),
          timeInput("rule-end", rule.end, (value) => { schedule.rules[index].end = value; markDirty(); }),
        ]),
        h("label", { class: "field field-inline" }, [
          h("span", { class: "field-label", text: "Brightness" }),
          brightness,
          h("span", { class: "muted", text: "%" }),
        ]),
      ]),
      h("div", { class: "rule-line" }, [
        h("label", { class: "field field-inline" }, [h("span", { class: "field-label", text: "Shows" }), show]),
      ]),
      h("div", { class: "rule-line" }, [
        h("div", { class: "days", role: "group", "aria-label": "Days (none: every day)" }, dayBoxes),
        h("span", { class: "muted days-hint", "data-hint": index }),
      ]),
    ]);
  }

  function renderDaysHint(index) {
    const hint = document.querySelector('[data-hint="' + index + '"]');
    const rule = schedule.rules[index];
    if (!hint || !rule) return;
    hint.textContent = rule.days && rule.days.length ? "" : "every day";
  }

  function renderRules() {
    const list = $("#schedule-rules");
    list.replaceChildren(...schedule.rules.map(ruleRow));
    schedule.rules.forEach((_, i) => renderDaysHint(i));
    $("#schedule-empty").hidden = schedule.rules.length > 0;
    $("#schedule-add").disabled = schedule.rules.length >= MAX_RULES;
    renderState(schedule.state);
  }

  function showMessage(text, kind) {
    LOOP.showNote($("#schedule-message"), text, kind);
  }

  function applyServer(data) {
    schedule.rules = (data.rules || []).map((r) => Object.assign({}, r, { days: (r.days || []).slice() }));
    schedule.dirty = false;
    $("#schedule-save").disabled = true;
    $("#schedule-revert").disabled = true;
    renderRules();
    renderState(data.state);
  }

  async function loadSchedule() {
    try {
      const res = await LOOP.api("GET", "/api/schedule");
      if (!schedule.dirty) applyServer(res.data);
      schedule.loaded = true;
      $("#schedule-panel").hidden = false;
    } catch (err) {
      showMessage("The schedule could not be loaded: " + LOOP.explain(err), "error");
      $("#schedule-panel").hidden = false;
    }
  }

  async function saveSchedule() {
    LOOP.beginAction();
    showMessage("");
    const button = $("#schedule-save");
    button.disabled = true;
    for (const li of document.querySelectorAll("#schedule-rules [data-invalid]")) {
      li.removeAttribute("data-invalid");
    }
    const rules = schedule.rules.map((r) => {
      const out = { days: r.days || [], start: tidyTime(r.start), end: tidyTime(r.end) };
      // a dark panel needs no brightness (the server fills in 0)
      if (r.show !== "off") out.brightness = r.brightness;
      if (r.name) out.name = r.name;
      if (r.show && r.show !== "loop") out.show = r.show;
      return out;
    });
    try {
      const res = await LOOP.api("PUT", "/api/schedule", { json: { rules } });
      applyServer(res.data);
      showMessage("Schedule saved.", "ok");
    } catch (err) {
      const text = LOOP.explain(err);
      const match = /^rules\[(\d+)\]\.?(\w+)?/.exec(err.message || "");
      if (match) {
        const li = document.querySelector('#schedule-rules [data-index="' + match[1] + '"]');
        if (li) li.setAttribute("data-invalid", match[2] || "rule");
        showMessage(ruleLabel(Number(match[1])) + ": " + text.replace(/^rules\[\d+\]\.?\w*:\s*/, match[2] ? match[2] + " " : ""), "error");
      } else {
        showMessage(text, "error");
      }
      button.disabled = false;
    }
  }

  function buildSchedulePanel() {
    const body = $("#schedule-body");
    body.replaceChildren(
      h("p", { id: "schedule-state", class: "schedule-state", "data-testid": "schedule-state",
        role: "status", "aria-live": "polite" }),
      h("p", { id: "schedule-zone", class: "muted small" }),
      h("p", { id: "schedule-empty", class: "empty",
        text: "No rules yet. Add one to dim the panel at night or switch it off (0%)." }),
      h("ul", { id: "schedule-rules", class: "rules" }),
      h("p", { id: "schedule-message", class: "form-message", "data-testid": "schedule-message",
        role: "alert", hidden: true }),
      h("div", { class: "row-actions" }, [
        h("button", { type: "button", id: "schedule-add", class: "btn btn-small",
          "data-testid": "schedule-add", text: "Add rule",
          onclick: () => {
            LOOP.beginAction();
            schedule.rules.push({ days: [], start: "22:00", end: "07:00", brightness: 10 });
            renderRules();
            markDirty();
            const rows = document.querySelectorAll("#schedule-rules [data-testid=rule-start]");
            if (rows.length) rows[rows.length - 1].focus();
          } }),
        h("button", { type: "button", id: "schedule-revert", class: "btn btn-small btn-quiet",
          "data-testid": "schedule-revert", text: "Undo changes", disabled: true,
          onclick: () => { LOOP.beginAction(); schedule.dirty = false; showMessage(""); loadSchedule(); } }),
        h("button", { type: "button", id: "schedule-save", class: "btn btn-small btn-primary",
          "data-testid": "schedule-save", text: "Save schedule", disabled: true,
          onclick: saveSchedule }),
      ]),
      h("p", { class: "muted small", text: "A rule whose end is before its start runs past " +
        "midnight. Where rules overlap, the lower one in the list wins. Brightness set by " +
        "hand holds until the next rule starts or ends. While a rule shows only the clock " +
        "or nothing, high and critical messages still show (by default)." }),
    );
    LOOP.on("status", (s) => { if (s && s.schedule) renderState(s.schedule); });
    LOOP.on("reconnected", () => { if (!schedule.dirty) loadSchedule(); });
    loadSchedule();
  }

  // ---------------------------------------------------------------- backup
  function filenameFrom(header) {
    const match = /filename="([^"]+)"/.exec(header || "");
    return match ? match[1] : "loop-backup.tar";
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  async function downloadBackup() {
    LOOP.beginAction();
    const status = $("#backup-status");
    const button = $("#backup-download");
    button.disabled = true;
    setState(status, "working", "Preparing the backup…");
    try {
      if (!LOOP.token()) {
        const probe = await fetch("/api/backup", { method: "HEAD", cache: "no-store" });
        if (probe.ok) {
          // no token needed: let the browser stream the file straight to disk
          const a = h("a", { href: "/api/backup", download: "", hidden: true });
          document.body.append(a);
          a.click();
          a.remove();
          setState(status, "done", "Download started (" + size(Number(probe.headers.get("Content-Length"))) + ").");
          return;
        }
        if (probe.status === 401) await LOOP.requireToken(false);
      }
      let res = await fetch("/api/backup", {
        cache: "no-store", headers: { Authorization: "Bearer " + LOOP.token() },
      });
      if (res.status === 401) {
        await LOOP.requireToken(true);
        res = await fetch("/api/backup", {
          cache: "no-store", headers: { Authorization: "Bearer " + LOOP.token() },
        });
      }
      if (!res.ok) {
        let message = "HTTP " + res.status;
        try { message = (await res.json()).message || message; } catch (e) { /* not JSON */ }
        throw new Error(message);
      }
      const total = Number(res.headers.get("Content-Length")) || 0;
      const reader = res.body.getReader();
      const parts = [];
      let got = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        got += value.length;
        if (total) setState(status, "working", "Downloading… " + Math.floor(100 * got / total) + "%");
      }
      if (total && got !== total) throw new Error("the download was cut short; try again");
      saveBlob(new Blob(parts, { type: "application/x-tar" }),
        filenameFrom(res.headers.get("Content-Disposition")));
      setState(status, "done", "Backup saved (" + size(got) + ").");
    } catch (err) {
      setState(status, "failed", "Backup failed: " + LOOP.explain(err));
    } finally {
      button.disabled = false;
    }
  }

  function size(bytes) {
    if (!isFinite(bytes) || bytes <= 0) return "0 B";
    if (bytes < 1024 * 1024) return Math.max(1, Math.round(bytes / 1024)) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  // ---------------------------------------------------------------- restore
  async function restore() {
    LOOP.beginAction();
    const input = $("#restore-file");
    const file = input.files && input.files[0];
    const status = $("#restore-status");
    const bar = $("#restore-progress");
    if (!file) {
      setState(status, "failed", "Choose a backup file (.tar) first.");
      return;
    }
    if (!window.confirm("Replace the whole library with “" + file.name + "”? Items not in " +
        "the backup are deleted. The current library stays as it is if the file is not a " +
        "good backup.")) return;
    const button = $("#restore-start");
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      for (let attempt = 0; attempt < 3; attempt++) {
        setState(status, "uploading", "Sending " + size(file.size) + "…");
        const res = await LOOP.xhrSend({
          method: "POST", url: "/api/restore", body: file,
          headers: { "Content-Type": "application/x-tar" },
          onUploadProgress: (f) => { bar.value = f; },
          onUploaded: () => setState(status, "checking", "Checking and restoring…"),
        });
        if (res.status === 401) {
          await LOOP.requireToken(Boolean(res.sentToken));
          continue;
        }
        if (res.status === 200) {
          const d = res.body.data;
          bar.value = 1;
          setState(status, "done", "Restored " + d.items + " items (" + d.added.length +
            " new, " + d.removed + " removed)" + (d.rendering ? "; " + d.rendering +
            " being prepared for the panel." : "."));
          LOOP.notify("Library restored from " + file.name + ".");
          input.value = "";
          showPickedFile();
          LOOP.loadLibrary();
          schedule.dirty = false;
          loadSchedule();
          return;
        }
        const message = res.status === 0 ? "LOOP cannot be reached; the library was not changed."
          : (res.body && res.body.message) || ("HTTP " + res.status);
        setState(status, "failed", "Not restored: " + message);
        return;
      }
      setState(status, "failed", "Not restored: the API token was not accepted.");
    } catch (err) {
      setState(status, "failed", "Not restored: " + LOOP.explain(err));
    } finally {
      button.disabled = false;
      if (status.dataset.state !== "uploading") bar.hidden = status.dataset.state !== "done";
    }
  }

  function showPickedFile() {
    const input = $("#restore-file");
    const file = input.files && input.files[0];
    $("#restore-file-name").textContent = file ? file.name + " (" + size(file.size) + ")" : "No file chosen";
  }

  function buildMaintenancePanel() {
    const body = $("#maintenance-body");
    body.replaceChildren(
      h("p", { class: "muted small", text: "A backup holds every item as uploaded, the play " +
        "order and the settings (brightness, mode, fit, schedule); frames are made again " +
        "for the panel it is restored on." }),
      h("div", { class: "row-actions" }, [
        h("button", { type: "button", id: "backup-download", class: "btn btn-small",
          "data-testid": "backup-download", text: "Download backup", onclick: downloadBackup }),
        h("span", { id: "backup-status", class: "muted small", "data-testid": "backup-status",
          "data-state": "idle", role: "status", "aria-live": "polite" }),
      ]),
      h("div", { class: "restore" }, [
        h("p", { class: "field-label", text: "Restore from a backup" }),
        // a native file input is a small, unstyleable control: it sits hidden inside a
        // button-sized label, which opens the picker and shows the keyboard focus
        h("div", { class: "row-actions" }, [
          h("label", { class: "btn btn-small file-button", "data-testid": "restore-choose" }, [
            h("input", { type: "file", id: "restore-file", class: "visually-hidden",
              "data-testid": "restore-file", accept: ".tar,application/x-tar",
              onchange: () => { LOOP.beginAction(); setState($("#restore-status"), "idle", ""); showPickedFile(); } }),
            "Choose backup file…",
          ]),
          h("span", { id: "restore-file-name", class: "muted small file-name", text: "No file chosen" }),
        ]),
        h("div", { class: "row-actions" }, [
          h("button", { type: "button", id: "restore-start", class: "btn btn-small btn-danger",
            "data-testid": "restore-start", text: "Restore", onclick: restore }),
          h("progress", { id: "restore-progress", "data-testid": "restore-progress", max: 1,
            value: 0, hidden: true }),
        ]),
        h("p", { id: "restore-status", class: "small", "data-testid": "restore-status",
          "data-state": "idle", role: "status", "aria-live": "polite" }),
      ]),
    );
    $("#maintenance-panel").hidden = false;
  }

  function start() {
    buildSchedulePanel();
    buildMaintenancePanel();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
