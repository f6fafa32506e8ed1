// keeneye charts: tiny inline-SVG line, stacked-bar and horizontal-bar charts (no library, no CDN).
// Every chart gets a <title> and <desc> for screen readers, and every point or bar a <title> tooltip.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const W = 560;
  const M = { top: 14, right: 18, bottom: 26, left: 50 };

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    if (parent) parent.append(node);
    return node;
  }

  function reset(svg, height, title, desc) {
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    el("title", {}, svg, title || "");
    el("desc", {}, svg, desc || "");
  }

  // The smallest round number (1, 1.2, 1.5, 2, … × 10^k) at or above v: axis maxima with round ticks.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) if (m * e >= v - 1e-12) return m * e;
    return 10 * e;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (Number.isInteger(v)) return String(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1 || a === 0) return v.toFixed(2).replace(/\.?0+$/, "") || "0";
    return v.toPrecision(2);
  }

  function yAxis(svg, max, plot, format) {
    const ticks = 4;
    for (let i = 0; i <= ticks; i++) {
      const v = (max * i) / ticks;
      const y = plot.y(v);
      el("line", { class: i ? "grid-line" : "axis", x1: M.left, x2: W - M.right, y1: y, y2: y }, svg);
      el("text", { class: "tick", x: M.left - 6, y: y + 4, "text-anchor": "end" }, svg, (format || fmt)(v));
    }
  }

  function xLabels(svg, labels, plot) {
    const n = labels.length;
    if (!n) return;
    const every = Math.max(1, Math.ceil(n / 6));
    for (let i = 0; i < n; i += every) {
      el("text", { class: "tick", x: plot.x(i), y: plot.bottom + 16, "text-anchor": "middle" }, svg, labels[i]);
    }
  }

  function frame(n, max, height) {
    const bottom = height - M.bottom;
    const pw = W - M.left - M.right;
    const ph = bottom - M.top;
    return {
      bottom,
      step: pw / Math.max(n, 1),
      x: (i) => M.left + ((i + 0.5) * pw) / Math.max(n, 1),
      y: (v) => M.top + ph * (1 - Math.min(v, max) / max),
    };
  }

  // The reference line; one above the axis is drawn at the top edge and says so ("↑ off scale").
  function refLine(svg, ref, plot, max) {
    if (!ref || ref.value === null || ref.value === undefined) return;
    const above = max !== undefined && ref.value > max;
    const y = plot.y(above ? max : ref.value);
    el("line", { class: above ? "ref off-scale" : "ref", x1: M.left, x2: W - M.right, y1: y, y2: y }, svg);
    el("text", { class: "ref-label", x: W - M.right, y: above ? y + 13 : y - 4, "text-anchor": "end" }, svg,
      above ? `↑ ${ref.label} (above the axis)` : ref.label);
  }

  // A line over equal buckets; null values break the line. opts: labels, values, ref {value, label},
  // unit, name, title, desc, height.
  function line(svg, opts) {
    const height = opts.height || 220;
    reset(svg, height, opts.title, opts.desc);
    const values = opts.values;
    // The data sets the axis; a reference far above it (a 348 ms SLO over 43 ms) would squash the
    // line to a dot at 0, so it joins the axis only when within 2× the data's top.
    const dataTop = Math.max(0, ...values.filter((v) => v !== null && v !== undefined));
    const ref = opts.ref ? opts.ref.value || 0 : 0;
    const top = ref && (ref <= dataTop * 2 || !dataTop) ? Math.max(dataTop, ref) : dataTop;
    const max = niceMax(top * 1.1);
    const plot = frame(values.length, max, height);
    yAxis(svg, max, plot, opts.format);
    xLabels(svg, opts.labels, plot);
    refLine(svg, opts.ref, plot, max);
    let d = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${plot.x(i).toFixed(1)},${plot.y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) el("path", { class: "series", d }, svg);
    const gap = (i) => i < 0 || i >= values.length || values[i] === null || values[i] === undefined;
    values.forEach((v, i) => {
      // Dots where there is something to point at: non-zero values, and points no line reaches.
      if (gap(i) || (v === 0 && !(gap(i - 1) && gap(i + 1)))) return;
      const dot = el("circle", { class: "point", cx: plot.x(i), cy: plot.y(v), r: 2.5 }, svg);
      const shown = opts.format ? opts.format(v) : `${fmt(v)}${opts.unit ? " " + opts.unit : ""}`;
      el("title", {}, dot, `${opts.labels[i]}: ${shown} ${opts.name || ""}`.trim());
    });
  }

  // Stacked vertical bars. opts: labels, stacks [{name, cls, values}], title, desc, height.
  function bars(svg, opts) {
    const height = opts.height || 220;
    reset(svg, height, opts.title, opts.desc);
    const n = opts.labels.length;
    const totals = opts.labels.map((_, i) => opts.stacks.reduce((s, st) => s + (st.values[i] || 0), 0));
    const max = niceMax(Math.max(1, ...totals));
    const plot = frame(n, max, height);
    yAxis(svg, max, plot);
    xLabels(svg, opts.labels, plot);
    const width = Math.max(1, plot.step * 0.7);
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const st of opts.stacks) {
        const v = st.values[i] || 0;
        if (!v) continue;
        const y = plot.y(base + v);
        const rect = el("rect", { class: `bar ${st.cls}`, x: plot.x(i) - width / 2, y, width, height: plot.y(base) - y }, svg);
        el("title", {}, rect, `${opts.labels[i]}: ${v} ${st.name}`);
        base += v;
      }
    }
    let lx = M.left + 4;
    for (const st of opts.stacks) {
      el("rect", { class: `bar ${st.cls}`, x: lx, y: 2, width: 10, height: 10 }, svg);
      el("text", { class: "tick", x: lx + 14, y: 11 }, svg, st.name);
      lx += 18 + 7 * st.name.length;
    }
  }

  // Horizontal bars, one per row. opts: rows [{label, value, cls, note}], ref {value, label},
  // max (optional fixed axis maximum), title, desc.
  function hbars(svg, opts) {
    const rows = opts.rows;
    const rowH = 24;
    const labelW = 150;
    const height = M.top + 16 + rows.length * rowH + 8;
    reset(svg, height, opts.title, opts.desc);
    const top = Math.max(0, ...rows.map((r) => r.value || 0), opts.ref ? opts.ref.value || 0 : 0);
    const max = opts.max || niceMax(top * 1.1);
    const left = labelW;
    const right = W - M.right - 46;
    const x = (v) => left + ((right - left) * Math.min(Math.max(v, 0), max)) / max;
    el("line", { class: "axis", x1: left, x2: left, y1: M.top + 10, y2: height - 4 }, svg);
    rows.forEach((r, i) => {
      const y = M.top + 16 + i * rowH;
      el("text", { class: "label", x: left - 8, y: y + 13, "text-anchor": "end" }, svg, r.label);
      const w = r.value === null || r.value === undefined ? 0 : Math.max(1, x(r.value) - left);
      const rect = el("rect", { class: `bar ${r.cls || ""}`.trim(), x: left, y: y + 2, width: w, height: rowH - 8 }, svg);
      el("title", {}, rect, `${r.label}: ${fmt(r.value)}${r.note ? " · " + r.note : ""}`);
      el("text", { class: "tick", x: left + w + 6, y: y + 13 }, svg, fmt(r.value));
    });
    if (opts.ref && opts.ref.value !== null && opts.ref.value !== undefined) {
      const rx = x(opts.ref.value);
      el("line", { class: "ref", x1: rx, x2: rx, y1: M.top + 8, y2: height - 4 }, svg);
      el("text", { class: "ref-label", x: rx, y: M.top + 4, "text-anchor": "middle" }, svg, opts.ref.label);
    }
  }

  window.KeenCharts = { line, bars, hbars, fmt };
})();
