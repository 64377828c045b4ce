// rollgate dashboard: live updates without reloading. The page works without this
// script; it only re-fetches the server-rendered `#live` fragment (already escaped by
// the server) every two seconds and swaps it in when it changed.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var src = live.getAttribute("data-src");
  if (!src) { return; }
  var last = null;
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(src, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text !== null && text !== last) {
          if (last !== null) { live.innerHTML = text; }
          last = text;
          document.documentElement.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  tick();
  setInterval(tick, 2000);
})();
