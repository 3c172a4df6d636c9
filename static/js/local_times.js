// Times in the browser's own zone: every <time datetime="ISO" data-local-time> gets its text from
// Intl (offline, no library); with data-keep-text the server's text stays and the local time goes
// in the tooltip. Also offers the browser's zone on a new schedule's form, and asks before a
// form marked data-confirm is sent. Text only, never HTML.
(function () {
  "use strict";
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  var format = new Intl.DateTimeFormat(undefined, {
    weekday: "short", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short"
  });
  document.querySelectorAll("time[data-local-time]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) return;
    var text = format.format(when);
    if (el.hasAttribute("data-keep-text")) el.title = "Your time: " + text;
    else el.textContent = text;
  });
  document.querySelectorAll("[data-browser-zone]").forEach(function (el) {
    if (zone) el.textContent = zone;
  });
  // Deleting a schedule (and its history) asks first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
  var hint = document.querySelector("[data-browser-zone-hint]");
  var input = document.querySelector("input[name=timezone]");
  if (hint && input && zone) {
    var use = hint.querySelector("[data-use-browser-zone]");
    use.textContent = "Use " + zone;
    use.addEventListener("click", function () { input.value = zone; });
    hint.hidden = false;
  }
})();
