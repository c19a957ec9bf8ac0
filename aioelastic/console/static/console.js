// Live updates: the server pushes "changed" (server-sent events, driven by registry watches);
// the page then fetches its live fragment once and swaps it in. No reload loop, no library.
(function () {
  "use strict";
  var kind = document.body.dataset.live;
  var region = document.getElementById("live-region");
  if (!kind || !region || !window.EventSource) return;
  var dot = document.getElementById("livedot");
  var busy = false, again = false;

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        region.innerHTML = html;
        document.body.dataset.generation = String((+document.body.dataset.generation || 0) + 1);
      })
      .catch(function () { if (dot) dot.className = "livedot off"; })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var source = new EventSource(document.body.dataset.base + "/events");
  source.addEventListener("hello", function () { if (dot) dot.className = "livedot on"; });
  source.addEventListener("changed", refresh);
  source.onerror = function () { if (dot) dot.className = "livedot off"; };
})();
