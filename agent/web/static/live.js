// Live updates of the station page (server-sent events); the page works without this file.
"use strict";
(function () {
  var cards = document.getElementById("cards");
  if (!cards || !window.EventSource) { return; }
  var summary = document.getElementById("summary");
  var asof = document.getElementById("asof");
  var source = new EventSource(cards.getAttribute("data-events"));
  source.addEventListener("station", function (ev) {
    var d = JSON.parse(ev.data);  // HTML fragments rendered and escaped by the server
    cards.innerHTML = d.cards;
    summary.innerHTML = d.summary;
    if (d.ts) { asof.textContent = d.ts; }
  });
  source.addEventListener("logout", function () { source.close(); location.assign("/login"); });
}());
