// The Excel export page: while the file is being built, ask the status URL now and then, and
// offer the download once it is ready (or say why it failed). Text only, never HTML.
(function () {
  "use strict";
  var root = document.querySelector("[data-xlsx-build]");
  if (!root) return;
  var part = function (name) { return root.querySelector('[data-xlsx="' + name + '"]'); };
  var delay = 1000;

  function show(state) {
    root.setAttribute("data-status", state.status);
    var badge = part("badge");
    badge.textContent = state.status.charAt(0).toUpperCase() + state.status.slice(1);
    badge.className = "badge badge-" + state.status;
    part("detail").textContent = state.detail || "";
    part("ready").hidden = state.status !== "ready";
    part("retry").hidden = state.status === "ready" || state.status === "preparing";
  }

  function poll() {
    fetch(root.getAttribute("data-status-url"), {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (state) {
        if (typeof state.status !== "string") throw new Error("bad status");
        show(state);
        if (state.status === "preparing") schedule();
      })
      .catch(function () { schedule(); });
  }

  function schedule() {
    setTimeout(poll, delay);
    delay = Math.min(delay * 1.5, 10000);
  }

  if (root.getAttribute("data-status") === "preparing") schedule();
})();
