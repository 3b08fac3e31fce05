// tenement dashboard: keeps the server-rendered page live. Without this script every page
// still works; it only has to be reloaded. One EventSource for the numbers, and on an
// instance page a second one for its log.
"use strict";

(function () {
  function listen(url, onUpdate) {
    var source = new EventSource(url);
    source.addEventListener("update", function (event) {
      onUpdate(JSON.parse(event.data));
    });
    return source;
  }

  function setHtml(id, html) {
    var element = document.getElementById(id);
    // The server rendered and escaped this HTML with the page's own templates.
    if (element && element.innerHTML !== html) element.innerHTML = html;
  }

  function overview(table) {
    var source = null;
    function connect(url) {
      if (source) source.close();
      source = listen(url, function (data) {
        setHtml("summary", data.summary);
        setHtml("rows", data.rows);
        var count = document.getElementById("count");
        if (count) count.textContent = data.count;
        document.body.setAttribute("data-updated", String(Date.now()));
      });
    }
    connect(table.getAttribute("data-events"));

    // Filtering as you type: the same query the form submits, without a reload.
    var form = document.getElementById("filter");
    if (!form) return;
    var timer = null;
    function refilter() {
      var params = new URLSearchParams(new FormData(form));
      params.forEach(function (value, key) { if (value === "") params.delete(key); });
      var query = params.toString();
      history.replaceState(null, "", "/dashboard" + (query ? "?" + query : ""));
      connect("/dashboard/events" + (query ? "?" + query : ""));
    }
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refilter, 200);
    });
    form.addEventListener("change", refilter);
  }

  function instance(section) {
    listen(section.getAttribute("data-events"), function (data) {
      setHtml("instance-live", data.live);
      document.body.setAttribute("data-updated", String(Date.now()));
    });
  }

  function logTail(log) {
    var source = new EventSource(log.getAttribute("data-events"));
    source.addEventListener("line", function (event) {
      var data = JSON.parse(event.data);
      // Text, never HTML: log lines are the tenant's.
      log.appendChild(document.createTextNode(data.line + "\n"));
      while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
      log.scrollTop = log.scrollHeight;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("instances");
    if (table) overview(table);
    var section = document.getElementById("instance-live");
    if (section) instance(section);
    var log = document.getElementById("log");
    if (log) logTail(log);
  });
})();
