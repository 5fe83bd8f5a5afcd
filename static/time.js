/* Cloud Offload dashboard: times in the viewer's timezone.
 *
 * A <time data-local datetime="2026-12-07T20:00:00Z" title="2026-12-07 20:00 UTC"> is written by the
 * server in UTC (what shows without this script, and on hover); here its text becomes the same moment
 * in the browser's timezone. static/jobs.js calls OffloadTime.set for times that arrive by polling.
 */
(function () {
  "use strict";

  function local(iso) {
    var when = new Date(iso);
    if (isNaN(when.getTime())) { return null; }
    return when.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
      minute: "2-digit", timeZoneName: "short" });
  }

  /* set one <time> to ``iso`` (hidden when there is none); ``utc`` is its UTC words for the title */
  function set(el, iso, utc) {
    if (!el) { return; }
    el.hidden = !iso;
    if (!iso) { return; }
    if (el.getAttribute("datetime") !== iso) { el.setAttribute("datetime", iso); }
    if (utc) { el.setAttribute("title", utc); }
    var shown = local(iso);
    if (shown !== null && el.textContent !== shown) { el.textContent = shown; }
  }

  function all() {
    document.querySelectorAll("time[data-local]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      if (iso) { set(el, iso, el.getAttribute("title")); }
    });
  }

  window.OffloadTime = { set: set, local: local };
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", all); } else { all(); }
}());
