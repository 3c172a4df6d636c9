// "Try it" (templates/dashboard/_preview_panel.html): posts the enclosing form (the project form as
// typed, or the project page's small form) to the preview endpoint and shows the answer.
// Everything shown comes from a crawled page, so it is hostile: it is set with textContent only,
// never as HTML, and links are shown as text, not followed.
(function () {
  "use strict";
  var panel = document.querySelector("[data-preview]");
  if (!panel) return;
  var form = panel.closest("form");
  var out = panel.querySelector("[data-preview-out]");
  var button = panel.querySelector("[data-preview-run]");
  var urlInput = panel.querySelector("#id_preview_url");

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function section(title) {
    var box = el("div", null, "preview-section");
    box.appendChild(el("h3", title));
    out.appendChild(box);
    return box;
  }

  function noMatch(value) {
    return value === null || value === undefined || (Array.isArray(value) && value.length === 0);
  }

  function showValue(value) {
    if (noMatch(value)) return el("span", "no match", "preview-nomatch");
    if (Array.isArray(value)) {
      var list = el("ol", null, "preview-values");
      value.forEach(function (v) { list.appendChild(el("li", v)); });
      return list;
    }
    return el("span", value, "preview-value");
  }

  function showErrors(data, status) {
    var box = el("div", null, "message message-error");
    box.setAttribute("role", "alert");
    box.appendChild(el("p", (data && data.detail) || ("The preview failed (HTTP " + status + ").")));
    var errors = (data && data.errors) || {};
    var keys = Object.keys(errors);
    if (keys.length) {
      var list = el("ul", null, "errorlist");
      keys.forEach(function (key) {
        (errors[key] || []).forEach(function (message) {
          list.appendChild(el("li", key + ": " + message));
        });
      });
      box.appendChild(list);
    }
    out.appendChild(box);
  }

  function showResult(r) {
    var head = section("Page");
    var facts = el("dl", null, "preview-facts");
    function fact(name, value) { facts.appendChild(el("dt", name)); facts.appendChild(el("dd", value)); }
    fact("Status", r.status);
    fact("URL", r.url);
    fact("Item page", r.item_page ? "yes" : "no");
    fact("robots.txt", r.robots ? r.robots.note + (r.robots.obeyed ? "" : " (not obeyed by this definition)") : "not checked");
    head.appendChild(facts);
    (r.notes || []).forEach(function (note) { head.appendChild(el("p", note, "muted small")); });

    var matches = r.matches || {};
    var fields = matches.fields || {};
    if (matches.item_selector || Object.keys(fields).length) {
      var m = section("Selectors");
      var table = el("table", null, "preview-matches");
      var body = el("tbody");
      function row(name, selector, nodes) {
        var tr = el("tr");
        tr.appendChild(el("td", name));
        tr.appendChild(el("td", selector, "mono small"));
        tr.appendChild(el("td", nodes + " node" + (nodes === 1 ? "" : "s"), "num"));
        body.appendChild(tr);
      }
      if (matches.item_selector) row("item", matches.item_selector.selector, matches.item_selector.nodes);
      Object.keys(fields).forEach(function (name) { row(name, fields[name].selector, fields[name].nodes); });
      table.appendChild(body);
      m.appendChild(table);
    }

    var items = section("Items (" + (r.items || []).length + ")");
    if (!(r.items || []).length) items.appendChild(el("p", r.item_page ? "No item on this page." : "None: not an item page.", "muted"));
    (r.items || []).forEach(function (item, i) {
      var card = el("dl", null, "preview-item");
      card.setAttribute("data-preview-item", String(i));
      Object.keys(item).forEach(function (name) {
        card.appendChild(el("dt", name));
        var dd = el("dd");
        dd.appendChild(showValue(item[name]));
        card.appendChild(dd);
      });
      items.appendChild(card);
    });

    var links = r.links || {follow: [], ignored: []};
    var follow = section("Links followed (" + links.follow.length + ")");
    var fl = el("ul", null, "preview-links mono small");
    links.follow.forEach(function (url) { fl.appendChild(el("li", url)); });
    follow.appendChild(fl);
    var ignored = section("Links ignored (" + links.ignored.length + ")");
    var il = el("ul", null, "preview-links mono small");
    links.ignored.forEach(function (link) {
      var li = el("li");
      li.appendChild(el("span", link.url));
      li.appendChild(el("span", " — " + link.reason, "preview-reason"));
      il.appendChild(li);
    });
    ignored.appendChild(il);
  }

  function run() {
    if (!urlInput.value.trim()) {
      var starts = document.getElementById("id_start_urls");
      var first = starts ? starts.value.split(/\r?\n/).map(function (s) { return s.trim(); }).filter(Boolean)[0] : "";
      if (first) urlInput.value = first;
    }
    out.textContent = "";
    out.appendChild(el("p", "Fetching…", "muted"));
    button.disabled = true;
    panel.setAttribute("data-preview-state", "running");
    fetch(panel.getAttribute("data-preview-endpoint"), {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: {Accept: "application/json"},
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (data) {
        out.textContent = "";
        if (response.ok && data) showResult(data); else showErrors(data, response.status);
        panel.setAttribute("data-preview-state", response.ok ? "done" : "error");
      });
    }).catch(function () {
      out.textContent = "";
      showErrors({detail: "The dashboard could not be reached."}, 0);
      panel.setAttribute("data-preview-state", "error");
    }).then(function () { button.disabled = false; });
  }

  button.addEventListener("click", run);
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.tagName === "INPUT") {
      event.preventDefault();  // inside the project form, Enter would submit (save) it
      run();
    }
  });
  if (form && form.classList.contains("preview-form")) {
    form.addEventListener("submit", function (event) { event.preventDefault(); run(); });
  }
})();
