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
  document.addEventListener("htmx:afterSwap", tick);
  // Errors from htmx requests land in the toast region when no fragment was sent.
  document.addEventListener("htmx:responseError", function (evt) {
    var toast = document.getElementById("toast");
    if (toast) toast.innerHTML = '<div class="toast" role="alert">Request failed (' + evt.detail.xhr.status + "). Please retry.</div>";
  });
})();
