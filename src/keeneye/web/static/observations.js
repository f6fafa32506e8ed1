// keeneye observations page: the filtered list (GET /v1/observations, keyset pages via next_cursor)
// and one observation opened in full (GET /v1/observations/{id}/trace): the image with its boxes and
// outlines drawn in an SVG overlay, every answer, the latency breakdown and the feedback. Filters and
// the open observation live in the URL, so a view can be shared.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const root = $("observations");
  const when = (iso) => (iso ? new Date(iso).toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "–");
  const short = (iso) => (iso ? new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "–");
  const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(1)} ms`);
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
  const say = (text, bad) => { $("status").textContent = text; $("status").className = bad ? "error" : "muted"; };
  const FILTERS = ["pipeline", "status", "since", "until", "class", "decision", "variant"];
  const TIMES = new Set(["since", "until"]);
  let cursor = null;
  const PAGE = Math.min(200, Math.max(1, Number(new URLSearchParams(location.search).get("limit")) || 50));

  function el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  function badge(status, extra) {
    const cls = status === "done" ? "ok" : status === "queued" || status === "processing" ? "warn" : "bad";
    return el("span", { className: `badge ${cls}`, textContent: status + (extra ? ` · ${extra}` : "") });
  }
  // One line for an answer: the class (classification), the decision and instance count (detect / segment).
  function answerText(a) {
    if (!a) return "–";
    if (a.predicted_class) return a.predicted_label && a.predicted_label !== a.predicted_class ? `${a.predicted_label} (${a.predicted_class})` : a.predicted_class;
    const parts = [];
    if (a.decision) parts.push(a.decision);
    if (a.count !== null && a.count !== undefined) parts.push(`${a.count} instance${a.count === 1 ? "" : "s"}`);
    return parts.join(" · ") || a.task || "–";
  }
  async function getJson(url) {
    const r = await keeneyeFetch(url, { headers: { accept: "application/json" } });
    const d = await r.json().catch(() => ({}));
    if (!r.ok) {
      const detail = typeof d.detail === "string" ? d.detail : Array.isArray(d.detail) ? d.detail.map((x) => `${x.loc.slice(-1)[0]}: ${x.msg}`).join("; ") : r.statusText;
      throw new Error(detail + (d.fix ? ` — ${d.fix}` : ""));
    }
    return d;
  }

  // ---- the list -----------------------------------------------------------------------------------
  function query() {
    const q = new URLSearchParams();
    for (const name of FILTERS) {
      const v = $(`f-${name}`).value.trim();
      if (!v) continue;
      q.set(name, TIMES.has(name) ? new Date(v).toISOString() : v);  // datetime-local is local time
    }
    return q;
  }
  function localInput(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }
  function row(o) {
    const a = o.answer;
    const open = el("a", { href: `?${pageQuery(o.id)}`, textContent: short(o.updated_at), className: "open", title: when(o.updated_at) });
    open.addEventListener("click", (e) => { e.preventDefault(); select(o.id); });
    const tr = el("tr", {},
      el("th", { scope: "row" }, open),
      el("td", { textContent: o.pipeline }),
      el("td", {}, badge(o.status, o.reason)),
      el("td", { className: "answer", textContent: answerText(a) }),
      el("td", { className: "num", textContent: a ? pct(a.confidence) : "–" }),
      el("td", { className: "small model", textContent: a ? `v${a.model_version} · ${a.variant}` : "–" }),
      el("td", { className: "num", textContent: a ? ms(a.latency_ms) : "–" }));
    tr.dataset.observation = o.id;
    tr.dataset.pipeline = o.pipeline;
    tr.dataset.status = o.status;
    if (a) {
      tr.dataset.variant = a.variant;
      if (a.predicted_class) tr.dataset.class = a.predicted_class;
      if (a.decision) tr.dataset.decision = a.decision;
    }
    return tr;
  }
  async function load(append) {
    const q = query();
    q.set("limit", String(PAGE));
    if (append && cursor) q.set("cursor", cursor);
    say("Loading…");
    try {
      const d = await getJson(`/v1/observations?${q}`);
      const body = $("obs-table").querySelector("tbody");
      if (!append) body.replaceChildren();
      body.append(...d.observations.map(row));
      cursor = d.next_cursor;
      const shown = body.children.length;
      $("obs-table").hidden = !shown;
      $("obs-empty").hidden = !!shown;
      $("more").hidden = !cursor;
      $("list-count").textContent = shown ? `· ${shown}${cursor ? "+" : ""} shown` : "";
      say("");
      root.dataset.loaded = String(Number(root.dataset.loaded || 0) + 1);
    } catch (e) {
      say(`Could not list observations: ${e.message}`, true);
    }
  }
  function pageQuery(id) {
    const q = query();
    if (PAGE !== 50) q.set("limit", String(PAGE));
    if (id) q.set("id", id);
    return q.toString();
  }

  // ---- one observation ----------------------------------------------------------------------------
  // The shapes are drawn by the shared overlay (overlay.js, as on the predict and review pages); an
  // answer without the image's size is drawn at the size the browser decoded.
  function drawOverlay(result) {
    const img = $("obs-img");
    const im = (result && result.image) || {};
    const w = im.width || img.naturalWidth, h = im.height || img.naturalHeight;
    const svg = w && h && result ? window.keeneye.overlay({ ...result, image: { ...im, width: w, height: h } }) : null;
    const drawn = svg || document.createElementNS("http://www.w3.org/2000/svg", "svg");
    drawn.id = "obs-overlay";
    drawn.setAttribute("aria-hidden", "true");
    $("obs-overlay").replaceWith(drawn);
    return svg ? svg.querySelectorAll(".instance, .zone").length : 0;
  }
  function showImage(d, result) {
    const img = $("obs-img");
    const fig = $("obs-figure");
    $("obs-overlay").replaceChildren();
    if (!d.links.image) { fig.hidden = true; return; }
    fig.hidden = false;
    const caption = (n) => { $("obs-caption").textContent = n ? `${n} shape${n === 1 ? "" : "s"} drawn` : result && result.instances ? "nothing found" : ""; };
    img.onload = () => caption(drawOverlay(result));
    // The PNG rendering shows any image a browser cannot (a GeoTIFF, 16-bit); the bytes as received otherwise.
    img.onerror = () => {
      if (img.dataset.tried !== "raw") { img.dataset.tried = "raw"; img.src = d.links.image; return; }
      $("obs-caption").textContent = "the image could not be shown";
    };
    img.dataset.tried = "png";
    img.src = `${d.links.image}.png?size=1024`;
  }
  function timings(p) {
    const body = $("obs-timings").querySelector("tbody");
    const rows = Object.entries((p && p.timings) || {}).filter(([, v]) => typeof v === "number");
    body.replaceChildren(...rows.map(([k, v]) => el("tr", { className: "timing" }, el("th", { scope: "row", textContent: k.replace(/_ms$/, "").replaceAll("_", " ") }), el("td", { className: "num", textContent: ms(v) }))));
    if (p) body.append(el("tr", { className: "total" }, el("th", { scope: "row", textContent: "total" }), el("td", { className: "num", textContent: ms(p.latency_ms) })));
    if (!body.children.length) body.append(el("tr", {}, el("td", { className: "muted", textContent: "no answer" })));
  }
  async function select(id) {
    history.replaceState(null, "", `?${pageQuery(id)}`);
    $("observation-id").value = id;
    await open(id);
  }
  async function open(id) {
    say("Loading…");
    try {
      const d = await getJson(`/v1/observations/${encodeURIComponent(id)}/trace`);
      const answered = d.predictions.filter((p) => p.variant === "champion" || p.variant === "canary");
      const p = answered[answered.length - 1] || null;
      $("obs-id").textContent = d.id;
      $("obs-pipeline").textContent = d.pipeline;
      $("obs-status").replaceChildren(badge(d.status, d.reason));
      $("obs-answer").textContent = answerText(d.answer);
      $("obs-version").textContent = p ? `${p.model_name} v${p.model_version} · ${p.variant}` : "–";
      $("obs-created").textContent = when(d.created_at);
      $("obs-updated").textContent = when(d.completed_at || d.updated_at);
      $("obs-input").textContent = `${d.content_type}, ${(d.size_bytes / 1024).toFixed(1)} KiB, from ${d.source}${d.attempts > 1 ? `, ${d.attempts} attempts` : ""}`;
      $("obs-hash").textContent = d.content_hash;
      const link = $("obs-image");
      link.hidden = !d.links.image;
      if (d.links.image) link.href = d.links.image;
      timings(p);
      $("obs-predictions").querySelector("tbody").replaceChildren(...(d.predictions.length ? d.predictions.map((q) => el("tr", { className: `prediction ${q.variant}` },
        el("th", { scope: "row", textContent: q.variant }),
        el("td", { textContent: `v${q.model_version}` }),
        el("td", { textContent: answerText({ ...q.result, decision: q.decision }) }),
        el("td", { className: "num", textContent: pct(q.confidence) }),
        el("td", { className: "num", textContent: ms(q.latency_ms) }),
        el("td", { className: "small", textContent: when(q.created_at) }))) : [el("tr", {}, el("td", { colSpan: 6, className: "muted", textContent: "no model answered" }))]));
      $("obs-feedback").replaceChildren(...(d.feedback.length ? d.feedback.map((f) => el("li", { className: "feedback" },
        el("b", { textContent: Object.entries(f.label).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") }),
        ` — ${f.source}${f.author ? ` (${f.author})` : ""}, ${when(f.created_at)}`)) : [el("li", { className: "muted", textContent: "none yet" })]));
      $("obs-result").textContent = JSON.stringify(p ? p.result : null, null, 2);
      showImage(d, p ? p.result : null);
      $("observation").hidden = false;
      $("observation").dataset.observation = d.id;
      say("");
      $("observation").scrollIntoView({ block: "start", behavior: "instant" });
    } catch (e) {
      $("observation").hidden = true;
      say(`Could not open ${id}: ${e.message}`, true);
    }
  }

  // ---- wiring -------------------------------------------------------------------------------------
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    history.replaceState(null, "", `?${pageQuery()}`);
    load(false);
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { history.replaceState(null, "", "?"); load(false); }, 0));
  $("more").addEventListener("click", () => load(true));
  $("lookup").addEventListener("submit", (e) => { e.preventDefault(); select($("observation-id").value.trim()); });

  const asked = new URLSearchParams(location.search);
  for (const name of FILTERS) {
    const v = asked.get(name);
    if (v) $(`f-${name}`).value = TIMES.has(name) ? localInput(v) : v;
  }
  load(false);
  if (asked.get("id")) { $("observation-id").value = asked.get("id"); open(asked.get("id")); }
})();
