// keeneye field page: Leaflet map (boundary, NDVI false colour of the chosen flight, vigour and
// disease zones), the flight's numbers, the NDVI / diseased-hectare trend (uPlot) and the downloads.
// Offline by default: no tile layer unless data-basemap names one. Data: GET /v1/fields/{id}/history.
(function () {
  "use strict";
  const root = document.getElementById("field");
  const field = JSON.parse(document.getElementById("field-data").textContent);
  const statusNode = document.getElementById("status");
  const picker = document.getElementById("flight");
  const enc = encodeURIComponent;
  // The flight picker acts on change; Enter in the form must not reload the page.
  document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());
  const VIGOUR = { very_low: "#b2182b", low: "#ef8a62", medium_low: "#fddbc7", medium: "#f7f7a0", medium_high: "#a6d96a", high: "#1a9850", very_high: "#006837" };
  const DISEASE = ["#7b2cbf", "#d62828", "#f77f00", "#3a86ff", "#6a040f"];
  const diseaseColour = {};

  function colourOf(props) {
    if (props.kind !== "disease") return VIGOUR[props.class] || "#888";
    if (!(props.class in diseaseColour)) diseaseColour[props.class] = DISEASE[Object.keys(diseaseColour).length % DISEASE.length];
    return diseaseColour[props.class];
  }

  function num(v, digits) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the map ------------------------------------------------------------------------------------
  const map = L.map("map", { zoomSnap: 0.25, attributionControl: Boolean(root.dataset.basemap) });
  if (root.dataset.basemap) L.tileLayer(root.dataset.basemap, { maxZoom: 22 }).addTo(map);
  const boundary = L.geoJSON(field.boundary, { style: { color: "#1b2a36", weight: 3, fill: false }, interactive: false }).addTo(map);
  map.fitBounds(boundary.getBounds(), { padding: [16, 16] });
  let ndviLayer = null;
  let zonesLayer = null;
  let ndviUrl = null;
  // The layers control lists only overlays that exist and hold something, and is on the map only while
  // it lists one: an empty control is a white box (a field without flights, a page still loading).
  let control = null;
  function refreshControl() {
    if (control) { control.remove(); control = null; }
    const overlays = {};
    if (zonesLayer && zonesLayer.vigour.getLayers().length) overlays["Vigour zones"] = zonesLayer.vigour;
    if (zonesLayer && zonesLayer.disease.getLayers().length) overlays["Disease zones"] = zonesLayer.disease;
    if (ndviLayer) overlays["NDVI"] = ndviLayer;
    if (Object.keys(overlays).length) control = L.control.layers(null, overlays, { collapsed: false }).addTo(map);
  }

  function popupOf(props) {
    const box = el("div", { class: "zone-popup" });
    box.append(el("strong", {}, `${props.kind === "disease" ? "Disease" : "Vigour"}: ${props.class}`));
    const dl = el("dl");
    const rows = [["Hectares", num(props.area_ha, 4)], ["Severity", num(props.severity, 2)], ["Confidence", num(props.confidence, 2)]];
    for (const [k, v] of rows) {
      dl.append(el("dt", {}, k));
      dl.append(el("dd", { "data-key": k.toLowerCase() }, v));
    }
    box.append(dl);
    return box;
  }

  function drawZones(flight) {
    if (zonesLayer) { map.removeLayer(zonesLayer.vigour); map.removeLayer(zonesLayer.disease); }
    const make = (kind) => L.geoJSON(flight.zones, {
      filter: (f) => (f.properties.kind === "disease") === (kind === "disease"),
      style: (f) => {
        const p = f.properties;
        const sev = typeof p.severity === "number" ? p.severity : 0.5;
        return kind === "disease"
          ? { color: colourOf(p), weight: 2, fillColor: colourOf(p), fillOpacity: 0.25 + 0.55 * sev }
          : { color: colourOf(p), weight: 1, fillColor: colourOf(p), fillOpacity: 0.35, dashArray: "3 3" };
      },
      onEachFeature: (f, layer) => {
        layer.bindPopup(() => popupOf(f.properties));
        layer.on("add", () => { const path = layer.getElement && layer.getElement(); if (path) { path.dataset.kind = f.properties.kind; path.dataset.class = f.properties.class; path.dataset.ha = f.properties.area_ha; } });
      },
    });
    zonesLayer = { vigour: make("vigour").addTo(map), disease: make("disease").addTo(map) };
    zonesLayer.disease.bringToFront();
    refreshControl();
    const legend = document.getElementById("legend");
    legend.replaceChildren();
    const seen = new Set();
    for (const f of flight.zones.features || []) {
      const key = `${f.properties.kind}:${f.properties.class}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const li = el("li");
      const swatch = el("i");
      swatch.style.background = colourOf(f.properties);
      li.append(swatch, `${f.properties.kind} · ${f.properties.class}`);
      legend.append(li);
    }
  }

  async function drawNdvi(flight) {
    if (ndviLayer) { map.removeLayer(ndviLayer); ndviLayer = null; refreshControl(); }
    if (ndviUrl) { URL.revokeObjectURL(ndviUrl); ndviUrl = null; }
    if (!flight.observation_id) return "no stored image";
    const r = await keeneyeFetch(`/v1/observations/${enc(flight.observation_id)}/index/ndvi.png?size=1024`);
    if (!r.ok) return `NDVI map: HTTP ${r.status}`;
    const b = (r.headers.get("X-Keeneye-Bounds") || "").split(",").map(Number);
    if (b.length !== 4 || b.some(Number.isNaN)) return "NDVI map: no bounds";
    ndviUrl = URL.createObjectURL(await r.blob());
    ndviLayer = L.imageOverlay(ndviUrl, [[b[0], b[1]], [b[2], b[3]]], { opacity: 0.85, className: "ndvi-overlay" }).addTo(map);
    ndviLayer.bringToBack();
    refreshControl();
    return null;
  }

  // --- the flight table and downloads -------------------------------------------------------------
  function drawTable(flight) {
    const body = document.querySelector("#flight-table tbody");
    body.replaceChildren();
    const row = (k, v, key) => { const tr = el("tr", key ? { "data-key": key } : {}); tr.append(el("th", { scope: "row" }, k), el("td", { class: "num" }, v)); body.append(tr); };
    row("Observed", flight.observed_at.replace("T", " ").slice(0, 16));
    for (const [name, s] of Object.entries(flight.indices)) row(`${name.toUpperCase()} mean (p10–p90)`, `${num(s.mean, 3)} (${num(s.p10, 2)}–${num(s.p90, 2)})`, name);
    const diseased = Object.values(flight.disease_ha).reduce((a, b) => a + b, 0);
    row("Diseased ha", num(diseased, 4), "disease_ha");
    for (const [cls, ha] of Object.entries(flight.disease_ha)) row(`· ${cls}`, num(ha, 4));
    for (const [cls, ha] of Object.entries(flight.vigour_ha)) row(`Vigour ${cls} ha`, num(ha, 4));
  }

  function setLink(id, url) {
    const a = document.getElementById(id);
    if (url) { a.href = url; a.removeAttribute("aria-disabled"); } else { a.removeAttribute("href"); a.setAttribute("aria-disabled", "true"); }
  }

  function drawDownloads(flight) {
    const base = `/v1/fields/${enc(field.id)}/prescription?flight=${enc(flight.flight)}`;
    setLink("dl-geojson", `${base}&format=geojson`);
    setLink("dl-shapefile", `${base}&format=shapefile`);
    setLink("dl-cog", flight.observation_id ? `/v1/observations/${enc(flight.observation_id)}/index/ndvi.tif` : null);
  }

  // --- the trend ----------------------------------------------------------------------------------
  function drawTrend(flights) {
    const node = document.getElementById("trend");
    if (!flights.length) { node.hidden = true; document.getElementById("trend-empty").hidden = false; return; }
    const x = flights.map((_, i) => i);
    const ndvi = flights.map((f) => (f.indices.ndvi ? f.indices.ndvi.mean : null));
    const ha = flights.map((f) => Object.values(f.disease_ha).reduce((a, b) => a + b, 0));
    const labels = flights.map((f) => f.flight);
    const opts = {
      width: Math.max(240, node.clientWidth), height: 220, legend: { live: false },
      scales: { x: { time: false, range: () => [-0.5, flights.length - 0.5] }, ndvi: { range: [-0.2, 1] }, ha: { range: (u, min, max) => [0, Math.max(0.01, max * 1.2)] } },
      axes: [
        { values: (u, vs) => vs.map((v) => (Number.isInteger(v) && labels[v] !== undefined ? labels[v] : "")), incrs: [1], grid: { show: false } },
        { scale: "ndvi", label: "NDVI mean", size: 50, grid: { stroke: "#e3e9ee" } },
        { scale: "ha", side: 1, label: "diseased ha", size: 60, grid: { show: false } },
      ],
      series: [
        { label: "flight", value: (u, v) => (v === null ? "–" : labels[v] || "") },
        { label: "NDVI mean", scale: "ndvi", stroke: "#1a9850", width: 2, points: { show: true, size: 7, fill: "#1a9850" } },
        { label: "diseased ha", scale: "ha", stroke: "#d62828", width: 2, points: { show: true, size: 7, fill: "#d62828" } },
      ],
    };
    const chart = new uPlot(opts, [x, ndvi, ha], node);
    node.dataset.points = String(flights.length);
    new ResizeObserver(() => chart.setSize({ width: Math.max(240, node.clientWidth), height: 220 })).observe(node);
  }

  // --- wiring -------------------------------------------------------------------------------------
  async function show(flights, name) {
    const flight = flights.find((f) => f.flight === name);
    if (!flight) return;
    statusNode.textContent = `Flight ${flight.flight}: drawing…`;
    drawZones(flight);
    drawTable(flight);
    drawDownloads(flight);
    const problem = await drawNdvi(flight);
    const n = (flight.zones.features || []).length;
    statusNode.textContent = `Flight ${flight.flight} · ${n} zone${n === 1 ? "" : "s"}${problem ? ` · ${problem}` : ""}`;
    root.dataset.flight = flight.flight;
    root.dataset.loaded = "true";
  }

  async function load() {
    const r = await keeneyeFetch(`/v1/fields/${enc(field.id)}/history`);
    if (!r.ok) { statusNode.textContent = `Could not load the history: HTTP ${r.status}`; return; }
    const flights = (await r.json()).flights;
    drawTrend(flights);
    picker.replaceChildren(...flights.map((f) => el("option", { value: f.flight }, f.flight === f.observed_at.slice(0, 10) ? f.flight : `${f.flight} (${f.observed_at.slice(0, 10)})`)));
    if (!flights.length) {
      picker.append(el("option", {}, "no flight yet"));
      const none = el("tr");
      none.append(el("td", { class: "empty" }, "no flight yet"));
      document.querySelector("#flight-table tbody").replaceChildren(none);
      for (const id of ["dl-geojson", "dl-shapefile", "dl-cog"]) setLink(id, null);
      statusNode.textContent = "No flight yet: send a crop-health image of this field (metadata.field or an overlapping GeoTIFF).";
      root.dataset.loaded = "true";
      return;
    }
    picker.disabled = false;
    picker.value = flights[flights.length - 1].flight;
    picker.addEventListener("change", () => show(flights, picker.value));
    await show(flights, picker.value);
  }

  load().catch((err) => { statusNode.textContent = `Error: ${err}`; });
})();
