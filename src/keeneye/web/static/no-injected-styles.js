// keeneye: vis-timeline's standalone build writes its CSS into <style> elements as it loads. The pages'
// Content-Security-Policy (style-src 'self', docs/security.md) refuses inline styles, and the same CSS
// is linked from vendor/vis-timeline-*/vis-timeline-graph2d.min.css, so this script, loaded just before
// it, keeps such <style> elements out of the document (never parsed: nothing to refuse) until the page
// has loaded. The vendored file itself stays unmodified.
(function () {
  "use strict";
  const head = document.head;
  const append = head.appendChild;
  const insertBefore = head.insertBefore;
  const isStyle = (node) => node instanceof HTMLStyleElement;
  head.appendChild = function (node) {
    return isStyle(node) ? node : append.call(this, node);
  };
  head.insertBefore = function (node, ref) {
    return isStyle(node) ? node : insertBefore.call(this, node, ref);
  };
  document.addEventListener("DOMContentLoaded", () => {
    delete head.appendChild; // the own properties go: Node.prototype's methods again
    delete head.insertBefore;
  }, { once: true });
})();
