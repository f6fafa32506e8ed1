// keeneye smartcut studio (docs/smartcut.md → "Studio"): start a request (a local file sampled here,
// a server path, or an upload), watch it, edit its segments on a vis-timeline over the activity curve
// (uPlot), save the edits per user, cut (server-held video) or export (browser-held video).
// Everything it loads is vendored; nothing leaves this server.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const root = $("studio");
  const API = "/v1/smartcut";
  const CHUNK = 50; // frames per zip (the seed's)
  const MIN_SEGMENT = 15; // seconds, a new segment's length (the seed's minimum)
  const state = { uid: null, detail: null, files: new Map(), dirty: false, undo: [], cursor: 0, polling: null };

  // ---------------------------------------------------------------- helpers
  function fmt(s) {
    if (s == null || !isFinite(s)) return "–";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const ss = sec.toFixed(sec % 1 ? 1 : 0).padStart(sec % 1 ? 4 : 2, "0");
    return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${ss}`;
  }
  function user() { return $("user").value.trim(); }
  function say(el, text, kind) {
    el.textContent = text;
    el.className = kind === "error" ? "error" : kind === "ok" ? "ok" : "muted";
  }
  async function problem(response) {
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    let text = body.detail || body.message || `${response.status} ${response.statusText}`;
    if (typeof text !== "string") text = JSON.stringify(text);
    const retry = response.headers.get("Retry-After");
    if (response.status === 429) {
      return `Refused (${body.reason || "busy"}): ${text}. Try again in ${retry || "a few"} s, once a request ends.`;
    }
    return body.fix ? `${text} — ${body.fix}` : text;
  }
  function frameName(index, seconds) {
    return `${String(index).padStart(7, "0")}_${String(Math.round(seconds * 1000)).padStart(11, "0")}.jpg`;
  }

  // ---------------------------------------------------------------- start form
  const params = new URLSearchParams(location.search);
  // Signed in with a key that is not an admin's: the key's name is the user (the server refuses others).
  $("user").value = root.dataset.userBound ? root.dataset.defaultUser
    : params.get("user") || localStorage.getItem("keeneye.smartcut.user") || root.dataset.defaultUser || "local";
  $("user").addEventListener("change", () => {
    localStorage.setItem("keeneye.smartcut.user", user());
    closeEditor();
    loadRequests();
  });
  function source() { return document.querySelector("input[name=source]:checked").value; }
  function showSourceFields() {
    const s = source();
    document.querySelectorAll("[data-for]").forEach((el) => { el.hidden = !el.dataset.for.split(" ").includes(s); });
  }
  document.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", showSourceFields));
  showSourceFields();

  let plugins = [];
  async function loadPlugins() {
    const r = await keeneyeFetch(`${API}/plugins`);
    const sel = $("plugin");
    if (!r.ok) { sel.innerHTML = "<option value=''>cannot list plugins</option>"; return; }
    plugins = (await r.json()).plugins;
    sel.innerHTML = "";
    if (!plugins.length) {
      sel.innerHTML = "<option value=''>none running — start one: keeneye plugin run motion</option>";
      return;
    }
    for (const p of plugins) {
      const o = document.createElement("option");
      o.value = p.plugin_name;
      o.textContent = `${p.label} (${p.plugin_name}, ${p.img_size} px)`;
      sel.append(o);
    }
  }

  function progress(p, status) {
    $("progress").hidden = false;
    if (p) {
      if (p.frames_sampled != null) $("p-frames").textContent = p.frames_sampled;
      if (p.chunks_sent != null) $("p-sent").textContent = p.chunks_sent;
      if (p.chunks_processed != null) $("p-processed").textContent = p.chunks_processed;
    }
    if (status) $("p-status").textContent = status;
  }

  function form(fields) {
    const f = new FormData();
    for (const [k, v] of Object.entries(fields)) f.append(k, v);
    return f;
  }

  async function create(fields) {
    const r = await keeneyeFetch(`${API}/requests`, { method: "POST", body: form(fields) });
    if (!r.ok) throw new Error(await problem(r));
    return (await r.json()).request_uid;
  }

  // Can this browser decode the file? Resolves with the <video> ready to seek, or rejects.
  function openLocal(file) {
    return new Promise((resolve, reject) => {
      const video = document.createElement("video");
      video.muted = true;
      video.preload = "auto";
      const url = URL.createObjectURL(file);
      const fail = (why) => { clearTimeout(timer); reject(new Error(why)); };
      const timer = setTimeout(() => fail("no picture after 15 s"), 15000);
      video.onerror = () => fail(video.error ? `media error ${video.error.code}${video.error.message ? ": " + video.error.message : ""}` : "unreadable");
      video.onloadeddata = () => {
        clearTimeout(timer);
        if (!video.videoWidth || !isFinite(video.duration) || video.duration <= 0) fail("no decodable video track");
        else resolve({ video, url });
      };
      video.src = url;
    });
  }

  function seek(video, t) {
    return new Promise((resolve, reject) => {
      const done = () => { video.removeEventListener("seeked", done); resolve(); };
      video.addEventListener("seeked", done);
      video.onerror = () => reject(new Error("decoding failed while seeking"));
      video.currentTime = t;
    });
  }

  async function sampleLocal(file, fields) {
    const status = $("start-status");
    let opened;
    try {
      opened = await openLocal(file);
    } catch (e) {
      status.innerHTML = "";
      const msg = document.createElement("span");
      msg.className = "error";
      msg.textContent = `This browser cannot decode ${file.name} (${e.message}). `;
      const up = document.createElement("button");
      up.type = "button";
      up.textContent = "Upload it to the server instead";
      up.id = "offer-upload";
      up.addEventListener("click", () => {
        document.querySelector("input[name=source][value=upload]").checked = true;
        showSourceFields();
        $("start").requestSubmit();
      });
      status.append(msg, up);
      return;
    }
    const { video, url } = opened;
    const plugin = plugins.find((p) => p.plugin_name === fields.plugin);
    const size = plugin ? plugin.img_size : 320;
    const scale = Math.min(1, size / Math.max(video.videoWidth, video.videoHeight));
    const canvas = $("sampler");
    canvas.width = Math.max(1, Math.round(video.videoWidth * scale));
    canvas.height = Math.max(1, Math.round(video.videoHeight * scale));
    const ctx = canvas.getContext("2d");
    const uid = await create({ ...fields, video_name: file.name });
    state.files.set(uid, url);
    say(status, `Sampling ${file.name} in this browser…`);
    progress({ frames_sampled: 0, chunks_sent: 0, chunks_processed: 0 }, "sampling");
    loadRequests();
    const step = Number(fields.sensitivity);
    let entries = {}, inZip = 0, frames = 0, sent = 0;
    let sending = Promise.resolve();
    const send = (zip) => {
      sending = sending.then(async () => {
        const body = new FormData();
        body.append("chunk", new Blob([zip], { type: "application/zip" }), `chunk_${String(sent).padStart(6, "0")}.zip`);
        const r = await keeneyeFetch(`${API}/requests/${uid}/chunks`, { method: "POST", body });
        if (!r.ok) throw new Error(await problem(r));
        sent += 1;
        progress({ chunks_sent: sent });
      });
      return sending;
    };
    try {
      for (let i = 0, t = 0; t < video.duration; i += 1, t = i * step) {
        await seek(video, t);
        ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
        const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.9));
        entries[frameName(i, t)] = new Uint8Array(await blob.arrayBuffer());
        frames += 1;
        inZip += 1;
        progress({ frames_sampled: frames });
        if (inZip === CHUNK) {
          const zip = fflate.zipSync(entries, { level: 0 });
          entries = {};
          inZip = 0;
          if (sent + 2 < frames / CHUNK) await sending; // keep at most two chunks in the air
          send(zip);
        }
      }
      if (inZip) send(fflate.zipSync(entries, { level: 0 }));
      await sending;
      const r = await keeneyeFetch(`${API}/requests/${uid}/complete`, { method: "POST" });
      if (!r.ok) throw new Error(await problem(r));
      say(status, `Sampled ${frames} frames in ${sent} chunks; the recommender is working.`, "ok");
    } catch (e) {
      say(status, `Sampling stopped: ${e.message}`, "error");
    }
    watch(uid);
  }

  $("start").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("start-status");
    const fields = { user_id: user(), plugin: $("plugin").value, sensitivity: $("sensitivity").value };
    if (!fields.user_id) return say(status, "Enter a user first.", "error");
    if (!fields.plugin) return say(status, "No recommender is running: start one with `keeneye plugin run motion`.", "error");
    localStorage.setItem("keeneye.smartcut.user", fields.user_id);
    $("start-button").disabled = true;
    try {
      const s = source();
      if (s === "path") {
        if (!$("path").value.trim()) return say(status, "Enter a path on the server.", "error");
        const uid = await create({ ...fields, path: $("path").value.trim() });
        say(status, "The server is sampling the video.", "ok");
        watch(uid);
      } else {
        const file = $("file").files[0];
        if (!file) return say(status, "Choose a video file.", "error");
        if (s === "upload") {
          say(status, `Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`);
          const uid = await create({ ...fields, video: file });
          state.files.set(uid, URL.createObjectURL(file));
          say(status, "Uploaded; the server is sampling it.", "ok");
          watch(uid);
        } else {
          await sampleLocal(file, fields);
        }
      }
    } catch (e) {
      say(status, e.message, "error");
    } finally {
      $("start-button").disabled = false;
      loadRequests();
    }
  });

  // ---------------------------------------------------------------- requests list
  async function loadRequests() {
    if (!user()) return;
    const r = await keeneyeFetch(`${API}/requests?user_id=${encodeURIComponent(user())}`);
    if (!r.ok) return;
    const list = (await r.json()).requests;
    const body = $("requests").tBodies[0];
    body.innerHTML = "";
    if (!list.length) body.innerHTML = "<tr><td colspan='7' class='muted'>none yet</td></tr>";
    for (const q of list) {
      const tr = body.insertRow();
      tr.dataset.uid = q.request_uid;
      const segs = q.edits || q.timestamps;
      const cells = [q.video_name, q.plugin, q.status + (q.reason ? ` — ${q.reason}` : ""),
        `${q.progress.frames_sampled} frames · ${q.progress.chunks_processed}/${q.progress.chunks_sent} chunks`,
        segs ? `${segs.length}${q.edits ? " (edited)" : ""}` : "–", new Date(q.created_at).toLocaleString()];
      for (const c of cells) tr.insertCell().textContent = c;
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = "Open";
      open.addEventListener("click", () => openEditor(q.request_uid));
      tr.insertCell().append(open);
    }
    return list;
  }

  // Poll one request until it ends: progress in the start card, then the editor.
  function watch(uid) {
    clearInterval(state.polling);
    const tick = async () => {
      const r = await keeneyeFetch(`${API}/requests/${uid}/studio?brief=true&user_id=${encodeURIComponent(user())}`);
      if (!r.ok) return;
      const d = await r.json();
      progress(d.progress, d.status + (d.reason ? ` — ${d.reason}` : ""));
      if (d.status === "done" || d.status === "failed") {
        clearInterval(state.polling);
        loadRequests();
        if (d.status === "done") {
          say($("start-status"), `Done: ${(d.timestamps || []).length} segments from ${d.progress.frames_sampled} frames.`, "ok");
          openEditor(uid);
        }
        else say($("start-status"), `The request failed: ${d.reason}`, "error");
      }
    };
    state.polling = setInterval(tick, 700);
    tick();
  }

  // ---------------------------------------------------------------- editor
  let timeline = null, items = null, chart = null;
  const toDate = (s) => new Date(Math.round(s * 1000));
  const toSec = (d) => (d instanceof Date ? d.getTime() : new Date(d).getTime()) / 1000;

  function segments() {
    return items.get()
      .map((i) => ({ start: Math.round(toSec(i.start) * 1000) / 1000, stop: Math.round(toSec(i.end) * 1000) / 1000 }))
      .sort((a, b) => a.start - b.start);
  }
  function snapshot() { state.undo.push(JSON.stringify(segments())); if (state.undo.length > 200) state.undo.shift(); }
  function setSegments(list) {
    items.clear();
    items.add(list.map((s, n) => ({ id: `s${Date.now()}_${n}`, start: toDate(s.start), end: toDate(s.stop), content: "" })));
  }
  function changed(text) {
    state.dirty = true;
    say($("e-status"), `${segments().length} segments · unsaved changes${text ? " · " + text : ""}`);
  }
  function undo() {
    const last = state.undo.pop();
    if (!last) return say($("e-status"), "Nothing to undo.");
    setSegments(JSON.parse(last));
    changed("undone");
  }

  function duration() { return (state.detail && state.detail.duration) || 0; }
  function nearestKeyframe(t) {
    const k = state.detail.keyframes;
    if (!k || !k.length) return t;
    let lo = 0, hi = k.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (k[mid] < t) lo = mid + 1; else hi = mid; }
    const a = k[Math.max(0, lo - 1)], b = k[lo];
    return Math.abs(a - t) <= Math.abs(b - t) ? a : b;
  }
  function snap(t) {
    t = Math.max(0, Math.min(duration() || t, t));
    if ($("snap").checked && state.detail.keyframes && state.detail.keyframes.length) {
      const k = nearestKeyframe(t);
      return t >= duration() - 0.001 ? t : k;
    }
    return Math.round(t * 10) / 10;
  }
  function selected() {
    const ids = timeline.getSelection();
    return ids.length ? items.get(ids[0]) : null;
  }
  function setCursor(t) {
    state.cursor = Math.max(0, Math.min(duration(), t));
    timeline.setCustomTime(toDate(state.cursor), "cursor");
    const player = $("player");
    if (player.src && Math.abs(player.currentTime - state.cursor) > 0.2) player.currentTime = state.cursor;
  }

  function add(at) {
    const d = duration();
    let start = snap(at == null ? state.cursor : at);
    let stop = Math.min(d, start + MIN_SEGMENT);
    if (stop - start < 1) { start = Math.max(0, d - MIN_SEGMENT); stop = d; }
    snapshot();
    items.add({ id: `n${Date.now()}`, start: toDate(start), end: toDate(stop), content: "" });
    changed(`added ${fmt(start)}–${fmt(stop)}`);
  }
  function remove() {
    const s = selected();
    if (!s) return say($("e-status"), "Select a segment first (click it).");
    snapshot();
    items.remove(s.id);
    changed("deleted");
  }
  function split() {
    const t = state.cursor;
    const s = selected() || items.get().find((i) => toSec(i.start) < t && t < toSec(i.end));
    if (!s || !(toSec(s.start) < t && t < toSec(s.end))) return say($("e-status"), "Put the cursor inside a segment to split it.");
    snapshot();
    items.update({ id: s.id, end: toDate(t) });
    items.add({ id: `p${Date.now()}`, start: toDate(t), end: s.end, content: "" });
    changed(`split at ${fmt(t)}`);
  }
  function merge() {
    const s = selected();
    if (!s) return say($("e-status"), "Select a segment: it merges with the next one.");
    const next = items.get().filter((i) => toSec(i.start) >= toSec(s.start) && i.id !== s.id)
      .sort((a, b) => toSec(a.start) - toSec(b.start))[0];
    if (!next) return say($("e-status"), "No segment after this one.");
    snapshot();
    items.update({ id: s.id, end: toDate(Math.max(toSec(s.end), toSec(next.end))) });
    items.remove(next.id);
    changed("merged");
  }
  function jump(dir) {
    const list = segments();
    const t = state.cursor;
    const target = dir > 0 ? list.find((s) => s.start > t + 0.01) : [...list].reverse().find((s) => s.start < t - 0.01);
    if (target) { setCursor(target.start); timeline.moveTo(toDate(target.start)); }
  }

  async function save() {
    const r = await keeneyeFetch(`${API}/requests/${state.uid}/edits`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: user(), timestamps: segments() }),
    });
    if (!r.ok) { say($("e-status"), `Not saved: ${await problem(r)}`, "error"); return false; }
    const saved = await r.json();
    state.dirty = false;
    setSegments(saved.timestamps);
    say($("e-status"), `Saved ${saved.timestamps.length} segments at ${new Date(saved.saved_at).toLocaleTimeString()}.`, "ok");
    loadRequests();
    return true;
  }

  async function cutZip(asDataset) {
    const status = $("cut-status");
    if (state.dirty && !(await save())) return;
    const perSegment = Number($("per-segment").value) || 10;
    say(status, asDataset ? `Taking ${perSegment} frames from each segment…` : "Cutting (lossless, at keyframes)…");
    const r = await keeneyeFetch(`${API}/requests/${state.uid}/cut`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: user(), as_dataset: !!asDataset, frames_per_segment: perSegment }),
    });
    if (!r.ok) return say(status, `Not cut: ${await problem(r)}`, "error");
    const blob = await r.blob();
    const name = (/filename="?([^";]+)"?/.exec(r.headers.get("Content-Disposition") || "") || [])[1] || "clips.zip";
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    const what = asDataset ? "a COCO folder of frames to label" : `${segments().length} clips`;
    say(status, `Downloaded ${name} (${(blob.size / 1e6).toFixed(2)} MB, ${what}).`, "ok");
  }

  function drawActivity(d) {
    const box = $("activity");
    box.innerHTML = "";
    if (chart) { chart.destroy(); chart = null; }
    const a = d.activity || {};
    if (!a.times || !a.times.length) {
      box.innerHTML = a.complete
        ? `<p class="muted small">No activity curve: ${d.plugin} is not a built-in recommender of this server.</p>`
        : "<p class='muted small'>Computing the activity curve…</p>";
      return;
    }
    chart = new uPlot({
      width: $("timeline").clientWidth || 800,
      height: 110,
      padding: [6, 0, 0, 0],
      legend: { show: false },
      cursor: { y: false },
      scales: { x: { time: false, min: 0, max: d.duration || a.times[a.times.length - 1] } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { label: a.label || "score", stroke: "#1f7a5a", fill: "rgba(31,122,90,.15)", width: 1.5, points: { show: false } }],
    }, [a.times, a.scores], box);
    const label = document.createElement("span");
    label.className = "chart-label muted small";
    label.textContent = `${a.label || "activity"} per sampled frame${a.complete ? "" : " (still computing)"}`;
    box.prepend(label);
  }

  // The server computes a held video's curve (and probes its keyframes) beside the plugin: follow it.
  function snapNote(d) {
    $("e-snap-note").textContent = d.keyframes && d.keyframes.length
      ? `Ends snap to the ${d.keyframes.length} keyframes (a lossless cut starts at a keyframe).`
      : "No keyframe index (yet, or the browser holds the video): ends snap to 0.1 s.";
  }
  function refreshCurve(uid) {
    setTimeout(async () => {
      if (state.uid !== uid) return;
      const r = await keeneyeFetch(`${API}/requests/${uid}/studio?user_id=${encodeURIComponent(user())}`);
      if (!r.ok || state.uid !== uid) return;
      const d = await r.json();
      state.detail.keyframes = d.keyframes;
      state.detail.fps = d.fps;
      state.detail.activity = d.activity;
      snapNote(state.detail);
      drawActivity(state.detail);
      if (timeline) {
        const w = timeline.getWindow();
        if (chart) chart.setScale("x", { min: toSec(w.start), max: toSec(w.end) });
      }
      if (!d.activity.complete) refreshCurve(uid);
    }, 1000);
  }

  function closeEditor() {
    $("editor").hidden = true;
    if (timeline) { timeline.destroy(); timeline = null; }
    state.uid = null;
  }

  async function openEditor(uid) {
    if (state.dirty && state.uid && state.uid !== uid && !confirm("Discard unsaved edits?")) return;
    const r = await keeneyeFetch(`${API}/requests/${uid}/studio?user_id=${encodeURIComponent(user())}`);
    if (!r.ok) return say($("start-status"), await problem(r), "error");
    const d = await r.json();
    if (d.status !== "done") return watch(uid);
    closeEditor();
    state.uid = uid;
    state.detail = d;
    state.dirty = false;
    state.undo = [];
    state.cursor = 0;
    if (!d.duration) d.duration = Math.max(0, ...(d.timestamps || []).map((s) => s.stop), ...(d.activity.times || []));
    $("editor").hidden = false;
    $("e-name").textContent = d.video_name;
    const server = d.source === "server";
    $("e-source").textContent = `${d.plugin} · every ${d.sensitivity} s · ${fmt(d.duration)} · ` +
      (server ? "video held by the server" : "video held by your browser");
    snapNote(d);
    $("cut-note").textContent = server
      ? "The server holds this video: “Cut” makes a zip of lossless clips (keyframe-aligned stream copy); " +
        "“Frames for labelling” a zipped COCO folder of frames from each segment. The exports are for other tools."
      : "Your browser holds this video, so the server cannot cut it. Export the segments as JSON and run " +
        "`keeneye smartcut cut VIDEO SEGMENTS.json --out DIR` where the file is (CSV and EDL suit spreadsheets and editors).";
    $("b-cut").disabled = $("b-frames").disabled = !server;
    for (const f of ["json", "csv", "edl"]) {
      $(`x-${f}`).href = `${API}/requests/${uid}/export?user_id=${encodeURIComponent(user())}&format=${f}`;
    }
    const player = $("player");
    player.removeAttribute("src");
    if (server) player.src = `${API}/requests/${uid}/video?user_id=${encodeURIComponent(user())}`;
    else if (state.files.has(uid)) player.src = state.files.get(uid);
    player.hidden = !player.src;

    items = new vis.DataSet();
    setSegments(d.edits || d.timestamps || []);
    const end = d.duration * 1000;
    timeline = new vis.Timeline($("timeline"), items, {
      min: new Date(0), max: new Date(end), start: new Date(0), end: new Date(end),
      zoomMin: 1000, zoomMax: 24 * 3600 * 1000,
      stack: false, selectable: true, multiselect: false, showCurrentTime: false, height: "130px",
      editable: { add: true, updateTime: true, updateGroup: false, remove: true, overrideItems: false },
      moment: (date) => vis.moment(date).utc(),
      format: {
        minorLabels: { millisecond: "HH:mm:ss.SSS", second: "HH:mm:ss", minute: "HH:mm", hour: "HH:mm", weekday: "HH:mm", day: "HH:mm" },
        majorLabels: { millisecond: "", second: "", minute: "", hour: "", weekday: "", day: "", week: "", month: "", year: "" },
      },
      snap: (date) => toDate(snap(toSec(date))),
      onAdd: (item, cb) => {
        cb(null); // our own add: 15 s from the double-clicked time, snapped
        add(toSec(item.start));
      },
      onMoving: (item, cb) => {
        const s = Math.max(0, toSec(item.start)), e = Math.min(d.duration, toSec(item.end));
        item.start = toDate(Math.min(s, e - 0.1));
        item.end = toDate(Math.max(e, s + 0.1));
        cb(item);
      },
      onMove: (item, cb) => { snapshot(); cb(item); changed(`${fmt(toSec(item.start))}–${fmt(toSec(item.end))}`); },
      onRemove: (item, cb) => { snapshot(); cb(item); changed("deleted"); },
    });
    timeline.addCustomTime(new Date(0), "cursor");
    timeline.on("click", (p) => { if (p.what !== "item" && p.time) setCursor(toSec(p.time)); });
    timeline.on("timechanged", (p) => { if (p.id === "cursor") setCursor(toSec(p.time)); });
    timeline.on("rangechange", (p) => {
      if (chart) chart.setScale("x", { min: toSec(p.start), max: toSec(p.end) });
    });
    drawActivity(d);
    if (!d.activity.complete) refreshCurve(uid);
    say($("e-status"), `${items.length} segments${d.edits ? " (your saved edits)" : " (the recommender's)"}.`);
    say($("cut-status"), "");
  }

  $("player").addEventListener("timeupdate", () => {
    if (!timeline) return;
    state.cursor = $("player").currentTime;
    timeline.setCustomTime(toDate(state.cursor), "cursor");
  });
  $("b-add").addEventListener("click", () => add());
  $("b-split").addEventListener("click", split);
  $("b-merge").addEventListener("click", merge);
  $("b-delete").addEventListener("click", remove);
  $("b-undo").addEventListener("click", undo);
  $("b-zin").addEventListener("click", () => timeline.zoomIn(0.5, { animation: false }));
  $("b-zout").addEventListener("click", () => timeline.zoomOut(0.5, { animation: false }));
  $("b-fit").addEventListener("click", () => timeline.setWindow(new Date(0), toDate(duration())));
  $("b-save").addEventListener("click", save);
  $("b-cut").addEventListener("click", () => cutZip(false));
  $("b-frames").addEventListener("click", () => cutZip(true));
  for (const f of ["json", "csv", "edl"]) {
    $(`x-${f}`).addEventListener("click", async (ev) => {
      if (!state.dirty) return;
      ev.preventDefault();
      if (await save()) ev.target.click();
    });
  }
  document.addEventListener("keydown", (ev) => {
    if (!timeline || $("editor").hidden) return;
    const tag = (ev.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag)) return;
    const key = ev.key.toLowerCase();
    const ctrl = ev.ctrlKey || ev.metaKey;
    if (ctrl && key === "z") { ev.preventDefault(); undo(); }
    else if (ctrl && key === "s") { ev.preventDefault(); save(); }
    else if (ctrl) return;
    else if (key === "delete" || key === "backspace") { ev.preventDefault(); remove(); }
    else if (key === "a") add();
    else if (key === "s") split();
    else if (key === "m") merge();
    else if (key === "+" || key === "=") timeline.zoomIn(0.5, { animation: false });
    else if (key === "-") timeline.zoomOut(0.5, { animation: false });
    else if (key === "arrowright") jump(1);
    else if (key === "arrowleft") jump(-1);
    else if (key === " " && $("player").src) { ev.preventDefault(); const p = $("player"); if (p.paused) p.play(); else p.pause(); }
  });
  window.addEventListener("beforeunload", (ev) => { if (state.dirty) { ev.preventDefault(); ev.returnValue = ""; } });

  // What a test (or the console) can read: the segments on the timeline and the open request.
  window.smartcutStudio = {
    segments: () => (items ? segments() : []),
    uid: () => state.uid,
    dirty: () => state.dirty,
    window: () => (timeline ? [toSec(timeline.getWindow().start), toSec(timeline.getWindow().end)] : null),
  };

  loadPlugins();
  loadRequests().then((list) => {
    const open = (list || []).find((q) => q.status === "sampling" || q.status === "processing");
    if (open) watch(open.request_uid);
  });
})();
