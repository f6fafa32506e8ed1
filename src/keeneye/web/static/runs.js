// keeneye runs page: a run's log is shown from its end (the newest lines are what matter).
(function () {
  "use strict";
  // Choosing a pipeline shows its runs (no inline handler: the page's CSP allows no inline script).
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  const toEnd = (details) => details.querySelectorAll("pre.log").forEach((pre) => { pre.scrollTop = pre.scrollHeight; });
  for (const details of document.querySelectorAll("tr.run-details details")) {
    details.addEventListener("toggle", () => { if (details.open) toEnd(details); });
    if (details.open) toEnd(details);
  }
})();
