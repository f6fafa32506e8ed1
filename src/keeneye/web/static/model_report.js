// keeneye models page: a version's evaluation report (GET /v1/pipelines/{name}/models/{version}/evaluation),
// drawn under the pipeline's table when its "Report" button is pressed — what training measured on
// the test split: the gates against their thresholds, metrics per class, the precision-recall curve
// (uPlot, one series per class), the confusion matrix as a heat-map table with counts, and the data.
// The same code draws classify, detect and segment reports: the API gives them one shape.
(function () {
  "use strict";
  const k = window.keeneye;
  const num = (v, digits) => (v === null || v === undefined ? "–" : v.toFixed(digits === undefined ? 3 : digits));
  const count = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const charts = new Map(); // report element → [chart, its width now]

  function el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }
  function table(className, head, rows) {
    return el("div", { className: "scroll-x" }, el("table", { className: `table ${className}` },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", className: h.num ? "num" : "", textContent: h.text })))),
      el("tbody", {}, ...rows)));
  }

  function dataLine(d) {
    const data = d.data, parts = [`Test split: ${count(d.n_images)} images`];
    if (data.version) parts.push(`data version ${data.version}`);
    if (data.images !== null) parts.push(`${count(data.images)} images${data.annotations !== null ? `, ${count(data.annotations)} annotations` : ""} in the dataset`);
    if (data.splits) parts.push(`train ${count(data.splits.train)} / val ${count(data.splits.val)} / test ${count(data.splits.test)}`);
    const classes = Object.entries(data.class_counts || {});
    return el("div", { className: "report-data" },
      el("p", { className: "small", textContent: parts.join(" · ") }),
      classes.length ? el("p", { className: "small muted class-counts", textContent: "Labelled per class: " + classes.map(([n, c]) => `${n} ${count(c)}`).join(" · ") }) : null);
  }

  function gates(g) {
    const where = (c) => (c.kind === "absolute" ? "floor" : c.kind === "regression" ? `vs champion${g.champion_version ? ` v${g.champion_version}` : ""}` : c.kind === "target" ? "target (reported, not blocking)" : `${c.group}`);
    // A design target is reported with its gap but never refuses a model: "met" / "missed", not pass / fail.
    const verdict = (c) => (c.kind === "target" ? (c.passed ? "met" : "missed") : c.passed ? "pass" : "fail");
    const rows = g.checks.map((c) => {
      const tr = el("tr", { className: `gate ${c.passed ? "pass" : c.kind === "target" ? "missed" : "fail"}` },
        el("th", { scope: "row", textContent: c.metric }),
        el("td", { className: "small", textContent: where(c) }),
        el("td", { className: "num value", textContent: num(c.value) }),
        el("td", { className: "num", textContent: num(c.threshold) }),
        el("td", {}, el("span", { className: `badge ${c.passed ? "passed" : c.kind === "target" ? "missed" : "failed"}`, textContent: verdict(c) })));
      tr.dataset.metric = c.metric;
      tr.dataset.kind = c.kind;
      return tr;
    });
    return el("div", { className: "report-gates" },
      el("h3", {}, "Gates ", el("span", { className: `badge gates ${g.status}`, textContent: g.status })),
      rows.length ? table("gates-table", [{ text: "Metric" }, { text: "Check" }, { text: "Value", num: true }, { text: "Threshold", num: true }, { text: "Result" }], rows)
        : el("p", { className: "muted small", textContent: "no gate result was stored with this version" }),
      g.notes.length ? el("ul", { className: "small muted" }, ...g.notes.map((n) => el("li", { textContent: n }))) : null);
  }

  function classes(d) {
    const cols = [["precision", "Precision"], ["recall", "Recall"], ["f1", "F1"], ["average_precision", "AP"], ["iou", "IoU"]]
      .filter(([key]) => d.classes.some((c) => c[key] !== null));
    const unit = d.class_unit === "pixels" ? "Pixels" : "Images";
    const rows = d.classes.map((c) => {
      const tr = el("tr", {}, el("th", { scope: "row", textContent: c.name }),
        ...cols.map(([key]) => el("td", { className: `num ${key}`, textContent: num(c[key]) })),
        el("td", { className: "num support", textContent: count(c.support) }));
      tr.dataset.class = c.name;
      return tr;
    });
    const scalars = Object.entries(d.metrics).map(([name, v]) => `${name} ${name.endsWith("_ms") ? `${num(v, 1)} ms` : num(v)}`).join(" · ");
    return el("div", { className: "report-classes" },
      el("h3", { textContent: "Metrics per class" }),
      rows.length ? table("classes-table", [{ text: "Class" }, ...cols.map(([, t]) => ({ text: t, num: true })), { text: unit, num: true }], rows)
        : el("p", { className: "muted small", textContent: "no per-class metrics in this report" }),
      el("p", { className: "small muted overall", textContent: scalars }),
      d.undefined.length ? el("p", { className: "small muted", textContent: `not measurable on this test split: ${d.undefined.join(", ")}` }) : null);
  }

  // uPlot wants one ascending x for every series: the recall values of all curves, each curve's best
  // precision at that recall (null where it has none; the line spans the gap).
  function curveData(curves) {
    const xs = [...new Set(curves.flatMap((c) => c.recall))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = curves.map((c) => {
      const y = new Array(xs.length).fill(null);
      c.recall.forEach((r, i) => { const j = index.get(r); y[j] = Math.max(y[j] === null ? -1 : y[j], c.precision[i]); });
      return y;
    });
    return [xs, ...ys];
  }

  function prCurve(d, holder) {
    const curves = d.pr_curves;
    const labels = curves.map((c) => c.label);
    const width = () => Math.max(260, Math.min(560, holder.clientWidth || 560));
    const opts = {
      width: width(), height: 260,
      scales: { x: { time: false, range: [0, 1] }, y: { range: [0, 1.02] } },
      axes: [{ label: "recall", font: "11px system-ui", labelFont: "12px system-ui", size: 34, labelSize: 18 },
        { label: "precision", font: "11px system-ui", labelFont: "12px system-ui", size: 40, labelSize: 18 }],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: "recall" }, ...curves.map((c) => ({
        label: `${c.label} (AP ${num(c.average_precision, 2)})`, stroke: k.colourOf(c.label, labels), width: 2,
        spanGaps: true, points: { show: (u) => u.data[0].length < 30, size: 5 },
      }))],
    };
    const chart = new uPlot(opts, curveData(curves), holder);
    return [chart, width];
  }

  function confusion(m) {
    const max = (row) => Math.max(1, row.reduce((a, b) => a + b, 0));
    const head = el("tr", {}, el("th", { scope: "col", className: "corner", textContent: "truth ↓ · predicted →" }),
      ...m.labels.map((l) => el("th", { scope: "col", textContent: l })));
    const rows = m.counts.map((row, i) => {
      const total = max(row);
      return el("tr", {}, el("th", { scope: "row", textContent: m.labels[i] }), ...row.map((n, j) => {
        const share = n / total;
        const td = el("td", { className: `num cell${i === j ? " diagonal" : ""}`, textContent: count(n),
          title: `truth ${m.labels[i]}, predicted ${m.labels[j]}: ${count(n)} ${m.unit} (${(share * 100).toFixed(1)}% of ${m.labels[i]})` });
        td.style.setProperty("--share", share.toFixed(3));
        if (share > 0.55) td.classList.add("dark");
        td.dataset.truth = m.labels[i];
        td.dataset.predicted = m.labels[j];
        td.dataset.count = String(n);
        return td;
      }));
    });
    return el("div", { className: "report-confusion" },
      el("h3", {}, "Confusion matrix ", el("span", { className: "muted small", textContent: `(${m.unit}; shade = share of the true class)` })),
      el("div", { className: "scroll-x" }, el("table", { className: "confusion" }, el("thead", {}, head), el("tbody", {}, ...rows))));
  }

  function render(box, d) {
    const old = charts.get(box);
    if (old) { old[0].destroy(); charts.delete(box); }
    const holder = el("div", { className: "pr-chart" });
    holder.setAttribute("role", "img");
    holder.setAttribute("aria-label", `Precision against recall on the test split: ${d.pr_curves.map((c) => `${c.label} AP ${num(c.average_precision, 2)}`).join(", ")}`);
    const close = el("button", { type: "button", className: "report-close", textContent: "Close" });
    close.addEventListener("click", () => hide(box));
    box.replaceChildren(
      el("div", { className: "report-head" }, el("h3", { textContent: `Evaluation report of v${d.version}` }), close),
      dataLine(d),
      el("div", { className: "report-grid" }, gates(d.gates), classes(d)),
      el("div", { className: "report-grid wide" },
        el("div", { className: "report-pr" }, el("h3", { textContent: "Precision-recall" }),
          d.pr_curves.length ? holder : el("p", { className: "muted small", textContent: "no PR curve in this report (no positive test image, or a report from an older keeneye)" })),
        d.confusion_matrix ? confusion(d.confusion_matrix) : el("p", { className: "muted small", textContent: "no confusion matrix in this report" })));
    box.hidden = false;
    if (d.pr_curves.length) charts.set(box, prCurve(d, holder));
    box.dataset.version = d.version;
    box.dataset.loaded = String(Number(box.dataset.loaded || 0) + 1);
  }

  function hide(box) {
    box.hidden = true;
    delete box.dataset.version;
    for (const b of document.querySelectorAll(`button.report-open[data-pipeline="${box.dataset.pipeline}"]`)) b.setAttribute("aria-expanded", "false");
  }

  async function open(button) {
    const { pipeline, report: version } = button.dataset;
    const box = document.getElementById(`report-${pipeline}`);
    if (!box.hidden && box.dataset.version === version) { hide(box); return; }
    for (const b of document.querySelectorAll(`button.report-open[data-pipeline="${pipeline}"]`)) b.setAttribute("aria-expanded", String(b === button));
    box.hidden = false;
    box.replaceChildren(el("p", { className: "muted small", textContent: `Loading the report of v${version}…` }));
    try {
      const r = await keeneyeFetch(`/v1/pipelines/${encodeURIComponent(pipeline)}/models/${encodeURIComponent(version)}/evaluation`, { headers: { accept: "application/json" } });
      const d = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(k.errorText(d, r));
      render(box, d);
    } catch (e) {
      const close = el("button", { type: "button", className: "report-close", textContent: "Close" });
      close.addEventListener("click", () => hide(box));
      box.replaceChildren(el("div", { className: "report-head" }, el("p", { className: "error report-error", textContent: `v${version}: ${e.message}` }), close));
      box.dataset.version = version;
      box.dataset.loaded = String(Number(box.dataset.loaded || 0) + 1);
    }
  }

  for (const button of document.querySelectorAll("button.report-open")) button.addEventListener("click", () => open(button));
  new ResizeObserver(() => {
    for (const [chart, width] of charts.values()) chart.setSize({ width: width(), height: 260 });
  }).observe(document.querySelector("main"));
  // A link to /models?report=species-id:3 opens that report.
  const asked = new URLSearchParams(location.search).get("report");
  if (asked && asked.includes(":")) {
    const [pipeline, version] = asked.split(":");
    const button = document.querySelector(`button.report-open[data-pipeline="${CSS.escape(pipeline)}"][data-report="${CSS.escape(version)}"]`);
    if (button) { open(button); button.closest("section").scrollIntoView({ block: "start" }); }
  }
})();
