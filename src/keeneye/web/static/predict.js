// keeneye predict page: pick a pipeline, upload one image; the answer is drawn over the image (boxes,
// outlines, zones with class and score), classification shows its top 3 with bars. A TIFF is shown
// as the server renders it (true colour or colour infrared, or NDVI false colour).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const k = window.keeneye;
  const drop = $("drop"), input = $("file"), status = $("status"), select = $("pipeline");
  const cards = Object.fromEntries(JSON.parse($("pipelines-data").textContent).map((c) => [c.name, c]));
  let last = null; // { result, file } of the answer on screen

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function showPipeline(card) {
    $("title").textContent = card.title;
    $("description").textContent = card.description;
    $("served-version").textContent = card.served_version || "none registered yet";
    $("formats").textContent = card.formats.join(", ").toUpperCase();
    input.accept = card.accept;
    document.title = `keeneye · ${card.title}`;
    $("predict").dataset.pipeline = card.name;
  }

  // The served version may have moved since the page was rendered: ask again on every switch.
  async function switchTo(name) {
    const card = cards[name];
    showPipeline(card);
    $("result").hidden = true;
    status.className = "muted";
    status.textContent = "";
    history.replaceState(null, "", `?pipeline=${encodeURIComponent(name)}`);
    try {
      const r = await keeneyeFetch(`/v1/pipelines/${encodeURIComponent(name)}`, { headers: { accept: "application/json" } });
      if (!r.ok) return;
      const d = await r.json();
      card.served_version = d.serving_version;
      if (select.value === name) $("served-version").textContent = d.serving_version || "none registered yet";
    } catch (err) {
      /* the version rendered with the page stays */
    }
  }

  function bars(top) {
    return top.map((p) => {
      const li = el("li", { className: "prediction" });
      li.dataset.class = p.class;
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(100, p.probability * 100)).toFixed(1)}%`;
      li.append(
        el("div", { className: "row" },
          el("span", { className: "label", textContent: p.label || p.class }),
          el("span", { className: "probability", textContent: k.pct(p.probability) })),
        el("div", { className: "bar" }, fill),
      );
      return li;
    });
  }

  function headline(result) {
    if (result.task === "classify") {
      return result.predicted_label ? [`${result.predicted_label} (${k.pct(result.confidence)})`] : ["no answer"];
    }
    const n = (result.instances || []).length;
    const names = [...new Set((result.instances || []).map((i) => i.label || i.class))];
    const what = n ? `${n} region${n === 1 ? "" : "s"}: ${names.join(", ")}` : "nothing found";
    const parts = [];
    if (result.decision) parts.push(el("span", { className: `badge ${result.decision === "OK" ? "ok" : "bad"}`, textContent: result.decision }), " ");
    parts.push(what);
    return parts;
  }

  function instanceRows(result) {
    const classes = [...new Set((result.instances || []).map((i) => i.class))];
    return (result.instances || []).map((inst) => {
      const swatch = el("span", { className: "swatch" });
      swatch.style.cssText = `display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em;background:${k.colourOf(inst.class, classes)}`;
      const tr = el("tr", {},
        el("td", {}, swatch, inst.label || inst.class),
        el("td", { className: "num", textContent: k.pct(inst.score) }),
        el("td", { className: "num", textContent: `${Math.round(inst.area_px)} px` }));
      tr.dataset.class = inst.class;
      return tr;
    });
  }

  function isMultispectral(result) {
    const bands = (result.image && result.image.bands) || [];
    return bands.includes("nir") && bands.includes("red");
  }

  function draw(view) {
    const { result, file } = last;
    const frame = $("frame");
    const img = $("preview");
    const tiff = (result.image && result.image.format === "tiff") || /\.tiff?$/i.test(file.name);
    img.src = tiff || view !== "auto" ? k.imageUrl(result.observation_id, "tiff", view) : URL.createObjectURL(file);
    img.onload = () => img.classList.toggle("tiny", img.naturalWidth < 260); // show pixels, not blur
    frame.querySelectorAll("svg").forEach((s) => s.remove());
    const svg = k.overlay(result);
    if (svg) frame.append(svg);
    const views = $("views");
    views.hidden = !isMultispectral(result);
    views.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.view === view)));
    $("ndvi-legend").hidden = view !== "ndvi";
  }

  function show(result, file) {
    last = { result, file };
    draw("auto");
    $("answer").replaceChildren(...headline(result));
    $("top3").replaceChildren(...bars(result.top_3_predictions || []));
    const rows = instanceRows(result);
    $("instances").querySelector("tbody").replaceChildren(...rows);
    $("instances").hidden = rows.length === 0;
    $("latency").textContent = `${result.processing_time_ms.toFixed(1)} ms`;
    $("model-version").textContent = result.model_version;
    $("cached").textContent = result.cached ? "from cache" : "computed";
    $("observation").textContent = result.observation_id;
    $("observation-link").href = `/observations?id=${encodeURIComponent(result.observation_id)}`;
    $("result").hidden = false;
  }

  function refuse(text, reason) {
    status.className = "error";
    status.replaceChildren(text, reason ? " " : "", reason ? el("code", { textContent: `(${reason})` }) : "");
    status.dataset.reason = reason || "";
  }

  async function send(file) {
    if (!file) return;
    status.className = "muted";
    status.dataset.reason = "";
    status.textContent = `Sending ${file.name}…`;
    const body = new FormData();
    body.append("file", file);
    const pipeline = select.value;
    try {
      const response = await keeneyeFetch(`/v1/pipelines/${encodeURIComponent(pipeline)}/predict`, { method: "POST", body });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        $("result").hidden = true;
        refuse(`Not accepted: ${k.errorText(data, response)}`, data.reason);
        return;
      }
      status.textContent = "";
      show(data, file);
    } catch (err) {
      refuse(`Request failed: ${err.message || err}`);
    }
  }

  select.addEventListener("change", () => switchTo(select.value));
  $("views").addEventListener("click", (e) => { const b = e.target.closest("button[data-view]"); if (b && last) draw(b.dataset.view); });
  input.addEventListener("change", () => { send(input.files[0]); input.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));
})();
