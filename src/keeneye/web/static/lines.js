// keeneye line dashboard: polls GET /v1/lines every few seconds and draws, per line and camera, the
// OK / DEFECT / fail-safe tiles, throughput, latency p50 / p95 against the deadline (uPlot: each
// part's latency and the deadline as a dashed line), the PLC link, the SKUs; then the newest defects
// with the model's outlines over the image (overlay.js). Every value goes in as text, never as HTML.
(function () {
  "use strict";
  const root = document.getElementById("lines");
  const k = window.keeneye;
  const pipeline = root.dataset.pipeline;
  const refreshMs = Number(root.dataset.refresh || 2) * 1000;
  const deadline = Number(root.dataset.deadline);
  const charts = new Map(); // "line/camera" → { node, plot }
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let shownDefects = "";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (key === "class") node.className = v;
      else node.setAttribute(key, v);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en"));
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(v < 0.1 ? 2 : 1)}%`);
  const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(1)} ms`);
  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  function tile(name, value, detail, tone, key) {
    const t = el("div", { class: `tile ${tone || ""}`, "data-tile": key });
    t.append(el("h4", {}, name), el("div", { class: "v" }, value), el("div", { class: "d" }, detail || ""));
    return t;
  }

  function plcTile(plc) {
    const tone = { up: "ok", down: "bad", stopped: "", unknown: "warn" }[plc.state] || "warn";
    const word = { up: "connected", down: "down", stopped: "runner stopped" }[plc.state] || "unknown";
    let detail = plc.last_ack_at ? `last ack ${time(plc.last_ack_at)} (${ago(plc.last_ack_at)})` : "no ack in the window";
    if (plc.state === "down" && plc.last_error) detail += ` · ${plc.last_error}`;
    if (plc.as_of) detail += ` · as of the part stored ${ago(plc.as_of)}`;
    return tile(`PLC${plc.sink ? " · " + plc.sink : ""}`, word, detail, tone, "plc");
  }

  function cameraTiles(cam) {
    const lat = cam.latency_ms;
    const tiles = el("div", { class: "tiles" });
    const rejected = cam.defect + cam.failsafe;
    tiles.append(
      tile("OK", num(cam.ok), `of ${num(cam.parts)} parts`, "ok", "ok"),
      tile("DEFECT", num(cam.defect), `rate ${pct(cam.defect_rate)} (${num(rejected)} rejected)`, cam.defect ? "warn" : "", "defect"),
      tile("Fail-safe", num(cam.failsafe), "result 3", cam.failsafe ? "bad" : "ok", "failsafe"),
      tile("Throughput", cam.throughput_fps === null ? "–" : `${cam.throughput_fps.toFixed(1)}/s`, `last part ${ago(cam.last_part_at)}`, "", "throughput"),
      tile("Latency p50 / p95", lat.p95 === null ? "–" : `${ms(lat.p50)} / ${ms(lat.p95)}`,
        lat.samples ? `deadline ${deadline} ms · ${num(lat.over_deadline)} over · ${num(lat.samples)} parts` : "no parts",
        lat.within_deadline === null ? "" : lat.within_deadline ? "ok" : "bad", "latency"),
      plcTile(cam.plc),
    );
    return tiles;
  }

  function skuTable(cam) {
    const wrap = el("div", { class: "scroll-x" });
    const table = el("table", { class: "table skus" });
    const head = el("tr");
    for (const h of ["SKU", "parts", "OK", "DEFECT", "fail-safe", "defect rate"]) head.append(el("th", { class: h === "SKU" ? "" : "num", scope: "col" }, h));
    const thead = el("thead");
    thead.append(head);
    table.append(thead);
    const body = el("tbody");
    for (const s of cam.skus) {
      const tr = el("tr", { "data-sku": s.sku });
      tr.append(el("th", { scope: "row" }, s.sku || "(none)"));
      for (const v of [num(s.parts), num(s.ok), num(s.defect), num(s.failsafe), pct(s.defect_rate)]) tr.append(el("td", { class: "num" }, v));
      body.append(tr);
    }
    table.append(body);
    wrap.append(table);
    return wrap;
  }

  function drawChart(key, holder, cam) {
    const s = cam.series;
    let entry = charts.get(key);
    if (!s.t.length) {
      if (entry) { entry.plot.destroy(); charts.delete(key); }
      holder.className = "latency-chart empty";
      holder.replaceChildren(el("p", { class: "empty" }, "no parts in the window"));
      return;
    }
    const data = [s.t, s.latency_ms, s.t.map(() => deadline)];
    const width = Math.max(200, holder.clientWidth || 360);
    if (entry && entry.node.isConnected && entry.holder === holder) {
      entry.plot.setData(data);
      return;
    }
    if (entry) entry.plot.destroy();
    holder.replaceChildren();
    holder.className = "latency-chart";
    const top = Math.max(deadline * 1.15, ...s.latency_ms) * 1.05;
    const opts = {
      width, height: 170,
      legend: { show: true, live: false },
      cursor: { y: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(top, max * 1.05)] } },
      axes: [
        { font: "11px system-ui", grid: { stroke: "#e3e9ee" }, space: 70, values: (u, vs) => vs.map((v) => new Date(v * 1000).toLocaleTimeString()) },
        { font: "11px system-ui", size: 64, grid: { stroke: "#e3e9ee" }, values: (u, vs) => vs.map((v) => `${Math.round(v)} ms`) },
      ],
      series: [
        {},
        { label: "latency", stroke: "#0072b2", width: 1, points: { show: true, size: 4, fill: "#0072b2" } },
        { label: `deadline ${deadline} ms`, stroke: "#a4262c", width: 1.5, dash: [6, 4], points: { show: false } },
      ],
    };
    const plot = new uPlot(opts, data, holder);
    charts.set(key, { node: plot.root, plot, holder });
  }

  function cameraSection(line, cam, existing) {
    const key = `${line}/${cam.camera}`;
    const section = existing || el("section", { class: "camera", "data-camera": key });
    const heading = el("h3", {}, `Camera ${cam.camera}`);
    heading.append(el("span", { class: "muted small" }, cam.last_sequence === null ? "" : `· last part #${cam.last_sequence} at ${time(cam.last_part_at)}`));
    let holder = section.querySelector(".latency-chart");
    if (!holder) holder = el("div", { class: "latency-chart", role: "img", "aria-label": `Decision latency of each part of ${key} against the ${deadline} ms deadline` });
    const body = el("div", { class: "camera-body" });
    const left = el("div");
    left.append(el("p", { class: "muted small" }, "Decision latency per part (trigger → decision)"), holder);
    body.append(left, skuTable(cam));
    section.replaceChildren(heading, cameraTiles(cam), body);
    drawChart(key, holder, cam);
    return section;
  }

  function renderLines(data) {
    const list = $("line-list");
    const seen = new Set();
    for (const line of data.lines) {
      let card = list.querySelector(`[data-line="${CSS.escape(line.line)}"]`);
      if (!card) {
        card = el("section", { class: "card line-card", "data-line": line.line });
        list.append(card);
      }
      const title = card.querySelector("h2") || el("h2");
      title.textContent = `Line ${line.line}`;
      if (!title.isConnected) card.prepend(title);
      const keep = new Set();
      for (const cam of line.cameras) {
        const key = `${line.line}/${cam.camera}`;
        keep.add(key);
        const existing = card.querySelector(`[data-camera="${CSS.escape(key)}"]`);
        const section = cameraSection(line.line, cam, existing);
        if (!existing) card.append(section);
      }
      for (const section of card.querySelectorAll("[data-camera]")) {
        if (!keep.has(section.dataset.camera)) { charts.get(section.dataset.camera)?.plot.destroy(); charts.delete(section.dataset.camera); section.remove(); }
      }
      seen.add(line.line);
    }
    for (const card of list.querySelectorAll("[data-line]")) if (!seen.has(card.dataset.line)) card.remove();
  }

  function renderDefects(data) {
    const ids = data.defects.map((d) => d.observation_id).join(",");
    $("defects-card").hidden = !data.defects.length;
    if (ids === shownDefects) return; // unchanged: keep the images as they are (no flicker)
    shownDefects = ids;
    const holder = $("defects");
    holder.replaceChildren();
    for (const d of data.defects) {
      const fig = el("figure", { class: "defect", "data-observation": d.observation_id });
      const frame = el("div", { class: "frame" });
      if (d.image_url) {
        const img = el("img", { src: k.imageUrl(d.observation_id, d.format), alt: `part ${d.sequence} of ${d.line}/${d.camera}` });
        if (d.image && d.image.width && d.image.height) frame.style.aspectRatio = `${d.image.width} / ${d.image.height}`;
        frame.append(img);
        const svg = d.image && d.instances.length ? k.overlay({ image: d.image, instances: d.instances }) : null;
        if (svg) frame.append(svg);
      } else {
        frame.append(el("div", { class: "noimage" }, "image not kept (edge.keep_images: false)"));
      }
      const what = d.failsafe ? `fail-safe · ${d.reason || "?"}` : `${d.class || "defect"} ${d.confidence === null ? "" : k.pct(d.confidence)}`;
      const cap = el("figcaption");
      cap.append(el("strong", { class: d.failsafe ? "error" : "" }, what), el("br"),
        el("span", { class: "muted" }, `${d.line}/${d.camera}${d.sku ? " · " + d.sku : ""} · #${d.sequence} · ${time(d.at)} · ${ms(d.latency_ms)}`));
      fig.append(frame, cap);
      holder.append(fig);
    }
  }

  function renderTotals(data) {
    const t = data.totals;
    $("total-parts").textContent = num(t.parts);
    $("total-ok").textContent = num(t.ok);
    $("total-defect").textContent = num(t.defect);
    $("total-rate").textContent = `rejected share ${pct(t.defect_rate)}`;
    $("total-failsafe").textContent = num(t.failsafe);
    $("card-failsafe").className = `stat ${t.failsafe ? "bad" : "ok"}`;
  }

  async function refresh() {
    clearTimeout(timer);
    const minutes = $("window").value;
    try {
      const response = await keeneyeFetch(`/v1/lines?pipeline=${encodeURIComponent(pipeline)}&minutes=${minutes}`);
      const data = await response.json();
      if (!response.ok) throw new Error(k.errorText(data, response));
      renderTotals(data);
      $("empty").hidden = data.lines.length > 0;
      renderLines(data);
      renderDefects(data);
      $("status").textContent = data.lines.length
        ? `${data.lines.length} line${data.lines.length === 1 ? "" : "s"}, ${data.lines.reduce((n, l) => n + l.cameras.length, 0)} camera(s) reporting`
        : "No parts in this window.";
      $("updated").textContent = new Date().toLocaleTimeString();
      $("updated").dateTime = new Date().toISOString();
      root.dataset.loaded = "1";
    } catch (exc) {
      $("status").textContent = `Could not load the lines: ${exc.message}`;
    } finally {
      timer = setTimeout(refresh, refreshMs);
    }
  }

  $("window").addEventListener("change", () => { shownDefects = ""; refresh(); });
  new ResizeObserver(() => {
    for (const { plot, holder } of charts.values()) plot.setSize({ width: Math.max(200, holder.clientWidth), height: 170 });
  }).observe($("line-list"));
  refresh();
})();
