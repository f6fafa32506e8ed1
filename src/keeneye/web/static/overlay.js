// keeneye answers drawn for people, shared by the predict and review pages (window.keeneye):
//  - overlay(answer): an SVG over the image (viewBox = the image's pixels) with each instance's
//    outline (polygon) or box, its class label and score, and the answer's zones (dashed) if any;
//  - imageUrl(observationId, format, view): the stored image, as a PNG rendered by the server for a
//    TIFF (browsers cannot show one) — view "auto" (true colour / colour infrared) or "ndvi";
//  - errorText(data, response): one readable line from an API refusal (detail — fix [reason]).
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  // Okabe–Ito: distinguishable with colour blindness
  const PALETTE = ["#d55e00", "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#f0e442", "#000000"];

  function colourOf(name, classes) {
    const i = classes.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  const pct = (p) => `${(p * 100).toFixed(1)}%`;

  // Outlines trace pixel centres: +0.5 puts them on pixel edges, as boxes are.
  function shapeOf(item) {
    if (Array.isArray(item.polygon) && item.polygon.length >= 3) {
      return svg("polygon", { points: item.polygon.map(([x, y]) => `${x + 0.5},${y + 0.5}`).join(" ") });
    }
    if (Array.isArray(item.box) && item.box.length === 4) {
      const [x1, y1, x2, y2] = item.box;
      return svg("rect", { x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1) });
    }
    return null;
  }

  function topLeft(item) {
    if (Array.isArray(item.box) && item.box.length === 4) return [item.box[0], item.box[1]];
    const xs = item.polygon.map((p) => p[0]), ys = item.polygon.map((p) => p[1]);
    return [Math.min(...xs), Math.min(...ys)];
  }

  function overlay(answer, options) {
    const image = answer && answer.image;
    const instances = (answer && answer.instances) || [];
    const zones = (answer && answer.zones) || [];
    if (!image || !image.width || !image.height || !(instances.length || zones.length)) return null;
    const classes = (options && options.classes) || [...new Set([...instances, ...zones].map((i) => i.class))];
    const root = svg("svg", { viewBox: `0 0 ${image.width} ${image.height}`, preserveAspectRatio: "none", class: "overlay" });
    const font = Math.max(image.width, image.height) / 28;
    const stroke = Math.max(1, Math.max(image.width, image.height) / 220);
    const draw = (item, kind) => {
      const shape = shapeOf(item);
      if (!shape) return;
      const colour = colourOf(item.class, classes);
      const name = item.label || item.class || kind;
      const text = item.score === undefined || item.score === null ? name : `${name} ${pct(item.score)}`;
      shape.setAttribute("class", kind);
      shape.setAttribute("fill", colour);
      shape.setAttribute("fill-opacity", kind === "zone" ? "0.12" : "0.22");
      shape.setAttribute("stroke", colour);
      shape.setAttribute("stroke-width", stroke);
      if (kind === "zone") shape.setAttribute("stroke-dasharray", `${stroke * 4} ${stroke * 3}`);
      shape.dataset.class = item.class;
      const title = svg("title");
      title.textContent = text;
      shape.append(title);
      root.append(shape);
      if (options && options.labels === false) return;
      const [x, y] = topLeft(item);
      const label = svg("text", {
        x: Math.max(0, x), y: y > font * 1.2 ? y - font * 0.3 : y + font,
        "font-size": font, fill: colour, stroke: "#fff", "stroke-width": font / 5,
        "paint-order": "stroke", "font-weight": "600", class: "label",
      });
      label.textContent = text;
      root.append(label);
    };
    zones.forEach((z) => draw(z, "zone"));
    instances.forEach((i) => draw(i, "instance"));
    return root;
  }

  function imageUrl(observationId, format, view) {
    const id = encodeURIComponent(observationId);
    if (format !== "tiff" && !view) return `/v1/observations/${id}/image`;
    return `/v1/observations/${id}/image.png?view=${encodeURIComponent(view || "auto")}`;
  }

  function errorText(data, response) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    const line = detail || (response && response.statusText) || "the request failed";
    const fix = data && data.fix ? ` — ${data.fix}` : "";
    return `${line}${fix}`;
  }

  window.keeneye = Object.assign(window.keeneye || {}, { overlay, imageUrl, errorText, colourOf, pct });
})();
