// keeneye: the one fetch() helper of the pages. A request that changes something (not GET/HEAD)
// carries the X-Keeneye-CSRF header with the value of the keeneye_csrf cookie that /login set: the
// server refuses a change signed in by cookie without it (double submit), so another site cannot act
// with this browser's login. A 401 on a page means the login is gone: go log in, then come back.
(function () {
  "use strict";
  const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

  function csrfToken() {
    const found = document.cookie.split("; ").find((c) => c.startsWith("keeneye_csrf="));
    return found ? decodeURIComponent(found.slice("keeneye_csrf=".length)) : "";
  }

  async function keeneyeFetch(url, options) {
    const opts = { credentials: "same-origin", ...(options || {}) };
    const method = (opts.method || "GET").toUpperCase();
    const headers = new Headers(opts.headers || {});
    const token = csrfToken();
    if (!SAFE.has(method) && token) headers.set("X-Keeneye-CSRF", token);
    opts.headers = headers;
    const response = await fetch(url, opts);
    if (response.status === 401 && !location.pathname.startsWith("/login")) {
      location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
    return response;
  }

  window.keeneyeFetch = keeneyeFetch;
})();
