/* The live overview (/): applies overview.snapshot and overview.update messages to crawl rows. */
(function () {
  "use strict";
  var root = document.getElementById("overview-live");
  if (!root || !window.LiveSocket) return;
  var L = window.LiveSocket;

  function applyRow(row) {
    var tr = root.querySelector('tr[data-crawl="' + CSS.escape(row.code) + '"]');
    if (!tr) {
      var card = root.querySelector('[data-project="' + CSS.escape(String(row.project)) + '"]');
      if (!card) return;  // a project created after this page loaded: shown on reload
      tr = L.row(root, "crawl-row");
      tr.dataset.crawl = row.code;
      var link = L.setField(tr, "link", row.code);
      link.href = row.url;
      card.querySelector('[data-live="crawls"]').prepend(tr);
      card.querySelector('[data-live="crawls-empty"]').hidden = true;
    }
    var badge = L.setField(tr, "status", row.status_display);
    badge.className = "badge badge-" + row.status;
    // Stalled, or past the bound of pausing/stopping/finishing: a marker; the crawl page says why.
    var alert = tr.querySelector('[data-field="alert"]');
    if (alert) {
      alert.hidden = !row.overdue && !row.stalled;
      alert.textContent = row.overdue ? "overdue" : (row.stalled ? "stalled" : "");
      alert.title = row.overdue ? "Still " + row.overdue.status + " past its bound" : (row.stalled ? row.stalled.reason : "");
    }
    var c = row.counters || {};
    L.setField(tr, "pages", L.formatNumber(c.pages));
    L.setField(tr, "items", L.formatNumber(c.items));
    L.setField(tr, "queued", L.formatNumber(c.queued));
    L.setField(tr, "pages_per_s", L.formatRate((row.rates || {}).pages_per_s));
  }

  function apply(msg) { (msg.crawls || []).forEach(applyRow); }

  root.live = new L(root, {"overview.snapshot": apply, "overview.update": apply, "error": function () {}});
})();
