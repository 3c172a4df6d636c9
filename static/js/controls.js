// Keeps the crawl page's control buttons in step with the crawl's live status: a button that
// cannot apply in the current status is disabled. The live page dispatches "crawlsite:status".
(function () {
  "use strict";
  var root = document.querySelector("[data-crawl-controls]");
  if (!root) return;
  function apply(status) {
    root.querySelectorAll("button[data-allowed]").forEach(function (button) {
      var allowed = button.getAttribute("data-allowed").split(" ");
      var ok = allowed.indexOf(status) !== -1;
      button.disabled = !ok;
      button.title = ok ? "" : "Not possible while the crawl is " + status + ".";
    });
  }
  document.addEventListener("crawlsite:status", function (event) {
    if (event.detail && typeof event.detail.status === "string") apply(event.detail.status);
  });
})();
