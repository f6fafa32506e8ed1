// keeneye review page: list the pipeline's review queue; one click stores a person's answer as feedback.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const root = $("review");
  const pipeline = root.dataset.pipeline;
  const list = $("queue"), status = $("status"), count = $("count"), author = $("author");
  const enc = encodeURIComponent;

  author.value = localStorage.getItem("keeneye.author") || "";
  author.addEventListener("change", () => localStorage.setItem("keeneye.author", author.value.trim()));
  $("pipeline").addEventListener("change", (e) => { location.href = `/pipelines/${enc(e.target.value)}/review`; });

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function pct(p) { return `${(p * 100).toFixed(1)}%`; }

  function describe(prediction, classes) {
    if (!prediction) return "no answer yet";
    if (prediction.task === "classify") {
      return `${prediction.predicted_label || prediction.predicted_class} (${pct(prediction.confidence)})`;
    }
    const n = (prediction.instances || []).length;
    const names = [...new Set((prediction.instances || []).map((i) => labelOf(i.class, classes)))].join(", ");
    return `${n} instance(s)${names ? ": " + names : ""}${prediction.decision ? " · " + prediction.decision : ""}`;
  }

  function labelOf(name, classes) {
    const c = classes.find((k) => k.name === name);
    return c ? c.label : name;
  }

  // The model's instances drawn over the image (polygons trace pixel centres: +0.5 to pixel edges).
  function overlay(prediction) {
    const image = prediction && prediction.image;
    const instances = (prediction && prediction.instances) || [];
    if (!image || !image.width || !instances.length) return null;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    for (const inst of instances) {
      let shape;
      if (inst.polygon && inst.polygon.length >= 3) {
        shape = document.createElementNS(ns, "polygon");
        shape.setAttribute("points", inst.polygon.map(([x, y]) => `${x + 0.5},${y + 0.5}`).join(" "));
      } else {
        const [x1, y1, x2, y2] = inst.box;
        shape = document.createElementNS(ns, "rect");
        Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1 }).forEach(([k, v]) => shape.setAttribute(k, v));
      }
      const title = document.createElementNS(ns, "title");
      title.textContent = `${inst.label || inst.class} ${pct(inst.score)}`;
      shape.append(title);
      svg.append(shape);
    }
    return svg;
  }

  // "The model is right" for instance pipelines: its answer in the feedback API's shape.
  function modelInstances(prediction) {
    return (prediction.instances || []).map((inst) => {
      const [x1, y1, x2, y2] = inst.box;
      const item = { class: inst.class, bbox: [x1, y1, x2 - x1, y2 - y1] };
      if (inst.polygon && inst.polygon.length >= 3) item.segmentation = [inst.polygon.flatMap(([x, y]) => [x + 0.5, y + 0.5])];
      return item;
    });
  }

  function actions(item, data, li) {
    const box = el("div", { className: "actions" });
    const p = item.prediction;
    const button = (text, body, className) => {
      const b = el("button", { type: "button", textContent: text, className: className || "" });
      b.addEventListener("click", () => send(li, body));
      return b;
    };
    if (data.task === "classify") {
      const top = (p && p.top_3_predictions) || [];
      top.forEach((t, i) => {
        const b = button(`${t.label || t.class} · ${pct(t.probability)}`, { class: t.class }, i === 0 ? "primary choice" : "choice");
        b.dataset.class = t.class;
        box.append(b);
      });
      if (data.classes.length) {
        const select = el("select", { className: "other", title: "another class" });
        select.setAttribute("aria-label", "another class");
        select.append(el("option", { value: "", textContent: "other class…" }));
        for (const c of data.classes) select.append(el("option", { value: c.name, textContent: c.label }));
        const save = el("button", { type: "button", textContent: "Save", className: "save", disabled: true });
        select.addEventListener("change", () => { save.disabled = !select.value; });
        save.addEventListener("click", () => select.value && send(li, { class: select.value }));
        box.append(select, save);
      }
    } else if (data.decision) {
      for (const d of ["OK", "DEFECT"]) {
        const b = button(d, { decision: d }, d === "DEFECT" ? "defect decision" : "decision");
        b.dataset.decision = d;
        box.append(b);
      }
    }
    if (data.task !== "classify" && p) {
      box.append(button("The model is right", { instances: modelInstances(p) }, "confirm"));
    }
    return box;
  }

  function row(item, data) {
    const li = el("li", { className: "review-item" });
    li.dataset.observation = item.observation_id;
    const frame = el("div", { className: "frame" });
    if (item.image_url) {
      frame.append(el("img", { src: item.image_url, alt: `observation ${item.observation_id}`, loading: "lazy" }));
      const svg = overlay(item.prediction);
      if (svg) frame.append(svg);
    } else {
      frame.append(el("p", { className: "muted", textContent: "image not stored" }));
    }
    const reasons = el("p", { className: "reasons" });
    for (const r of item.reasons) reasons.append(el("span", { className: `reason ${r}`, textContent: r.replace("_", " ") }));
    const info = el(
      "div", { className: "info" },
      el("p", { className: "answer", textContent: describe(item.prediction, data.classes) }),
      reasons,
      actions(item, data, li),
      el("p", { className: "item-status muted", role: "status" }),
      el("p", { className: "muted", innerHTML: "" }, el("small", { textContent: `observation ${item.observation_id} · model v${item.model_version || "?"}` })),
    );
    li.append(frame, info);
    return li;
  }

  function showCount() {
    const n = list.children.length;
    count.textContent = `${n} item(s) to review`;
    $("empty").hidden = n > 0;
  }

  async function send(li, label) {
    const msg = li.querySelector(".item-status");
    const buttons = li.querySelectorAll("button, select");
    buttons.forEach((b) => { b.disabled = true; });
    msg.className = "item-status muted";
    msg.textContent = "Saving…";
    const body = { ...label, source: "review" };
    if (author.value.trim()) body.author = author.value.trim();
    try {
      const response = await fetch(`/v1/observations/${enc(li.dataset.observation)}/feedback`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      if (response.ok) {
        li.remove();
        showCount();
        status.className = "muted";
        status.textContent = "Saved. Thank you.";
        return;
      }
      const data = await response.json().catch(() => ({}));
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
      throw new Error(`${detail || response.statusText}${data.fix ? " — " + data.fix : ""}`);
    } catch (err) {
      msg.className = "item-status error";
      msg.textContent = `Not saved: ${err.message}`;
      buttons.forEach((b) => { b.disabled = b.classList.contains("save") && !li.querySelector("select").value; });
    }
  }

  async function load() {
    status.textContent = "Loading the queue…";
    try {
      const response = await fetch(`/v1/pipelines/${enc(pipeline)}/review?limit=50`);
      const data = await response.json();
      if (!response.ok) throw new Error(`${data.detail || response.statusText}${data.fix ? " — " + data.fix : ""}`);
      list.replaceChildren(...data.items.map((item) => row(item, data)));
      status.textContent = data.classes.length || data.task !== "classify" ? "" : "No model is served yet: only the top-3 classes can be chosen.";
      showCount();
    } catch (err) {
      status.className = "error";
      status.textContent = `Could not load the review queue: ${err.message}`;
    }
  }

  load();
})();
