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

  // Banners arrive as a JSON list of plain strings and are set as text, never as markup.
  function showBanners(header) {
    var box = document.getElementById("live-banners");
    if (!box || header === null) return;
    var list;
    try { list = JSON.parse(header); } catch (e) { return; }
    box.textContent = "";
    list.forEach(function (text) {
      var div = document.createElement("div");
      div.className = "banner";
      div.setAttribute("role", "alert");
      div.textContent = String(text);
      box.appendChild(div);
    });
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) return Promise.reject(r.status);
        showBanners(r.headers.get("X-Console-Banners"));
        return r.text();
      })
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

  var events = document.body.dataset.base + "/events";
  if (document.body.dataset.job) events += "?job=" + encodeURIComponent(document.body.dataset.job);
  var source = new EventSource(events);
  source.addEventListener("hello", function () { if (dot) dot.className = "livedot on"; });
  source.addEventListener("changed", refresh);
  source.onerror = function () { if (dot) dot.className = "livedot off"; };
})();
