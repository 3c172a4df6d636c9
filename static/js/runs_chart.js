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
    // One run (or runs started in the same second) has no time span: uPlot then stretches the
    // axis over a thousand days. Show an hour on each side instead.
    scales: {x: {time: true, range: function (u, min, max) {
      var first = data[0][0], last = data[0][data[0].length - 1];
      return first === last ? [first - 3600, first + 3600] : [min, max];
    }}},
    axes: [{}, {size: 60}],
    legend: {live: true},
    hooks: {setScale: [function (u, key) {
      if (key === "x") el.setAttribute("data-span", String(Math.round(u.scales.x.max - u.scales.x.min)));
    }]},
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
