// keeneye runs page: a run's log is shown from its end (the newest lines are what matter).
(function () {
  "use strict";
  const toEnd = (details) => details.querySelectorAll("pre.log").forEach((pre) => { pre.scrollTop = pre.scrollHeight; });
  for (const details of document.querySelectorAll("tr.run-details details")) {
    details.addEventListener("toggle", () => { if (details.open) toEnd(details); });
    if (details.open) toEnd(details);
  }
})();
