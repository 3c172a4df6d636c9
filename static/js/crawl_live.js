/* The live crawl page (/crawls/CODE/): applies crawl.snapshot and crawl.update messages. */
(function () {
  "use strict";
  var root = document.getElementById("crawl-live");
  if (!root || !window.LiveSocket) return;
  var L = window.LiveSocket;
  var MAX_ITEMS = 50, MAX_LOG = 200;
  var $ = function (sel) { return root.querySelector(sel); };
  var series = [];       // rows of [t, pages, items, queued, seen, errors, in_flight, pages/s, items/s]
  var fields = ["t", "pages", "items", "queued", "seen", "errors", "in_flight", "pages_per_s", "items_per_s"];
  var charts = {};
  var latestWorkers = [];

  function title(s) { return s ? s.charAt(0).toUpperCase() + s.slice(1) : ""; }

  function applyStatus(msg) {
    var badge = $('[data-live="status"]');
    badge.textContent = title(msg.status);
    badge.className = "badge badge-" + msg.status;
    root.dataset.status = msg.status;
    $('[data-live="reason"]').textContent = msg.reason ? " · " + msg.reason : "";
    document.dispatchEvent(new CustomEvent("crawlsite:status", {detail: {status: msg.status}}));
  }

  // The stalled banner and the overdue panel; scraped or worker-written text goes in as textContent.
  function applyAlerts(msg) {
    var stalled = $('[data-live="stalled"]');
    stalled.hidden = !msg.stalled;
    $('[data-live="stalled-reason"]').textContent = msg.stalled ? msg.stalled.reason : "";
    var panel = $('[data-live="overdue"]');
    var overdue = msg.overdue;
    panel.hidden = !overdue;
    if (!overdue) return;
    $('[data-live="overdue-status"]').textContent = overdue.status;
    $('[data-live="overdue-bound"]').textContent = Math.round(overdue.bound);
    var body = $('[data-live="holders"]');
    var tpl = $('template[data-template="holder"]');
    body.textContent = "";
    (overdue.holders || []).forEach(function (h) {
      var row = tpl.content.firstElementChild.cloneNode(true);
      row.setAttribute("data-holder", h.worker);
      ["worker", "state", "leases", "in_flight", "why"].forEach(function (f) {
        var cell = row.querySelector('[data-field="' + f + '"]');
        if (cell) cell.textContent = h[f] == null ? "" : String(h[f]);
      });
      var time = row.querySelector('[data-field="last_heartbeat"]');
      if (time) time.setAttribute("data-time", h.last_heartbeat == null ? "" : String(h.last_heartbeat));
      body.appendChild(row);
    });
    refreshTimes();
  }

  function applyCounters(msg) {
    Object.keys(msg.counters || {}).forEach(function (name) {
      var el = $('[data-counter="' + name + '"]');
      if (el) el.textContent = L.formatNumber(msg.counters[name]);
    });
    ["invalid", "replaced"].forEach(function (name) {  // item validation and unique key
      var el = $('[data-quality="' + name + '"]');
      if (el && msg[name] != null) el.textContent = L.formatNumber(msg[name]);
    });
    Object.keys(msg.rates || {}).forEach(function (name) {
      var el = $('[data-rate="' + name + '"]');
      if (el) el.textContent = L.formatRate(msg.rates[name]);
    });
    var p = msg.progress || {done: 0, total: 0, percent: 0};
    var bar = $('[data-live="progress"]');
    bar.max = p.total || 1;
    bar.value = p.done;
    $('[data-live="progress-text"]').textContent =
      L.formatNumber(p.done) + " of " + L.formatNumber(p.total) + " URLs (" + p.percent + "%)";
  }

  function applyStatusCodes(codes, pages) {
    var list = $('[data-live="status-codes"]');
    var names = Object.keys(codes || {}).sort();
    list.replaceChildren.apply(list, names.map(function (code) {
      var li = document.createElement("li");
      li.dataset.code = code;
      li.className = "http-" + code.charAt(0) + "xx";
      var label = document.createElement("span");
      label.className = "mono";
      label.textContent = code;
      var bar = document.createElement("progress");
      bar.className = "bar";
      bar.max = Math.max(pages || 0, codes[code], 1);
      bar.value = codes[code];
      var count = document.createElement("span");
      count.className = "num";
      count.dataset.field = "count";
      count.textContent = L.formatNumber(codes[code]);
      li.append(label, bar, count);
      return li;
    }));
    $('[data-live="status-empty"]').hidden = names.length > 0;
  }

  function applyCoverage(coverage) {
    var list = $('[data-live="coverage"]');
    if (!list) return;
    var names = Object.keys(coverage || {}).sort();
    list.replaceChildren.apply(list, names.map(function (name) {
      var li = document.createElement("li");
      li.dataset.fieldName = name;
      var label = document.createElement("span");
      label.className = "mono";
      label.textContent = name;
      var bar = document.createElement("progress");
      bar.className = "bar";
      bar.max = 100;
      bar.value = coverage[name];
      var percent = document.createElement("span");
      percent.className = "num";
      percent.dataset.field = "percent";
      percent.textContent = coverage[name] + " %";
      li.append(label, bar, percent);
      return li;
    }));
    $('[data-live="coverage-empty"]').hidden = names.length > 0;
  }

  function applyWorkers(workers) {
    latestWorkers = workers || [];
    var body = $('[data-live="workers"]');
    if (!latestWorkers.length) return;   // keep the "no worker yet" placeholder
    var rows = latestWorkers.map(function (w) {
      var tr = body.querySelector('tr[data-worker="' + CSS.escape(w.worker) + '"]') || L.row(root, "worker");
      tr.dataset.worker = w.worker;
      tr.className = "worker-state-" + w.state;
      ["worker", "host", "pid", "pages", "items", "errors", "in_flight"].forEach(function (f) {
        L.setField(tr, f, f === "worker" || f === "host" || f === "pid" ? w[f] : L.formatNumber(w[f]));
      });
      var state = L.setField(tr, "state", w.state === "dead" ? "dead (no heartbeat)" : w.state);
      state.className = "badge badge-worker-" + w.state;
      var time = tr.querySelector('[data-field="updated_at"]');
      time.dataset.time = w.updated_at || "";
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    refreshTimes();
    var filter = $('[data-live="log-filter"]');
    var have = Array.prototype.map.call(filter.options, function (o) { return o.value; });
    latestWorkers.forEach(function (w) {
      if (have.indexOf(w.worker) < 0) filter.append(new Option(w.worker, w.worker));
    });
  }

  function applyPoliteness(p) {
    var summary = $('[data-live="politeness-summary"]');
    if (!p) return;   // not reported yet: keep what the page shows
    var text = "At most " + (p.limit ? p.limit : "any number of") + " request(s) in flight per domain, " +
      p.delay + " s between two requests to a domain" + (p.randomize ? " (randomized)" : "") +
      (p.autothrottle ? ", AutoThrottle on" : "") + (p.site_wide ? ", shared with every crawl of the site" : "") +
      ". Workers waited " + p.wait_s + " s for politeness.";
    summary.textContent = text;   // text only: domain names come from crawled pages
    var body = $('[data-live="domains"]');
    var rows = (p.domains || []).map(function (d) {
      var tr = body.querySelector('tr[data-domain="' + CSS.escape(d.domain) + '"]') || L.row(root, "domain");
      tr.dataset.domain = d.domain;
      L.setField(tr, "domain", d.domain || "(no host)");
      L.setField(tr, "rate", L.formatRate(d.rate));
      L.setField(tr, "in_flight", L.formatNumber(d.in_flight));
      L.setField(tr, "limit", d.limit ? L.formatNumber(d.limit) : "none");
      L.setField(tr, "pages", L.formatNumber(d.pages));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }

  function itemRow(item) {
    var li = L.row(root, "item");
    li.dataset.item = item.id;
    li.dataset.key = item.key;
    var a = L.setField(li, "url", item.url);
    if (item.link) a.href = item.link; else a.removeAttribute("href");
    L.setField(li, "summary", item.summary);
    return li;
  }

  function applyItems(items, replace, stored) {
    var list = $('[data-live="items"]');
    var shown = {};
    if (!replace) {
      // An update can repeat an item the snapshot already showed (the stable key says so).
      Array.prototype.forEach.call(list.children, function (li) { shown[li.dataset.key] = true; });
    }
    var rows = (items || []).filter(function (item) { return !shown[item.key]; }).map(itemRow);  // newest first
    if (replace) list.replaceChildren.apply(list, rows);
    else list.prepend.apply(list, rows);
    while (list.children.length > MAX_ITEMS) list.lastElementChild.remove();
    $('[data-live="items-empty"]').hidden = list.children.length > 0;
    if (stored && items && stored > items.length) {
      $('[data-live="items-note"]').textContent = "(showing " + items.length + " of " + stored + " stored in the last update)";
    } else if (items && items.length) {
      $('[data-live="items-note"]').textContent = "";
    }
  }

  function logRow(line) {
    var li = L.row(root, "log");
    li.className = "log-row log-" + String(line.level || "").toLowerCase();
    li.dataset.worker = line.worker;
    L.setField(li, "level", line.level);
    L.setField(li, "worker", line.worker);
    L.setField(li, "message", line.message);
    var t = li.querySelector('[data-field="time"]');
    t.dataset.time = line.time || "";
    return li;
  }

  function applyLog(lines, replace) {
    var list = $('[data-live="log"]');
    var rows = (lines || []).map(logRow).reverse();  // lines come oldest first; show newest first
    if (replace) list.replaceChildren.apply(list, rows);
    else list.prepend.apply(list, rows);
    while (list.children.length > MAX_LOG) list.lastElementChild.remove();
    $('[data-live="log-empty"]').hidden = list.children.length > 0;
    filterLog();
    refreshTimes();
  }

  function filterLog() {
    var worker = $('[data-live="log-filter"]').value;
    Array.prototype.forEach.call($('[data-live="log"]').children, function (li) {
      li.hidden = !!worker && li.dataset.worker !== worker;
    });
  }

  function refreshTimes() {
    Array.prototype.forEach.call(root.querySelectorAll("time[data-time]"), function (el) {
      var t = parseFloat(el.dataset.time);
      if (!isNaN(t)) {
        el.textContent = L.ago(t);
        el.title = new Date(t * 1000).toLocaleString();
      }
    });
  }

  /* Charts (uPlot, vendored in static/vendor). */
  function columns(names) {
    return names.map(function (name) {
      var i = fields.indexOf(name);
      return series.map(function (row) { return row[i]; });
    });
  }

  function makeChart(el, labels, colors) {
    if (!window.uPlot) return null;
    var opts = {
      width: Math.max(200, el.clientWidth), height: 200,
      scales: {x: {time: true}},
      axes: [{}, {size: 50}],
      legend: {live: true},
      series: [{}].concat(labels.map(function (label, i) {
        return {label: label, stroke: colors[i], width: 2, fill: colors[i] + "14", points: {show: false}};
      })),
    };
    return new window.uPlot(opts, [[]].concat(labels.map(function () { return []; })), el);
  }

  function drawCharts() {
    if (!charts.rates) {
      charts.rates = makeChart($('[data-chart="rates"]'), ["pages/s", "items/s"], ["#1f6feb", "#1a7f37"]);
      charts.queue = makeChart($('[data-chart="queue"]'), ["queued", "in flight"], ["#b35900", "#8250df"]);
      if (window.ResizeObserver) {
        new ResizeObserver(function () {
          ["rates", "queue"].forEach(function (name) {
            var el = $('[data-chart="' + name + '"]');
            if (charts[name] && el.clientWidth) charts[name].setSize({width: el.clientWidth, height: 200});
          });
        }).observe($('[data-chart="rates"]'));
      }
    }
    if (charts.rates) charts.rates.setData(columns(["t", "pages_per_s", "items_per_s"]));
    if (charts.queue) charts.queue.setData(columns(["t", "queued", "in_flight"]));
    $('[data-chart="rates"]').setAttribute("data-points", String(series.length));  // points drawn
  }

  function snapshot(msg) {
    if (msg.series_fields) fields = msg.series_fields;
    series = (msg.series || []).slice();
    applyStatus(msg);
    applyAlerts(msg);
    applyCounters(msg);
    applyStatusCodes(msg.status_codes, (msg.counters || {}).pages);
    applyCoverage(msg.coverage);
    applyWorkers(msg.workers);
    applyPoliteness(msg.politeness);
    applyItems(msg.items, true, 0);
    applyLog(msg.log, true);
    drawCharts();
  }

  function update(msg) {
    applyStatus(msg);
    applyAlerts(msg);
    applyCounters(msg);
    applyStatusCodes(msg.status_codes, (msg.counters || {}).pages);
    applyCoverage(msg.coverage);
    applyWorkers(msg.workers);
    applyPoliteness(msg.politeness);
    if (msg.items && msg.items.length) applyItems(msg.items, false, msg.items_new);
    if (msg.log && msg.log.length) applyLog(msg.log, false);
    if (msg.point) {
      var last = series.length ? series[series.length - 1][0] : -Infinity;
      if (msg.point[0] > last) { series.push(msg.point); drawCharts(); }
    }
  }

  $('[data-live="log-filter"]').addEventListener("change", filterLog);
  setInterval(refreshTimes, 1000);
  refreshTimes();
  root.live = new L(root, {"crawl.snapshot": snapshot, "crawl.update": update, "error": function () {}});
})();
