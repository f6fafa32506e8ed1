// keeneye review page: the pipeline's review queue; one click or one key stores a person's answer as
// feedback (POST /v1/observations/{id}/feedback), Z withdraws the last one again (DELETE …/feedback/{id}).
// Keys act on the highlighted item: 1–9 a class (classification), "all regions are this class"
// (segmentation) or OK / DEFECT (inspection); 0 "nothing here"; Enter the model's answer; J / K move.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const k = window.keeneye;
  const root = $("review");
  const pipeline = root.dataset.pipeline;
  const list = $("queue"), status = $("status"), count = $("count"), author = $("author");
  const enc = encodeURIComponent;
  const undoStack = []; // { li, index, feedbackId, observationId, what }
  let data = null; // the list API's answer
  let keys = []; // [{ key, text, label(item) → body | null }]
  let current = null;

  author.value = localStorage.getItem("keeneye.author") || "";
  author.addEventListener("change", () => localStorage.setItem("keeneye.author", author.value.trim()));
  $("pipeline").addEventListener("change", (e) => { location.href = `/pipelines/${enc(e.target.value)}/review`; });

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== ""));
    return node;
  }

  const kbd = (key) => (key ? el("kbd", { textContent: key }) : null);
  const labelOf = (name) => { const c = data.classes.find((x) => x.name === name); return c ? c.label : name; };
  const keyOfClass = (name) => { const i = data.classes.findIndex((c) => c.name === name); return i >= 0 && i < 9 ? String(i + 1) : null; };

  function describe(prediction) {
    if (!prediction) return "no answer yet";
    if (prediction.task === "classify") {
      return `${prediction.predicted_label || prediction.predicted_class} (${k.pct(prediction.confidence)})`;
    }
    const inst = prediction.instances || [];
    const names = [...new Set(inst.map((i) => labelOf(i.class)))].join(", ");
    return `${inst.length} region(s)${names ? ": " + names : ""}${prediction.decision ? " · " + prediction.decision : ""}`;
  }

  // The model's instances in the feedback API's shape (COCO bbox x, y, w, h; outline on pixel edges).
  function modelInstances(prediction, asClass) {
    return ((prediction && prediction.instances) || []).map((inst) => {
      const [x1, y1, x2, y2] = inst.box;
      const item = { class: asClass || inst.class, bbox: [x1, y1, x2 - x1, y2 - y1] };
      if (inst.polygon && inst.polygon.length >= 3) item.segmentation = [inst.polygon.flatMap(([x, y]) => [x + 0.5, y + 0.5])];
      return item;
    });
  }

  // "All regions are <class>": the model's regions relabelled; none outlined → the whole image.
  function regionsAs(prediction, name) {
    const relabelled = modelInstances(prediction, name);
    if (relabelled.length) return { instances: relabelled };
    const image = prediction && prediction.image;
    return image && image.width ? { instances: [{ class: name, bbox: [0, 0, image.width, image.height] }] } : null;
  }

  function modelAnswer(prediction) {
    if (!prediction) return null;
    if (data.task === "classify") return prediction.predicted_class ? { class: prediction.predicted_class } : null;
    return { instances: modelInstances(prediction) };
  }

  // What each key does on this pipeline; the page lists them.
  function keyMap() {
    const map = [];
    if (data.task === "classify") {
      data.classes.slice(0, 9).forEach((c, i) => map.push({ key: String(i + 1), text: c.label, label: () => ({ class: c.name }), what: c.label }));
    } else if (data.decision) {
      map.push({ key: "1", text: "OK", label: () => ({ decision: "OK" }), what: "OK" });
      map.push({ key: "2", text: "DEFECT", label: () => ({ decision: "DEFECT" }), what: "DEFECT" });
    } else {
      data.classes.slice(0, 9).forEach((c, i) => map.push({ key: String(i + 1), text: `all regions are ${c.label}`, label: (p) => regionsAs(p, c.name), what: `all ${c.label}` }));
      map.push({ key: "0", text: "nothing here", label: () => ({ instances: [] }), what: "nothing here" });
    }
    map.push({ key: "Enter", text: "the model is right", label: (p) => modelAnswer(p), what: "the model's answer" });
    return map;
  }

  function showKeys() {
    const items = keys.map((m) => el("li", {}, kbd(m.key === "Enter" ? "↵ Enter" : m.key), m.text));
    items.push(el("li", {}, kbd("Z"), "undo the last answer"), el("li", {}, kbd("J"), kbd("K"), "next / previous"));
    $("key-list").replaceChildren(...items);
  }

  function actions(item, li) {
    const box = el("div", { className: "actions" });
    const p = item.prediction;
    const button = (text, body, className, key, what) => {
      const b = el("button", { type: "button", className: className || "" }, text, kbd(key));
      b.addEventListener("click", () => send(li, body, what || text));
      return b;
    };
    const picker = (placeholder, className, options, toBody) => {
      const select = el("select", { className, title: placeholder });
      select.setAttribute("aria-label", placeholder);
      select.append(el("option", { value: "", textContent: placeholder }));
      for (const c of data.classes) {
        const key = keyOfClass(c.name);
        select.append(el("option", { value: c.name, textContent: key ? `${key} · ${c.label}` : c.label }));
      }
      const save = el("button", { type: "button", textContent: "Save", className: "save", disabled: true });
      select.addEventListener("change", () => { save.disabled = !select.value; });
      save.addEventListener("click", () => { const body = select.value && toBody(select.value); if (body) send(li, body, labelOf(select.value)); });
      options.append(select, save);
    };
    if (data.task === "classify") {
      const top = (p && p.top_3_predictions) || [];
      top.forEach((t, i) => {
        const b = button(`${t.label || t.class} · ${k.pct(t.probability)}`, { class: t.class }, i === 0 ? "primary choice" : "choice", keyOfClass(t.class), t.label || t.class);
        b.dataset.class = t.class;
        box.append(b);
      });
      if (data.classes.length) picker("other class…", "other", box, (name) => ({ class: name }));
    } else {
      if (data.decision) {
        ["OK", "DEFECT"].forEach((d, i) => {
          const b = button(d, { decision: d }, d === "DEFECT" ? "defect decision" : "decision", String(i + 1));
          b.dataset.decision = d;
          box.append(b);
        });
      }
      if (p) box.append(button("The model is right", { instances: modelInstances(p) }, "confirm primary", "↵"));
      if (!data.decision) box.append(button("Nothing here", { instances: [] }, "none", "0"));
      if (data.classes.length) picker("all regions are…", "relabel", box, (name) => regionsAs(p, name));
    }
    return box;
  }

  function row(item) {
    const li = el("li", { className: "review-item" });
    li.dataset.observation = item.observation_id;
    li.item = item;
    const frame = el("div", { className: "frame" });
    if (item.image_url) {
      const tiff = item.content_type === "image/tiff";
      frame.append(el("img", { src: tiff ? k.imageUrl(item.observation_id, "tiff") : item.image_url, alt: `observation ${item.observation_id}`, loading: "lazy" }));
      const svg = k.overlay(item.prediction, { classes: data.classes.map((c) => c.name) });
      if (svg) frame.append(svg);
    } else {
      frame.append(el("p", { className: "muted", textContent: "image not stored" }));
    }
    const reasons = el("p", { className: "reasons" });
    for (const r of item.reasons) reasons.append(el("span", { className: `reason ${r}`, textContent: r.replace("_", " ") }));
    li.append(frame, el(
      "div", { className: "info" },
      el("p", { className: "answer", textContent: describe(item.prediction) }),
      reasons,
      actions(item, li),
      el("p", { className: "item-status muted", role: "status" }),
      el("p", { className: "muted" }, el("small", { textContent: `observation ${item.observation_id} · model v${item.model_version || "?"}` })),
    ));
    li.addEventListener("click", (e) => { if (!e.target.closest("button, select")) setCurrent(li); });
    return li;
  }

  function setCurrent(li) {
    if (current) current.classList.remove("current");
    current = li || null;
    if (current) {
      current.classList.add("current");
      current.scrollIntoView({ block: "nearest" });
    }
  }

  function showCount() {
    const n = list.children.length;
    count.textContent = `${n} item(s) to review`;
    $("empty").hidden = n > 0;
  }

  function enable(li, on) {
    li.querySelectorAll("button, select").forEach((b) => { b.disabled = !on; });
    if (on) li.querySelectorAll("button.save").forEach((b) => { b.disabled = !b.previousElementSibling.value; });
  }

  function confirmSaved(text, canUndo) {
    $("saved").textContent = text;
    $("undo").hidden = !canUndo;
    $("undo-bar").hidden = false;
  }

  async function send(li, label, what) {
    if (!li.isConnected || li.dataset.busy) return;
    const msg = li.querySelector(".item-status");
    li.dataset.busy = "1";
    enable(li, false);
    msg.className = "item-status muted";
    msg.textContent = "Saving…";
    const body = { ...label, source: "review" };
    if (author.value.trim()) body.author = author.value.trim();
    try {
      const response = await keeneyeFetch(`/v1/observations/${enc(li.dataset.observation)}/feedback`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body),
      });
      const stored = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(k.errorText(stored, response));
      const index = [...list.children].indexOf(li);
      const next = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      delete li.dataset.busy;
      msg.textContent = "";
      undoStack.push({ li, index, feedbackId: stored.id, observationId: li.dataset.observation, what });
      showCount();
      if (current === li || !current || !current.isConnected) setCurrent(next);
      status.textContent = "";
      confirmSaved(`Saved “${what}” for observation ${li.dataset.observation.slice(0, 8)}.`, true);
    } catch (err) {
      delete li.dataset.busy;
      msg.className = "item-status error";
      msg.textContent = `Not saved: ${err.message}`;
      enable(li, true);
    }
  }

  async function undo() {
    const last = undoStack.pop();
    if (!last) return;
    $("undo").disabled = true;
    try {
      const response = await keeneyeFetch(`/v1/observations/${enc(last.observationId)}/feedback/${last.feedbackId}`, {
        method: "DELETE",
        headers: { accept: "application/json" },
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(k.errorText(body, response));
      list.insertBefore(last.li, list.children[last.index] || null);
      enable(last.li, true);
      const msg = last.li.querySelector(".item-status");
      msg.className = "item-status muted";
      msg.textContent = `Your answer “${last.what}” was withdrawn: answer again.`;
      showCount();
      setCurrent(last.li);
      confirmSaved(`Undone: “${last.what}” for observation ${last.observationId.slice(0, 8)} was withdrawn.`, undoStack.length > 0);
    } catch (err) {
      undoStack.push(last);
      status.className = "error";
      status.textContent = `Could not undo: ${err.message}`;
    } finally {
      $("undo").disabled = false;
    }
  }

  function move(step) {
    const items = [...list.children];
    if (!items.length) return;
    const i = items.indexOf(current);
    setCurrent(items[Math.max(0, Math.min(items.length - 1, i < 0 ? 0 : i + step))]);
  }

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t.closest && t.closest("input, select, textarea, [contenteditable]")) return;
    if (e.altKey || e.metaKey) return;
    const key = e.key;
    if (key === "z" || key === "Z") { e.preventDefault(); undo(); return; }
    if (e.ctrlKey) return;
    if (key === "j" || key === "ArrowDown") { e.preventDefault(); move(1); return; }
    if (key === "k" || key === "ArrowUp") { e.preventDefault(); move(-1); return; }
    if (key === "Enter" && t.closest && t.closest("button, a, summary")) return; // the focused control's own Enter
    const binding = keys.find((m) => m.key === key);
    if (!binding || !current || !current.isConnected) return;
    const body = binding.label(current.item.prediction);
    if (!body) return;
    e.preventDefault();
    send(current, body, binding.key === "Enter" ? `${binding.what} (${describe(current.item.prediction)})` : binding.what);
  });
  $("undo").addEventListener("click", undo);

  async function load() {
    status.textContent = "Loading the queue…";
    try {
      const response = await keeneyeFetch(`/v1/pipelines/${enc(pipeline)}/review?limit=50`, { headers: { accept: "application/json" } });
      const body = await response.json();
      if (!response.ok) throw new Error(k.errorText(body, response));
      data = body;
      keys = keyMap();
      showKeys();
      list.replaceChildren(...data.items.map(row));
      status.textContent = data.classes.length ? "" : "No model is served yet: only the model's own answers can be chosen.";
      showCount();
      setCurrent(list.firstElementChild);
      root.dataset.loaded = "true";
    } catch (err) {
      status.className = "error";
      status.textContent = `Could not load the review queue: ${err.message}`;
    }
  }

  load();
})();
