// keeneye predict page: upload one photo, show the top-3 with bars, latency and model version.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file"), status = $("status");

  function show(result, file) {
    $("preview").src = URL.createObjectURL(file);
    const top = result.top_3_predictions || [];
    $("answer").textContent = result.predicted_label
      ? `${result.predicted_label} (${(result.confidence * 100).toFixed(1)}%)`
      : `${result.count ?? 0} instance(s)` + (result.decision ? ` · ${result.decision}` : "");
    const list = $("top3");
    list.replaceChildren();
    for (const p of top) {
      const li = document.createElement("li");
      li.className = "prediction";
      li.dataset.class = p.class;
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = p.label || p.class;
      const pct = document.createElement("span");
      pct.className = "probability";
      pct.textContent = `${(p.probability * 100).toFixed(1)}%`;
      row.append(name, pct);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(100, p.probability * 100)).toFixed(1)}%`;
      bar.append(fill);
      li.append(row, bar);
      list.append(li);
    }
    $("latency").textContent = `${result.processing_time_ms.toFixed(1)} ms`;
    $("model-version").textContent = result.model_version;
    $("cached").textContent = result.cached ? "from cache" : "computed";
    $("observation").textContent = result.observation_id;
    $("result").hidden = false;
  }

  async function send(file) {
    if (!file) return;
    status.className = "muted";
    status.textContent = `Sending ${file.name}…`;
    const body = new FormData();
    body.append("file", file);
    const pipeline = $("pipeline").value;
    try {
      const response = await fetch(`/v1/pipelines/${encodeURIComponent(pipeline)}/predict`, { method: "POST", body });
      const data = await response.json();
      if (!response.ok) {
        status.className = "error";
        status.textContent = `${data.detail || response.statusText}${data.fix ? " — " + data.fix : ""}`;
        return;
      }
      status.textContent = "";
      show(data, file);
    } catch (err) {
      status.className = "error";
      status.textContent = `Request failed: ${err}`;
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));
})();
