// keeneye models page: promote, roll back and roll out with a confirmation dialog and a required
// reason, through the audited API (POST /v1/pipelines/{name}/models/{version}/promote, …/models/rollback,
// …/rollout). After a move the page reloads, so what it shows is what the registry now says.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const KEPT = "keeneye.models.status";
  const say = (text, bad) => { $("status").textContent = text; $("status").className = bad ? "error" : "muted"; };
  const kept = sessionStorage.getItem(KEPT);
  if (kept) { sessionStorage.removeItem(KEPT); say(kept); }
  const who = $("by-name");
  who.value = localStorage.getItem("keeneye.who") || "";
  who.addEventListener("change", () => localStorage.setItem("keeneye.who", who.value.trim()));

  // What each button asks, and the request it sends.
  const MOVES = {
    promote: {
      title: (b) => `Promote v${b.version} of ${b.pipeline}`,
      what: () => "It becomes the champion at once; the current champion is kept as 'previous' for a rollback.",
      request: (b, f) => [`/v1/pipelines/${b.pipeline}/models/${b.version}/promote`, { reason: f.reason, by: f.by, force: f.force }],
      done: (b) => `v${b.version} of ${b.pipeline} is the champion`,
    },
    rollback: {
      title: (b) => `Roll back ${b.pipeline}`,
      what: () => "The champion alias goes back to the previous champion.",
      request: (b, f) => [`/v1/pipelines/${b.pipeline}/models/rollback`, { reason: f.reason, by: f.by, force: f.force }],
      done: (b, r) => `${b.pipeline} rolled back: v${r.version} is the champion`,
    },
    rollout: {
      title: (b) => `Roll out v${b.version} of ${b.pipeline}`,
      what: () => "The version becomes the challenger; the rollout controller judges it against the champion.",
      rollout: true,
      request: (b, f) => [`/v1/pipelines/${b.pipeline}/rollout`, f.mode === "canary"
        ? { action: "canary", version: b.version, share: f.share, reason: f.reason, force: f.force }
        : { action: "shadow", version: b.version, reason: f.reason, force: f.force }],
      done: (b, r) => `${b.pipeline}: v${b.version} in ${r.state}`,
    },
    "rollout-promote": {
      title: (b) => `Promote the challenger v${b.version} of ${b.pipeline}`,
      what: () => "Ends the rollout: the challenger becomes the champion.",
      request: (b, f) => [`/v1/pipelines/${b.pipeline}/rollout`, { action: "promote", reason: f.reason, force: f.force }],
      done: (b) => `v${b.version} of ${b.pipeline} is the champion`,
    },
    "rollout-abort": {
      title: (b) => `Abort the rollout of v${b.version} (${b.pipeline})`,
      what: () => "The challenger stops; the champion keeps serving everything.",
      noForce: true,
      request: (b, f) => [`/v1/pipelines/${b.pipeline}/rollout`, { action: "abort", reason: f.reason }],
      done: (b) => `${b.pipeline}: rollout aborted`,
    },
  };

  let current = null;
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => {
      const move = MOVES[button.dataset.action];
      current = { move, b: { ...button.dataset } };
      $("move-title").textContent = move.title(current.b);
      $("move-what").textContent = move.what(current.b);
      $("rollout-fields").hidden = !move.rollout;
      $("move-force").closest("label").hidden = !!move.noForce;
      $("move-force").checked = false;
      $("move-reason").value = "";
      $("move-error").textContent = "";
      $("move-dialog").showModal();
      $("move-reason").focus();
    });
  }

  async function post(url, body) {
    const r = await keeneyeFetch(url, { method: "POST", headers: { "content-type": "application/json", accept: "application/json" }, body: JSON.stringify(body) });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const detail = typeof data.detail === "string" ? data.detail : Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : r.statusText;
      throw new Error(detail + (data.fix ? ` — ${data.fix}` : ""));
    }
    return data;
  }

  $("move-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (e.submitter && e.submitter.value === "cancel") { $("move-dialog").close(); return; }
    const reason = $("move-reason").value.trim();
    if (!reason) { $("move-error").textContent = "A reason is required: it goes into the audit log."; return; }
    const share = Number($("share").value);
    const fields = {
      reason,
      by: who.value.trim() || undefined,
      force: $("move-force").checked,
      mode: (document.querySelector("input[name=mode]:checked") || {}).value,
      share: share / 100,
    };
    if (current.move.rollout && fields.mode === "canary" && !(share > 0 && share <= 100)) {
      $("move-error").textContent = "The canary share is a percentage between 1 and 100.";
      return;
    }
    const [url, body] = current.move.request(current.b, fields);
    $("move-confirm").disabled = true;
    try {
      const result = await post(url, body);
      sessionStorage.setItem(KEPT, current.move.done(current.b, result));
      $("move-dialog").close();
      location.reload();
    } catch (err) {
      $("move-error").textContent = err.message;
    } finally {
      $("move-confirm").disabled = false;
    }
  });
})();
