// keeneye monitoring page: fetch GET /v1/pipelines/{name}/monitoring every few seconds and draw
// the cards, the charts (KeenCharts, inline SVG) and the tables. Text goes in with textContent only.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const C = window.KeenCharts;
  const root = $("monitoring");
  const pipeline = root.dataset.pipeline;
  const refreshMs = Math.max(1, Number(root.dataset.refresh || 10)) * 1000;
  const windowSelect = $("window");
  const minFeedback = Number(root.dataset.minFeedback || 1);
  const units = JSON.parse(root.dataset.units || "{}");
  let timer = null;
  let latest = 0; // the newest request: an older answer arriving late is dropped

  const asked = new URLSearchParams(location.search).get("window");
  if (asked && /^\d+$/.test(asked)) {
    if (![...windowSelect.options].some((o) => o.value === asked)) {
      windowSelect.append(new Option(`last ${phrase(Number(asked)).replace("the last ", "")}`, asked));
    }
    windowSelect.value = asked;
  }

  function phrase(seconds) {
    if (seconds === 3600) return "the last hour";
    if (seconds % 3600 === 0) return `the last ${seconds / 3600} hours`;
    if (seconds % 60 === 0) return `the last ${seconds / 60} minutes`;
    return `the last ${seconds} seconds`;
  }
  const clock = (iso, seconds) =>
    new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined });
  // Latency for people: seconds from 1000 ms on, so "16420.1 ms" reads "16.4 s" and never wraps.
  const sloMs = (v) => (v >= 1000 ? ms(v) : `${v} ms`); // an SLO is a round number: "348 ms"
  const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(1)} ms`);
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(v > 0 && v < 0.1 ? 2 : 1)}%`);

  function card(id, value, detail, state) {
    const node = $(`card-${id}`);
    node.classList.remove("ok", "warn", "bad");
    if (state) node.classList.add(state);
    node.querySelector(".value").textContent = value;
    if (detail !== undefined) node.querySelector(".small").textContent = detail;
  }

  function emptyState(svgId, emptyId, message) {
    $(svgId).style.display = message ? "none" : "";
    $(emptyId).hidden = !message;
    if (message) $(emptyId).textContent = message;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
    return td;
  }

  function renderTraffic(d) {
    const t = d.traffic, lat = d.latency, when = phrase(d.window.seconds);
    const labels = t.series.t.map((iso) => clock(iso));
    card("rate", `${C.fmt(t.rate_now_per_second)}/s`,
      `over the last ${t.rate_now_seconds} s · ${t.totals.predictions} in ${when}`);
    const slo = lat.slo_ms;
    card("p95", ms(lat.p95_ms),
      `SLO ${slo === null ? "–" : sloMs(slo)} · p50 ${ms(lat.p50_ms)} · p99 ${ms(lat.p99_ms)}`,
      lat.within_slo === null ? null : lat.within_slo ? "ok" : "bad");
    const errors = t.totals.rejected + t.totals.failed;
    card("errors", pct(t.error_share), `${t.totals.rejected} rejected · ${t.totals.failed} failed`,
      t.error_share === null ? null : errors ? "warn" : "ok");

    const noTraffic = t.totals.predictions ? "" : `no traffic in ${when}`;
    emptyState("chart-throughput", "throughput-empty", noTraffic);
    emptyState("chart-latency", "latency-empty", noTraffic);
    if (!noTraffic) {
      const max = Math.max(...t.series.predictions);
      C.line($("chart-throughput"), {
        labels, values: t.series.predictions, name: "predictions",
        title: `Predictions per ${d.window.bucket_seconds} s bucket, ${when}`,
        desc: `${t.totals.predictions} predictions in total, at most ${max} in one bucket.`,
      });
      C.line($("chart-latency"), {
        labels, values: lat.series.p95_ms, unit: "ms", name: "p95",
        format: (v) => (v >= 1000 ? `${C.fmt(v / 1000)} s` : `${C.fmt(v)} ms`),
        ref: slo === null ? null : { value: slo, label: `SLO ${sloMs(slo)}` },
        title: `p95 latency per bucket, ${when}`,
        desc: `Overall p95 ${ms(lat.p95_ms)} against an SLO of ${sloMs(slo)}.`,
      });
    }
    emptyState("chart-errors", "errors-empty", errors ? "" : `no rejected or failed observations in ${when}`);
    if (errors) {
      C.bars($("chart-errors"), {
        labels,
        stacks: [
          { name: "rejected", cls: "rejected", values: t.series.rejected },
          { name: "failed", cls: "failed", values: t.series.failed },
        ],
        title: `Rejected and failed observations per bucket, ${when}`,
        desc: `${t.totals.rejected} rejected and ${t.totals.failed} failed.`,
      });
    }
  }

  function renderDrift(d) {
    const drift = d.drift, latest = drift.latest, psi = drift.thresholds.psi;
    const tbody = $("drift-table").querySelector("tbody");
    tbody.replaceChildren();
    $("drift-history").replaceChildren();
    $("drift-history-label").hidden = !drift.windows.length;
    for (const w of drift.windows) {
      const dot = document.createElement("span");
      if (w.alarm) dot.className = "alarm";
      dot.title = `${clock(w.window_start)}–${clock(w.window_end)} · n=${w.n} · ${w.alarm ? "alarm" : "ok"}`;
      $("drift-history").append(dot);
    }
    if (!latest) {
      card("drift", "no window closed yet", root.dataset.driftWindow || "", null);
      $("drift-status").classList.add("words");
      emptyState("chart-drift", "drift-empty", "no drift window yet");
      $("drift-window").textContent = "";
      $("drift-embedding").textContent = "";
      const tr = document.createElement("tr");
      cell(tr, "no drift window yet", "muted").colSpan = 5;
      tbody.append(tr);
      return;
    }
    const alarming = latest.alarming;
    $("drift-status").classList.remove("words");
    card("drift", latest.alarm ? "alarm" : "ok",
      alarming.length ? `alarming: ${alarming.join(", ")}` : `window ended ${clock(latest.window_end)} · n=${latest.n}`,
      latest.alarm ? "bad" : "ok");
    $("drift-window").textContent =
      `window ${clock(latest.window_start)}–${clock(latest.window_end)} · ${latest.n} observations · model v${latest.model_version}`;
    emptyState("chart-drift", "drift-empty", latest.features.length ? "" : "no per-feature statistics in this window");
    if (latest.features.length) {
      C.hbars($("chart-drift"), {
        rows: latest.features.map((f) => ({ label: f.name, value: f.psi, cls: f.alarm ? "alarm" : "", note: f.alarm ? "alarm" : "" })),
        ref: { value: psi, label: `PSI ${psi}` },
        title: "PSI per feature, latest drift window",
        desc: alarming.length ? `Alarming features: ${alarming.join(", ")}.` : "No feature is alarming.",
      });
    }
    for (const f of latest.features) {
      const tr = document.createElement("tr");
      tr.dataset.feature = f.name;
      if (f.alarm) tr.className = "alarm";
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = f.name;
      tr.append(th);
      cell(tr, C.fmt(f.psi), "num");
      cell(tr, C.fmt(f.ks), "num");
      cell(tr, C.fmt(f.ks_p), "num");
      cell(tr, f.alarm ? "alarm" : "ok");
      tbody.append(tr);
    }
    const e = latest.embedding;
    $("drift-embedding").textContent = e && e.mmd !== undefined
      ? `Embedding MMD ${C.fmt(e.mmd)} (permutation p ${C.fmt(e.p_value)})${e.alarm ? " — alarm" : ""}`
      : "";
  }

  function renderQuality(d) {
    const q = d.quality;
    const windows = q.windows || [];
    // The served version as champion; else the newest champion window (windows come oldest first).
    const champions = windows.filter((w) => w.variant === "champion");
    const champion = champions.find((w) => w.model_version === d.model.served_version)
      || champions[champions.length - 1] || windows[windows.length - 1];
    if (!champion) {
      const why = q.note || "no feedback yet";
      card("quality", q.available ? "none yet" : "–", why, null);
      emptyState("chart-quality", "quality-empty", why);
      return;
    }
    const reference = champion.reference || {};
    // Metrics with a test value to compare against; all of them when the version has none.
    // macro_precision duplicates precision for a classifier: show each number once.
    const all = Object.entries(champion.metrics || {})
      .filter(([m]) => !(m.startsWith("macro_") && (champion.metrics || {})[m.slice(6)] !== undefined));
    const compared = all.filter(([m]) => reference[m] !== undefined);
    const metrics = compared.length ? compared : all;
    if (champion.n < minFeedback) {
      // Too few labels to mean anything: "-100.0%" from one label is noise, not quality.
      const need = `${champion.n} label${champion.n === 1 ? "" : "s"}, need ${minFeedback}`;
      card("quality", "too few labels", `${need} · v${champion.model_version}`, null);
      $("quality-status").classList.add("words");
      emptyState("chart-quality", "quality-empty", `${need} before online quality is shown`);
      return;
    }
    $("quality-status").classList.remove("words");
    const dropped = champion.drop === true;
    const [name, value] = metrics[0] || ["–", null];
    card("quality", C.fmt(value),
      `${name} · test ${C.fmt(reference[name] ?? null)} · ${champion.n} labelled · v${champion.model_version}` +
        (dropped ? " · dropped" : ""), dropped ? "bad" : "ok");
    emptyState("chart-quality", "quality-empty", metrics.length ? "" : "no metrics in this window");
    const rows = [];
    for (const [m, v] of metrics) {
      rows.push({ label: `${m} (live)`, value: v, cls: dropped ? "alarm" : "" });
      if (reference[m] !== undefined) rows.push({ label: `${m} (test)`, value: reference[m], cls: "reference" });
    }
    if (rows.length) {
      C.hbars($("chart-quality"), {
        rows, max: 1,
        title: `Online quality of model v${champion.model_version} vs its test metrics`,
        desc: metrics.map(([m, v]) => `${m} ${C.fmt(v)} (test ${C.fmt(reference[m] ?? null)})`).join(", "),
      });
    }
  }

  function renderAlerts(d) {
    const tbody = $("alerts-table").querySelector("tbody");
    tbody.replaceChildren();
    $("alerts-table").hidden = !d.alerts.length;
    $("alerts-empty").hidden = !!d.alerts.length;
    for (const a of d.alerts) {
      const tr = document.createElement("tr");
      tr.dataset.rule = a.rule;
      cell(tr, a.rule);
      cell(tr, a.severity, a.severity);
      cell(tr, a.state + (a.acked_by ? ` (acked by ${a.acked_by})` : "") + (a.silenced ? " (silenced)" : ""));
      cell(tr, window.KeenAlerts.alertValue(a.value, units[a.rule]), "num");
      cell(tr, new Date(a.fired_at || a.started_at).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }));
      cell(tr, a.summary);
      tbody.append(tr);
    }
  }

  function render(d) {
    $("model-version").textContent = d.model.served_version || "none";
    renderTraffic(d);
    renderDrift(d);
    renderQuality(d);
    renderAlerts(d);
    const notes = $("notes");
    notes.replaceChildren(...d.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
    $("notes-card").hidden = !d.notes.length;
    $("updated").textContent = clock(d.generated_at, true);
    $("updated").dateTime = d.generated_at;
  }

  async function refresh() {
    clearTimeout(timer);
    const status = $("status");
    const mine = ++latest;
    try {
      if (!document.hidden || !root.dataset.loaded) {
        const url = `/v1/pipelines/${encodeURIComponent(pipeline)}/monitoring?window=${windowSelect.value}`;
        const response = await fetch(url, { headers: { accept: "application/json" } });
        const data = await response.json();
        if (mine !== latest) return;
        if (!response.ok) throw new Error(`${data.detail || response.statusText}${data.fix ? " — " + data.fix : ""}`);
        render(data);
        status.className = "muted";
        status.textContent = "";
        root.dataset.loaded = String(Number(root.dataset.loaded || 0) + 1);
      }
    } catch (err) {
      if (mine !== latest) return;
      status.className = "error";
      status.textContent = `Could not load monitoring data: ${err.message || err}`;
    } finally {
      if (mine === latest) {
        clearTimeout(timer);
        timer = setTimeout(refresh, refreshMs);
      }
    }
  }

  $("pipeline").addEventListener("change", (e) => {
    location.href = `/pipelines/${encodeURIComponent(e.target.value)}/monitoring?window=${windowSelect.value}`;
  });
  windowSelect.addEventListener("change", () => {
    history.replaceState(null, "", `?window=${windowSelect.value}`);
    refresh();
  });
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
})();
