// CSU console: live updates by server-sent events, alert notifications, clip progress, timeline picking.
// Plain JavaScript, no library: everything the page needs is served by the collector itself.
"use strict";

(function () {
  const body = document.body;

  function liveState(text, ok) {
    const el = document.getElementById("live-state");
    if (el) {
      el.textContent = text;
      el.className = "live-state " + (ok ? "ok" : "bad");
    }
  }

  function connect(params, handlers) {
    const source = new EventSource("/live?" + new URLSearchParams(params).toString());
    source.onopen = function () { liveState("live", true); };
    source.onerror = function () { liveState("reconnecting…", false); };
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, handlers[name]);
    });
    return source;
  }

  // --- fleet: swap in the server-rendered table when something changes ---------------------------
  function startFleet() {
    const site = body.dataset.site || "";
    let pending = false;
    function reload() {
      if (pending) { return; }
      pending = true;
      fetch("/fleet/table?" + new URLSearchParams({ site: site }).toString(), { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
          return r.text();
        })
        .then(function (html) {
          if (html !== null) { document.getElementById("fleet-body").innerHTML = html; }
        })
        .finally(function () { pending = false; });
    }
    connect({ fleet: "1" }, { fleet: reload });
  }

  // --- alerts: new rows on top, state updates in place, optional sound and title blink -----------
  const baseTitle = document.title;
  let unseen = 0;
  let blinkTimer = null;

  function setting(name) { return window.localStorage.getItem("csu." + name) === "on"; }

  function bindToggle(id, name) {
    const box = document.getElementById(id);
    if (!box) { return; }
    box.checked = setting(name);
    box.addEventListener("change", function () {
      window.localStorage.setItem("csu." + name, box.checked ? "on" : "off");
    });
  }

  function beep() {
    try {
      const audio = new (window.AudioContext || window.webkitAudioContext)();
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = 880;
      gain.gain.value = 0.1;
      tone.connect(gain);
      gain.connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.25);
    } catch (e) { /* no audio device: the title still blinks if asked */ }
  }

  function notify() {
    unseen += 1;
    if (setting("sound")) { beep(); }
    if (setting("blink") && blinkTimer === null) {
      let on = false;
      blinkTimer = window.setInterval(function () {
        on = !on;
        document.title = on ? "(" + unseen + ") New alert" : baseTitle;
      }, 700);
    }
  }

  function seen() {
    unseen = 0;
    if (blinkTimer !== null) { window.clearInterval(blinkTimer); blinkTimer = null; }
    document.title = baseTitle;
  }

  function startAlerts() {
    bindToggle("sound-toggle", "sound");
    bindToggle("blink-toggle", "blink");
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { seen(); } });
    window.addEventListener("focus", seen);
    const rows = document.getElementById("alert-rows");
    const params = { motion: "1", site: body.dataset.site || "", camera: body.dataset.camera || "", zone: body.dataset.zone || "" };
    connect(params, {
      motion: function (message) {
        const data = JSON.parse(message.data);
        const existing = Array.prototype.find.call(rows.children, function (tr) { return tr.dataset.key === data.key; });
        if (existing) {
          existing.querySelector(".state").textContent = data.state;
          existing.querySelector(".last").textContent = data.last;
          return;
        }
        const holder = document.createElement("tbody");
        holder.innerHTML = data.html;  // rendered and escaped by the server's templates
        const row = holder.firstElementChild;
        row.querySelectorAll("input[name=csrf]").forEach(function (input) { input.value = body.dataset.csrf; });
        row.classList.add("fresh");
        rows.insertBefore(row, rows.firstChild);
        const empty = document.getElementById("no-alerts");
        if (empty) { empty.remove(); }
        notify();
      }
    });
  }

  // --- clip job: progress until the job ends, then the page with the verified clip ---------------
  function startJob() {
    const id = body.dataset.job;
    const bar = document.getElementById("job-progress");
    const state = document.getElementById("job-state");
    const message = document.getElementById("job-message");
    const bytes = document.getElementById("job-bytes");
    function poll() {
      fetch("/clips/" + encodeURIComponent(id) + "/status", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (s) {
          bar.value = s.fraction;
          state.textContent = s.state;
          message.textContent = s.message;
          if (s.total) { bytes.textContent = (s.done / 1e6).toFixed(1) + " / " + (s.total / 1e6).toFixed(1) + " MB"; }
          if (s.final) { window.location.reload(); } else { window.setTimeout(poll, 400); }
        })
        .catch(function () { window.setTimeout(poll, 1500); });
    }
    if (body.dataset.final !== "1") { poll(); }
  }

  // --- camera timeline: drag to choose the clip range ---------------------------------------------
  function pad(n) { return String(n).padStart(2, "0"); }
  function utcInput(seconds) {
    const d = new Date(seconds * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + "T" +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }

  function startTimeline() {
    const svg = document.getElementById("timeline");
    const startInput = document.getElementById("clip-start");
    const endInput = document.getElementById("clip-end");
    if (!svg || !startInput || !endInput) { return; }
    const t0 = parseFloat(svg.dataset.start);
    const t1 = parseFloat(svg.dataset.end);
    const selection = document.getElementById("tl-selection");
    let from = null;
    function at(event) {
      const box = svg.getBoundingClientRect();
      return Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
    }
    function show(a, b) {
      selection.setAttribute("x", String(Math.min(a, b) * 1000));
      selection.setAttribute("width", String(Math.abs(b - a) * 1000));
    }
    svg.addEventListener("mousedown", function (e) { from = at(e); show(from, from); e.preventDefault(); });
    svg.addEventListener("mousemove", function (e) { if (from !== null) { show(from, at(e)); } });
    window.addEventListener("mouseup", function (e) {
      if (from === null) { return; }
      const to = at(e);
      const a = Math.min(from, to);
      const b = Math.max(from, to);
      from = null;
      if (b - a < 0.001) { return; }
      startInput.value = utcInput(Math.floor(t0 + a * (t1 - t0)));
      endInput.value = utcInput(Math.ceil(t0 + b * (t1 - t0)));
    });
  }

  // --- selects that filter as soon as they change --------------------------------------------------
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  const live = body.dataset.live;
  if (live === "fleet") { startFleet(); }
  if (live === "motion") { startAlerts(); }
  if (body.dataset.page === "clip-job") { startJob(); }
  if (body.dataset.page === "camera") { startTimeline(); }
})();
