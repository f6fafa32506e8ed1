// keeneye overview: one small uPlot chart per pipeline — predictions per bucket (bars) and p95
// latency (line, its own axis). The axis follows the data, not the SLO, so 43 ms never flattens.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("overview-data").textContent);
  const charts = [];
  const msLabel = (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`);

  for (const node of document.querySelectorAll("[data-spark]")) {
    const d = data[node.dataset.spark];
    if (!d || !d.t.length || !d.predictions.some((v) => v)) {
      node.textContent = "no traffic in the last hour";
      node.className = "spark empty";
      continue;
    }
    const t = d.t.map((iso) => Date.parse(iso) / 1000);
    // Half a bucket of room at each end, so the first and last bars and p95 points are drawn whole.
    const half = (t.length > 1 ? t[1] - t[0] : 120) / 2;
    const opts = {
      width: Math.max(120, node.clientWidth),
      height: 90,
      legend: { show: false },
      cursor: { y: false },
      scales: { x: { time: true, range: (u, min, max) => [min - half, max + half] }, n: { range: (u, min, max) => [0, Math.max(1, max)] }, ms: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
      axes: [
        { show: false },
        { scale: "n", size: 36, ticks: { show: false }, grid: { stroke: "#e3e9ee" }, font: "10px system-ui" },
        { scale: "ms", side: 1, size: 44, ticks: { show: false }, grid: { show: false }, values: (u, vs) => vs.map(msLabel), font: "10px system-ui" },
      ],
      series: [
        {},
        { label: "predictions", scale: "n", stroke: "#1f7a5a", fill: "rgba(31,122,90,.18)", paths: uPlot.paths.bars({ size: [0.8] }), points: { show: false } },
        // Points always: a lone bucket (or one between gaps) has no neighbour to draw a line to.
        { label: "p95", scale: "ms", stroke: "#c27c0e", width: 2, spanGaps: false, points: { show: true, size: 6, fill: "#c27c0e" } },
      ],
    };
    charts.push([node, new uPlot(opts, [t, d.predictions, d.p95_ms], node)]);
  }
  new ResizeObserver(() => {
    for (const [node, chart] of charts) chart.setSize({ width: Math.max(120, node.clientWidth), height: 90 });
  }).observe(document.querySelector(".pipelines"));
})();
