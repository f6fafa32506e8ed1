// keeneye alert helpers shared by the alerts and monitoring pages, and the alerts page itself:
// firing and pending alerts with ack and silence (POST /v1/alerts/…), and the history.
(function () {
  "use strict";
  // A rule's value with its unit: units come from the rules (page data-units), see browse.alert_units.
  function alertValue(value, unit) {
    if (value === null || value === undefined) return "–";
    if (unit === "s") return value >= 1 ? `${value.toFixed(1)} s` : `${(value * 1000).toFixed(0)} ms`;
    if (unit === "ratio") return `${(value * 100).toFixed(value < 0.1 ? 2 : 1)}%`;
    if (unit === "count") return `${Math.round(value)}`;
    return String(Number(value.toPrecision(4)));
  }
  window.KeenAlerts = { alertValue };

  const root = document.getElementById("alerts");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const units = JSON.parse(root.dataset.units || "{}");
  const when = (iso) => (iso ? new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "–");
  const say = (text, bad) => { $("status").textContent = text; $("status").className = bad ? "error" : "muted"; };

  function td(tr, text, cls) {
    const c = document.createElement("td");
    c.textContent = text;
    if (cls) c.className = cls;
    tr.append(c);
    return c;
  }

  async function call(url, body) {
    const r = await keeneyeFetch(url, { method: "POST", headers: { "content-type": "application/json", accept: "application/json" }, body: JSON.stringify(body) });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) + (data.fix ? ` — ${data.fix}` : "") : r.statusText);
    return data;
  }

  function row(a, actions) {
    const tr = document.createElement("tr");
    tr.dataset.alert = a.id;
    tr.dataset.rule = a.rule;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = a.rule;
    tr.append(th);
    td(tr, (a.labels && a.labels.pipeline) || "–");
    const badge = document.createElement("span");
    badge.className = `badge ${a.state}`;
    badge.textContent = a.state + (a.silenced ? " · silenced" : "");
    td(tr, "").append(badge);
    td(tr, a.severity, a.severity);
    td(tr, alertValue(a.value, units[a.rule]), "num value");
    td(tr, when(a.fired_at || a.started_at));
    td(tr, (a.annotations && (a.annotations.summary || a.annotations.description)) || "", "summary");
    if (actions) {
      const cell = td(tr, "");
      if (a.acked_by) {
        cell.textContent = `acked by ${a.acked_by}`;
      } else {
        const ack = Object.assign(document.createElement("button"), { textContent: "Ack", className: "ack" });
        ack.addEventListener("click", async () => {
          ack.disabled = true;
          try { await call(`/v1/alerts/${a.id}/ack`, { by: $("by-name").value || undefined }); say(`acknowledged ${a.rule}`); load(); }
          catch (e) { ack.disabled = false; say(`Could not acknowledge: ${e.message}`, true); }
        });
        cell.append(ack, " ");
      }
      const mute = Object.assign(document.createElement("button"), { textContent: "Silence…", className: "silence" });
      mute.addEventListener("click", () => openSilence(a));
      cell.append(mute);
    } else {
      td(tr, when(a.resolved_at));
    }
    return tr;
  }

  function openSilence(a) {
    const f = $("silence-form");
    f.dataset.rule = a.rule;
    f.dataset.pipeline = (a.labels && a.labels.pipeline) || "";
    $("silence-what").textContent = `${a.rule}${f.dataset.pipeline ? " on " + f.dataset.pipeline : ""}`;
    $("silence-error").textContent = "";
    $("silence-dialog").showModal();
  }

  $("silence-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target;
    if (e.submitter && e.submitter.value === "cancel") { $("silence-dialog").close(); return; }
    try {
      const labels = f.dataset.pipeline ? { pipeline: f.dataset.pipeline } : {};
      await call("/v1/alerts/silences", { rule: f.dataset.rule, labels, duration: $("duration").value, reason: $("reason").value, by: $("by-name").value || undefined });
      $("silence-dialog").close();
      say(`silenced ${f.dataset.rule} for ${$("duration").value}`);
      load();
    } catch (err) {
      $("silence-error").textContent = err.message;
    }
  });

  function fill(tableId, emptyId, alerts, actions) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren(...alerts.map((a) => row(a, actions)));
    $(tableId).hidden = !alerts.length;
    $(emptyId).hidden = !!alerts.length;
  }

  async function load() {
    try {
      const [active, all, silences] = await Promise.all(
        ["/v1/alerts?state=active", "/v1/alerts?state=all&limit=50", "/v1/alerts/silences"].map((u) =>
          fetch(u, { headers: { accept: "application/json" } }).then((r) => (r.ok ? r.json() : Promise.reject(new Error(`${u}: ${r.status}`))))));
      fill("firing-table", "firing-empty", active.alerts.filter((a) => a.state === "firing"), true);
      fill("pending-table", "pending-empty", active.alerts.filter((a) => a.state === "pending"), true);
      fill("history-table", "history-empty", all.alerts.filter((a) => a.state === "resolved"), false);
      const list = $("silences");
      list.replaceChildren(...silences.silences.map((s) => Object.assign(document.createElement("li"), {
        textContent: `${s.rule || "any rule"} ${Object.entries(s.matchers || {}).map(([k, v]) => `${k}=${v}`).join(" ")} until ${when(s.ends_at)} — ${s.reason} (${s.created_by || s.by || "?"})`,
      })));
      $("silences-empty").hidden = !!silences.silences.length;
      root.dataset.loaded = String(Number(root.dataset.loaded || 0) + 1);
    } catch (e) {
      say(`Could not load alerts: ${e.message}`, true);
    }
  }
  load();
  setInterval(() => { if (!document.hidden && !$("silence-dialog").open) load(); }, 15000);
})();
