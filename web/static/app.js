// Keeps SLA countdowns current between server refreshes; the words come from the server.
(function () {
  function describe(ms) {
    var s = Math.abs(Math.round(ms / 1000));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    var text = d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m + "m";
    return ms >= 0 ? "due in " + text : "overdue by " + text;
  }
  function tick() {
    document.querySelectorAll("time.countdown[datetime]").forEach(function (el) {
      var due = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(due)) el.textContent = describe(due - Date.now());
    });
  }
  setInterval(tick, 30000);
  // Live updates: the server says which request changed; regions showing it re-fetch.
  // A region busy with a request of its own (a decision being sent, a refresh) or being
  // typed in is not replaced under the user's hands: its refresh waits, keyed by the
  // region's id, and runs once the region has settled (so the newest state always wins).
  var waiting = {};
  function busy(el) {
    if (el.classList.contains("htmx-request") || el.querySelector(".htmx-request")) return true;
    var active = document.activeElement;
    return el.contains(active) && (active.tagName === "INPUT" || active.tagName === "TEXTAREA");
  }
  function refresh(el) {
    // Distinct names: a row's "live" bubbles up and must not refresh the whole list.
    var name = el.getAttribute("data-live") === "any" ? "live-any" : "live";
    if (busy(el)) { waiting[el.id] = name; return; }
    delete waiting[el.id];
    if (window.htmx) window.htmx.trigger(el, name);
  }
  function runWaiting() {
    Object.keys(waiting).forEach(function (id) {
      var el = document.getElementById(id);
      if (!el) { delete waiting[id]; return; }
      refresh(el);
    });
  }
  document.addEventListener("htmx:afterSettle", runWaiting);
  document.addEventListener("htmx:afterRequest", function () { setTimeout(runWaiting, 0); });
  document.addEventListener("focusout", function () { setTimeout(runWaiting, 0); });
  if (window.EventSource && document.querySelector("[data-live]")) {
    var source = new EventSource("/events");
    source.addEventListener("request", function (evt) {
      var changed;
      try { changed = JSON.parse(evt.data).request_id; } catch (e) { return; }
      document.querySelectorAll("[data-live]").forEach(function (el) {
        var wanted = el.getAttribute("data-live");
        if (wanted !== "any" && wanted !== changed) return;
        // A region showing this very request inside a wider one updates alone.
        if (wanted === "any" && el.querySelector('[data-live="' + changed + '"]')) return;
        refresh(el);
      });
    });
  }
  document.addEventListener("htmx:afterSwap", tick);
  // Errors from htmx requests land in the toast region when no fragment was sent.
  document.addEventListener("htmx:responseError", function (evt) {
    var toast = document.getElementById("toast");
    if (toast) toast.innerHTML = '<div class="toast" role="alert">Request failed (' + evt.detail.xhr.status + "). Please retry.</div>";
  });
})();
// The bulk selection (checkboxes tied to #bulk-form) survives live refreshes of its rows.
(function () {
  var ticked = null;
  function selection() { return document.querySelectorAll('input[form="bulk-form"]'); }
  document.addEventListener("htmx:beforeSwap", function () {
    ticked = Array.prototype.filter.call(selection(), function (el) { return el.checked; })
      .map(function (el) { return el.value; });
  });
  document.addEventListener("htmx:afterSwap", function () {
    if (!ticked) return;
    selection().forEach(function (el) { if (ticked.indexOf(el.value) >= 0) el.checked = true; });
    ticked = null;
  });
})();
