/* Cloud Offload dashboard: a small inline-SVG bar chart of sends over time.
 *
 * The container names its JSON endpoint in data-chart-url; the endpoint
 * answers {bucket_s, buckets: [{t, sent}], total}. No library, no CDN.
 */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function label(iso) {
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toISOString().substring(11, 19);
  }

  function unit(seconds) {
    if (seconds % 3600 === 0) { return (seconds / 3600) + " h"; }
    if (seconds % 60 === 0) { return (seconds / 60) + " min"; }
    return seconds + " s";
  }

  function draw(box, data) {
    while (box.firstChild) { box.removeChild(box.firstChild); }
    if (!data.buckets || !data.buckets.length) {
      var p = document.createElement("p");
      p.className = "text-muted small mb-0";
      p.textContent = "No sends yet.";
      box.appendChild(p);
      return;
    }
    var W = 600, H = 180, padL = 36, padB = 22, padT = 10, padR = 8;
    var max = Math.max.apply(null, data.buckets.map(function (b) { return b.sent; })) || 1;
    var n = data.buckets.length;
    var slot = (W - padL - padR) / n;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "chart-svg",
      "aria-label": data.total + " sends, per " + unit(data.bucket_s) });
    [0, 0.5, 1].forEach(function (f) {
      var y = padT + (H - padT - padB) * (1 - f);
      svg.appendChild(el("line", { x1: padL, x2: W - padR, y1: y, y2: y, "class": "chart-grid" }));
      var t = el("text", { x: padL - 4, y: y + 4, "text-anchor": "end", "class": "chart-axis" });
      t.textContent = String(Math.round(max * f));
      svg.appendChild(t);
    });
    data.buckets.forEach(function (b, i) {
      var h = (H - padT - padB) * b.sent / max;
      var w = Math.max(Math.min(slot * 0.8, 28), 1);
      var rect = el("rect", { x: padL + i * slot + (slot - w) / 2, y: H - padB - h, width: w,
        height: h, "class": "chart-bar" });
      var title = el("title");
      title.textContent = label(b.t) + " UTC: " + b.sent + " sent";
      rect.appendChild(title);
      svg.appendChild(rect);
    });
    var ticks = Math.min(n, 6);
    for (var k = 0; k < ticks; k++) {
      var i = Math.round(k * (n - 1) / Math.max(ticks - 1, 1));
      var t = el("text", { x: padL + i * slot + slot / 2, y: H - 6, "text-anchor": "middle", "class": "chart-axis" });
      t.textContent = label(data.buckets[i].t);
      svg.appendChild(t);
    }
    box.appendChild(svg);
    var caption = document.createElement("div");
    caption.className = "small text-muted";
    caption.textContent = data.total + " sent · one bar per " + unit(data.bucket_s) + " (UTC)";
    box.appendChild(caption);
  }

  var box = document.getElementById("sends-chart");
  var last = 0;
  var pending = false;

  function reload(force) {
    if (!box || pending || (!force && Date.now() - last < 4000)) { return; }
    pending = true;
    last = Date.now();
    fetch(box.getAttribute("data-chart-url"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) { draw(box, data); })
      .catch(function () { /* keep the last chart */ })
      .then(function () { pending = false; });
  }

  window.OffloadChart = { reload: reload, draw: draw };
  if (box) { reload(true); }
}());
