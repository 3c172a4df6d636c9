/* The project page's chart across runs: pages, items, errors and invalid items of each run
   (uPlot, vendored in static/vendor). The numbers come from a json_script element; nothing here
   builds HTML. */
(function () {
  "use strict";
  var source = document.getElementById("runs-data");
  var el = document.querySelector('[data-chart="runs"]');
  if (!source || !el || !window.uPlot) return;
  var runs = JSON.parse(source.textContent);
  if (!runs.length) return;
  var names = ["pages", "items", "errors", "invalid"];
  var colors = ["#1f6feb", "#1a7f37", "#cf222e", "#b35900"];
  var data = [runs.map(function (r) { return r.t; })].concat(names.map(function (name) {
    return runs.map(function (r) { return r[name]; });
  }));
  var chart = new window.uPlot({
    width: Math.max(200, el.clientWidth), height: 200,
    scales: {x: {time: true}},
    axes: [{}, {size: 60}],
    legend: {live: true},
    series: [{label: "run started"}].concat(names.map(function (name, i) {
      return {label: name, stroke: colors[i], width: 2, points: {show: true, size: 6}};
    })),
  }, data, el);
  el.setAttribute("data-points", String(runs.length));
  if (window.ResizeObserver) {
    new ResizeObserver(function () {
      if (el.clientWidth) chart.setSize({width: el.clientWidth, height: 200});
    }).observe(el);
  }
})();
